"""Training and evaluating a CLIP on an emoji build (the committed 32 px fixture)."""

from __future__ import annotations

import pytest

from clip_helpers import one_thread
from fixture_helpers import build_emoji_fixture
from unclip.cli import main


@pytest.fixture(scope="module")
def emoji_build(tmp_path_factory):
    return build_emoji_fixture(tmp_path_factory.mktemp("emoji"))


def test_train_and_evaluate_on_emoji(emoji_build, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("UNCLIP_QUIET", "1")
    with one_thread():
        run = tmp_path / "run"
        assert (
            main(
                [
                    "-q",
                    "train",
                    "clip",
                    "--data",
                    str(emoji_build),
                    "--out",
                    str(run),
                    "--preset",
                    "clip-tiny-test",
                    "--steps",
                    "3",
                ]
            )
            == 0
        )
        assert (run / "clip" / "tokenizer.json").is_file()
        out = tmp_path / "eval"
        code = main(
            [
                "-q",
                "evaluate",
                "--clip",
                str(run / "clip"),
                "--suite",
                "emoji",
                "--data",
                str(emoji_build),
                "--out",
                str(out),
            ]
        )
        assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert {"val", "heldout_concept", "heldout_style"} <= set(res["retrieval"])
    assert all(0 <= r["t2i_R@5"] <= 1 for r in res["retrieval"].values())


def test_emoji_suite_needs_data(tmp_path, capsys):
    assert main(["evaluate", "--clip", str(tmp_path), "--suite", "emoji"]) == 2
    assert main(["evaluate", "--suite", "shapes"]) == 2
    assert "exactly one of --clip" in capsys.readouterr().err


def test_prior_suite_on_emoji(emoji_build, tmp_path, monkeypatch):
    """CLIP -> embed the train split -> a prior -> `unclip evaluate --prior ... --suite emoji`."""
    import json

    monkeypatch.setenv("UNCLIP_QUIET", "1")
    clip, emb, prior, out = (tmp_path / x for x in ("clip", "emb", "prior", "eval"))
    with one_thread():
        train = ["-q", "train", "clip", "--data", str(emoji_build), "--preset", "clip-tiny-test"]
        assert main([*train, "--steps", "2", "--out", str(clip)]) == 0
        assert (
            main(["-q", "embed", "--clip", str(clip / "clip"), "--data", str(emoji_build), "--out", str(emb)])
            == 0
        )
        args = ["-q", "train", "prior", "--kind", "diffusion", "--preset", "prior-diffusion-tiny-test"]
        assert main([*args, "--data", str(emb), "--steps", "2", "--val-size", "8", "--out", str(prior)]) == 0
        ev = ["-q", "evaluate", "--prior", str(prior), "--clip", str(clip / "clip"), "--suite", "emoji"]
        assert main([*ev, "--data", str(emoji_build), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == "prior-emoji" and len(res["main"]) == 3
    for table in res["main"].values():
        assert {"no prior (text_emb)", "nearest train image", "diffusion prior"} == set(table)
        for row in table.values():
            assert -1 <= row["cos"] <= 1 and 0 <= row["R@1"] <= row["R@5"] <= 1
    assert "| diffusion prior |" in (out / "results.md").read_text()
    # Without the emoji build the suite says what it needs.
    assert main(ev) == 2
