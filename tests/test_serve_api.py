"""`unclip serve`: the official openai client against a live uvicorn with a tiny model."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from pipeline_helpers import make_tiny_model  # noqa: E402
from serve_helpers import live_server  # noqa: E402

KEY = "test-key"
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    with live_server(tiny_model, api_key=KEY) as s:
        yield s


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def small_png(color: tuple[int, int, int] = (200, 30, 30), side: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, format="PNG")
    return buf.getvalue()


def test_generations_b64_and_seed(client: openai.OpenAI) -> None:
    r = client.images.generate(prompt="a red circle", n=2, response_format="b64_json", extra_body={"seed": 7})
    assert len(r.data) == 2 and r.created > 0
    assert [d.model_extra["seed"] for d in r.data] == [7, 8]
    im = png_of(r.data[0].b64_json)
    assert im.size == (64, 64) and im.format == "PNG"
    record = json.loads(im.text["unclip"])
    assert record["command"] == "generate" and record["job"]["prompt"] == "a red circle"
    again = client.images.generate(
        prompt="a red circle", n=1, response_format="b64_json", extra_body={"seed": 8}
    )
    # image k of a call = seed + k alone (same pixels; the PNG's record differs)
    assert png_of(again.data[0].b64_json).tobytes() == png_of(r.data[1].b64_json).tobytes()


def test_generations_url_and_size(client: openai.OpenAI, server) -> None:
    r = client.images.generate(prompt="a blue square", size="16x16", model="tiny")
    url = r.data[0].url
    assert url.startswith(server.url + "/v1/files/") and r.data[0].b64_json is None
    got = httpx.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(got.content)).size == (16, 16)
    assert httpx.get(server.url + "/v1/files/" + "A" * 22 + ".png").status_code == 404


def test_variations_and_edits(client: openai.OpenAI) -> None:
    png = small_png()
    v = client.images.create_variation(image=("in.png", png, "image/png"), n=2, response_format="b64_json")
    assert len(v.data) == 2 and png_of(v.data[0].b64_json).size == (64, 64)
    e = client.images.edit(image=("in.png", png, "image/png"), prompt="a green triangle", n=2)
    assert len(e.data) == 2 and all(d.url for d in e.data)
    e1 = client.images.edit(
        image=("in.png", png, "image/png"),
        prompt="a green triangle",
        response_format="b64_json",
        size="16x16",
    )
    assert png_of(e1.data[0].b64_json).size == (16, 16)


def test_models_and_health(client: openai.OpenAI, server) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["sizes"] == ["16x16", "64x64"] and h["auth"] is True


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": "a red circle", "size": "1024x1024"}, "size"),
        ({"prompt": "a red circle", "n": 11}, "n"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "red " * 200}, "prompt"),  # under 1000 characters, over the CLIP's token limit
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "a red circle", "response_format": "png"}, "response_format"),
        ({"prompt": "a red circle", "extra_body": {"seed": -1}}, "seed"),
        ({"prompt": "a red circle", "extra_body": {"decoder_steps": 0}}, "decoder_steps"),
    ],
)
def test_generation_errors(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(**kwargs)
    err = exc.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert "Traceback" not in json.dumps(err)


def test_size_error_lists_valid_sizes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="16x16, 64x64"):
        client.images.generate(prompt="a red circle", size="256x256")


def test_auth_and_model_errors(server, client: openai.OpenAI) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.images.generate(prompt="a red circle")
    assert exc.value.body["code"] == "invalid_api_key"
    assert httpx.post(server.url + "/v1/images/generations", json={"prompt": "a"}).status_code == 401
    with pytest.raises(openai.NotFoundError):
        client.images.generate(prompt="a red circle", model="dall-e-3")


def test_upload_errors(client: openai.OpenAI) -> None:
    png = small_png()
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.edit(image=("in.png", png, "image/png"), prompt="a", mask=("m.png", png, "image/png"))
    assert exc.value.body["param"] == "mask" and "not supported" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.create_variation(image=("in.png", b"not an image at all", "image/png"))
    assert exc.value.body["code"] == "invalid_image"
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.create_variation(image=("in.png", b"\x89PNG" + bytes(5 * 1024 * 1024), "image/png"))
    assert exc.value.body["code"] == "image_too_large"
    bomb = io.BytesIO()
    Image.new("1", (6000, 6000)).save(bomb, format="PNG")  # 36 Mpx in a few KB
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(openai.BadRequestError, match="pixels"):
        client.images.create_variation(image=("bomb.png", bomb.getvalue(), "image/png"))
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.images.create_variation(image=("x.tiff", tiff.getvalue(), "image/tiff"))


def test_http_errors_have_openai_shape(server) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    cases = [
        httpx.get(server.url + "/v1/nowhere", headers=h),
        httpx.get(server.url + "/v1/images/generations", headers=h),
        httpx.post(server.url + "/v1/images/generations", content=b"{not json", headers=h),
        httpx.post(server.url + "/v1/images/generations", json=["a"], headers=h),
        httpx.post(server.url + "/v1/images/generations", content=b"x" * (13 * 1024 * 1024), headers=h),
        httpx.get(server.url + "/static/..%2F..%2Fpyproject.toml"),
    ]
    assert [r.status_code for r in cases] == [404, 405, 400, 400, 413, 404]
    for r in cases:
        body = r.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in r.text


def test_native_endpoints_and_download(server, client: openai.OpenAI, tmp_path: Path) -> None:
    h = {"Authorization": f"Bearer {KEY}"}
    g = client.images.generate(prompt="a red circle", n=1, extra_body={"seed": 5})
    first = g.data[0].url.rsplit("/", 1)[1].removesuffix(".png")
    post = lambda path, body: httpx.post(f"{server.url}/v1/unclip/{path}", json=body, headers=h, timeout=60)  # noqa: E731
    r = post(
        "interpolate", {"a": {"image_id": first}, "b": {"prompt": "a blue square"}, "frames": 3, "seed": 1}
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 3
    r = post("mix", {"items": [{"prompt": "a red circle", "weight": 1}, {"image_id": first, "weight": 0.5}]})
    assert r.status_code == 200 and len(r.json()["data"]) == 1
    r = post(
        "edit", {"image": {"image_id": first}, "to": "a blue circle", "from": "a red circle", "frames": 2}
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    b64 = base64.b64encode(small_png()).decode()
    r = post("variations", {"image": {"b64_json": b64}, "n": 2, "eta": 0.5, "response_format": "b64_json"})
    assert r.status_code == 200 and "b64_json" in r.json()["data"][0]
    assert post("interpolate", {"a": {"prompt": "/etc/passwd"}, "b": {"prompt": "a cat"}}).status_code == 400
    assert post("variations", {"image": {"image_id": "x" * 22}}).status_code == 404
    # the download zip holds the PNGs and a command-line manifest that regenerates them
    z = zipfile.ZipFile(io.BytesIO(httpx.get(f"{server.url}/v1/unclip/download?ids={first}").content))
    manifest = json.loads(z.read("manifest.json"))
    assert manifest["format"] == "unclip-manifest" and manifest["images"][0]["job"]["seed"] == 5
    (tmp_path / "dl").mkdir()
    z.extractall(tmp_path / "dl")
    from unclip.cli import main

    assert (
        main(
            [
                "-q",
                "generate",
                "--from-manifest",
                str(tmp_path / "dl/manifest.json"),
                "--out",
                str(tmp_path / "re"),
            ]
        )
        == 0
    )
    assert (tmp_path / "re/generate-0000.png").read_bytes() == z.read(manifest["images"][0]["file"])


def test_background_job_progress(server) -> None:
    import time

    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        f"{server.url}/v1/unclip/jobs",
        json={"kind": "generate", "params": {"prompt": "a red circle", "n": 2}},
        headers=h,
    )
    assert r.status_code == 202
    job_id = r.json()["id"]
    for _ in range(300):
        s = httpx.get(f"{server.url}/v1/unclip/jobs/{job_id}", headers=h).json()
        if s["status"] in ("done", "error"):
            break
        time.sleep(0.05)
    assert s["status"] == "done" and len(s["data"]) == 2
    assert s["progress"]["stage"].startswith("upsampler") and s["progress"]["step"] == s["progress"]["total"]
    bad = httpx.post(f"{server.url}/v1/unclip/jobs", json={"kind": "generate", "params": {"n": 2}}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


def test_openapi_schema(server) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/images/generations" in schema["paths"] and "/v1/unclip/interpolate" in schema["paths"]
    assert httpx.get(server.url + "/docs").status_code == 404  # no CDN-backed pages


def test_cli_serve_refuses_cleanly(capsys: pytest.CaptureFixture[str], tiny_model: Path) -> None:
    from unclip.cli import main

    assert main(["serve", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model directory or bundle named 'no-such-model'" in err
    assert main(["serve", "--model", str(tiny_model), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without --api-key" in err and "--insecure" in err
    assert main(["serve", "--model", str(tiny_model), "--queue-size", "0"]) == 2
    assert "--queue-size must be >= 1" in capsys.readouterr().err
