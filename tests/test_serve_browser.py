"""The browser app in a real Chromium (Debian's package, driven by playwright; never downloaded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from pipeline_helpers import make_tiny_model  # noqa: E402
from serve_helpers import live_server  # noqa: E402

pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    """Debian's chromium (or $UNCLIP_CHROMIUM), never a downloaded build."""
    for candidate in (os.environ.get("UNCLIP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def app_page(tmp_path_factory: pytest.TempPathFactory):
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    model = make_tiny_model(tmp_path_factory.mktemp("servebrowser") / "tiny")
    with live_server(model, api_key="browser-key") as server, sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        except Exception as e:  # a chromium that cannot start here: skip, do not fail
            pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        # the page must work offline: refuse every request that does not go to the server
        context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith(server.url) else route.abort(),
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url + "/")
        page.fill("#apikey", "browser-key")
        page.dispatch_event("#apikey", "change")
        yield page
        browser.close()


def test_generate_vary_interpolate_edit(app_page, tmp_path: Path) -> None:
    page = app_page
    page.fill("#prompt", "a big red circle")
    page.fill("#n", "2")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#gallery .card img').length === 2")
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#error").is_hidden()

    page.locator("#gallery .card img").first.click()  # variations of the newest image
    page.wait_for_function("document.querySelectorAll('#gallery .card img').length === 6")

    cards = page.locator("#gallery .card")
    cards.nth(0).locator("button", has_text="A").click()
    page.fill("#interp-b", "a small blue square")
    page.fill("#frames", "4")
    page.click("#interpolate")
    page.wait_for_selector("#interp-view:not([hidden])")
    first = page.get_attribute("#interp-frame", "src")
    page.locator("#interp-slider").fill("3")
    assert page.get_attribute("#interp-frame", "data-frame") == "3"
    assert page.get_attribute("#interp-frame", "src") != first
    assert page.text_content("#interp-label") == "frame 4 of 4"

    cards.nth(1).locator("input[type=checkbox]").check()
    page.fill("#edit-to", "a blue circle")
    page.click("#edit")
    page.wait_for_function("document.querySelectorAll('#gallery .card img').length === 10")

    with page.expect_download() as dl:
        page.click("#download")
    path = tmp_path / "images.zip"
    dl.value.save_as(path)
    import zipfile

    names = zipfile.ZipFile(path).namelist()
    assert "manifest.json" in names and any(n.endswith(".png") for n in names)
    if os.environ.get("UNCLIP_SCREENSHOT"):
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["UNCLIP_SCREENSHOT"], full_page=False)


def test_errors_are_shown(app_page) -> None:
    page = app_page
    page.fill("#edit-to", "")
    page.click("#edit")
    assert "say what to edit toward" in page.text_content("#error")
    page.fill("#interp-a", "")
    page.click("#interpolate")
    assert "end A is empty" in page.text_content("#error")
