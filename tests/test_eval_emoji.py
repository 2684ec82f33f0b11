"""The whole-model emoji suite on a tiny model and the committed emoji fixture."""

from __future__ import annotations

import json

import pytest
import torch

from clip_helpers import one_thread, tiny_clip
from fixture_helpers import build_emoji_fixture
from pipeline_helpers import make_tiny_model
from unclip.cli import main
from unclip.eval.emoji_suite import fidelity


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-suite")
    build_emoji_fixture(root / "build")
    make_tiny_model(root / "model", with_ar=False)
    tiny_clip(seed=7).save(root / "judge")
    return root


def test_fidelity_on_known_embeddings():
    caps = ["a", "b", "c"]
    bank = dict(zip(caps, torch.eye(3)))
    exact = fidelity(torch.eye(3), caps, bank)
    assert exact == {"clip_score": pytest.approx(100.0), "r_precision": 1.0, "num_captions": 3}
    swapped = fidelity(torch.eye(3)[[1, 0, 2]], caps, bank)
    assert swapped["r_precision"] == pytest.approx(1 / 3) and swapped["clip_score"] == pytest.approx(100 / 3)


def test_quick_suite_writes_report(setup, tmp_path):
    out = tmp_path / "ev"
    args = [
        "-q",
        "evaluate",
        "--model",
        str(setup / "model"),
        "--suite",
        "emoji",
        "--data",
        str(setup / "build"),
    ]
    with one_thread():
        assert (
            main([*args, "--eval-clip", str(setup / "judge"), "--quick", "--n", "4", "--out", str(out)]) == 0
        )
    res = json.loads((out / "results.json").read_text())
    assert set(res["splits"]) == {"val", "heldout_concept", "heldout_style"}
    for row in res["splits"].values():
        assert row["n"] <= 4 and 0 <= row["generated"]["r_precision"] <= 1 and row["fd"] >= 0
        assert -100 <= row["real"]["clip_score"] <= 100
    for name in res["files"]:
        assert (out / name).is_file()
    assert "grid_val.png" in res["files"] and "| val |" in (out / "report.md").read_text()


def test_refuses_the_models_own_clip_and_missing_inputs(setup, tmp_path, capsys):
    base = ["evaluate", "--model", str(setup / "model"), "--suite", "emoji", "--out", str(tmp_path / "x")]
    data = ["--data", str(setup / "build")]
    with one_thread():
        assert main([*base, *data, "--eval-clip", str(setup / "model" / "clip")]) == 2
        assert "model's own CLIP" in capsys.readouterr().err
        assert main([*base, *data]) == 2
        assert "--eval-clip" in capsys.readouterr().err
        assert main([*base, "--eval-clip", str(setup / "judge")]) == 2
        assert "--data" in capsys.readouterr().err
