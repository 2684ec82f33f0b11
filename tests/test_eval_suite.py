"""The whole-model shapes suite end to end on a tiny random model, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_helpers import make_tiny_model
from unclip.cli import main
from unclip.eval.report import PLOTS

SECTIONS = ("main", "guidance", "manipulations", "steps")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("evalsuite")
    model = make_tiny_model(root / "model")
    out = root / "report"
    rc = main(
        [
            "--quiet",
            "evaluate",
            "--model",
            str(model),
            "--suite",
            "shapes",
            "--quick",
            "--n",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_report_has_every_promised_file(quick_report: tuple[Path, dict]) -> None:
    out, res = quick_report
    for name in res["files"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in (
        *PLOTS,
        "report.md",
        "results.json",
        "grid_single.png",
        "grid_two.png",
        "grid_heldout.png",
        "grid_diversity.png",
        "grid_manipulations.png",
    ):
        assert name in res["files"], name
    md = (out / "report.md").read_text()
    for heading in (
        "## Fidelity",
        "## Diversity and realism",
        "## Guidance sweep",
        "## Manipulations",
        "## Steps vs quality",
    ):
        assert heading in md
    assert "caption-only" in md  # the GLIDE-like baseline says what it is


def test_quick_results_keys(quick_report: tuple[Path, dict]) -> None:
    _, res = quick_report
    assert res["seed"] == 1 and res["settings"]["mode"] == "quick"
    for k in (
        *SECTIONS,
        "systems",
        "prompt_counts",
        "timing",
        "eval_cnn",
        "resolution",
        "claims",
        "settings",
    ):
        assert k in res, k
    assert res["systems"] == [
        "unCLIP (diffusion prior)",
        "unCLIP (AR prior)",
        "no prior: text_emb as image_emb",
        "GLIDE-like (same decoder, caption only)",
    ]
    for sy in res["systems"]:
        row = res["main"][sy]
        assert {"single", "two", "heldout", "diversity", "fd", "fd_n"} <= set(row)
        assert row["single"]["n"] == 2 and row["two"]["n"] == 1 and row["heldout"]["n"] == 7
        assert 0.0 <= row["single"]["attr_acc"] <= 1.0
    assert set(res["guidance"]["decoder"]) == {
        "unCLIP (diffusion prior)",
        "GLIDE-like (same decoder, caption only)",
    }
    assert [p["decoder_scale"] for p in res["guidance"]["decoder"]["unCLIP (diffusion prior)"]] == [
        1.0,
        3.0,
        6.0,
    ]
    assert {x["sampler"] for x in res["steps"]} == {"ddim", "dpmpp_2m", "ddpm"}
    assert [v["eta"] for v in res["manipulations"]["variations"]] == [0.0, 1.0]
    assert {c["verdict"] for c in res["claims"]} <= {
        "holds",
        "does not hold",
        "within noise",
        "not measured",
        "unCLIP higher",
        "GLIDE-like higher (as in the paper)",
        "no significant difference (as in the paper)",
    }
    assert len(res["claims"]) == 6
    # The real-renders row is the ceiling: the oracle reads real scenes of the same prompts.
    assert "real renders (oracle ceiling)" in res["main"]


def test_quick_run_is_deterministic(quick_report: tuple[Path, dict], tmp_path: Path) -> None:
    """The same seed gives the same numbers (main section, rerun through the Python API)."""
    from unclip.eval.report import jsonable
    from unclip.eval.shapes_suite import evaluate_model

    _, res = quick_report
    again, _ = evaluate_model(res["model"], quick=True, seed=1, n=2, sections=("main",))
    again = jsonable(again)
    sy = "unCLIP (diffusion prior)"
    assert again["main"][sy]["single"] == res["main"][sy]["single"]
    assert again["main"][sy]["fd"] == pytest.approx(res["main"][sy]["fd"])


def test_emoji_model_suite_says_what_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--model", str(tmp_path), "--suite", "emoji", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "needs --data" in capsys.readouterr().err


def test_model_suite_needs_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--model", str(tmp_path), "--suite", "shapes"])
    assert rc == 2
    assert "--out" in capsys.readouterr().err


def test_suite_samples_with_the_models_own_decoder_sampler(tmp_path: Path) -> None:
    """The suite measures what `unclip generate` makes: the model's decoder_sampler, not always DDIM."""
    import dataclasses

    import torch

    from unclip.eval.shapes_suite import Generator, Settings
    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(
        make_tiny_model(tmp_path / "m", with_ar=False, with_upsampler=False)
    )
    pipe.defaults = dataclasses.replace(pipe.defaults, decoder_sampler="dpmpp_2m")
    gen = Generator(pipe, Settings(mode="quick", seed=0))
    assert gen.sampler == "dpmpp_2m"
    prompts = ["a red circle", "a blue star"]
    system = gen.systems()[0]
    default = gen.generate(system, "single", prompts)
    assert torch.equal(default, gen.generate(system, "single", prompts, sampler="dpmpp_2m"))
    assert not torch.equal(default, gen.generate(system, "single", prompts, sampler="ddim"))
