"""`unclip train prior` on a tiny embedding-shard fixture: checkpoints, resume, validation, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from fixture_helpers import write_embedding_shards
from unclip.checkpoint import load_component
from unclip.cli import main
from unclip.train.config import TrainConfig
from unclip.train.prior import train_prior

D, W, L = 16, 12, 6


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    """96 caption/image pairs whose image embedding depends on the caption."""
    return write_embedding_shards(tmp_path_factory.mktemp("emb"), d=D, w=W, length=L)


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_cli_train_prior_writes_checkpoint(emb_dir, tmp_path, kind, capsys):
    out = tmp_path / "run"
    args = ["-q", "train", "prior", "--kind", kind, "--data", str(emb_dir), "--out", str(out)]
    args += ["--preset", f"prior-{kind}-tiny-test", "--steps", "4", "--sample-every", "2", "--val-size", "16"]
    assert main(args) == 0
    _, cfg, header = load_component(out / "prior")
    assert header["kind"] == f"{kind}_prior"
    assert (cfg.embed_dim, cfg.text_width, cfg.max_text_len) == (D, W, L)  # taken from the data
    run = json.loads((out / "run.json").read_text())
    assert run["num_val"] == 16 and run["kind"] == kind
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert len(rows) == 2 and -1.0 <= float(rows[-1]["val_cos"]) <= 1.0
    assert float(rows[-1]["val_loss"]) > 0
    log = list(csv.DictReader((out / "log.csv").open()))
    assert "drop_frac" in log[0]
    if kind == "ar":
        assert 1 <= cfg.num_components <= D
        assert header["extra"]["data_stats"]["retained_variance"] >= 0.99


def _weights(path):
    prior, _, _ = load_component(path)
    return prior.state_dict()


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_resume_matches_uninterrupted(emb_dir, tmp_path, kind):
    from unclip.presets import get_preset

    preset = get_preset(f"prior-{kind}-tiny-test")
    cfg = TrainConfig.from_dict(preset["train"] | {"steps": 6, "save_every": 3, "ema_decay": 0.9})
    train_prior(kind, preset["model"], cfg, str(emb_dir), tmp_path / "a", val_size=16)
    half = cfg.replace(steps=3)
    train_prior(kind, preset["model"], half, str(emb_dir), tmp_path / "b", val_size=16)
    train_prior(kind, preset["model"], cfg, str(emb_dir), tmp_path / "b", val_size=16, resume=True)
    a, b = _weights(tmp_path / "a" / "prior"), _weights(tmp_path / "b" / "prior")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_inputs_exit_2(emb_dir, tmp_path, capsys):
    base = ["train", "prior", "--preset", "prior-diffusion-tiny-test", "--steps", "2"]
    assert main([*base, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    # A preset of the other prior kind.
    args = ["train", "prior", "--kind", "ar", "--preset", "prior-diffusion-tiny-test"]
    assert main([*args, "--data", str(emb_dir), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--kind", "gan", "--data", str(emb_dir), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    # An existing run without --resume.
    out = tmp_path / "run"
    assert main(["-q", *base, "--data", str(emb_dir), "--out", str(out), "--val-size", "16"]) == 0
    assert main([*base, "--data", str(emb_dir), "--out", str(out), "--val-size", "16"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--data", str(emb_dir), "--out", str(out), "--pca-variance", "1.5"]) == 2


def test_evaluate_prior_suite_end_to_end(tmp_path, capsys):
    """`unclip evaluate --prior ... --clip ...` on an untrained tiny CLIP: the plumbing, not quality."""
    from unclip.clip import ClipConfig, ClipModel
    from unclip.clip.tokenizer import train_bpe
    from unclip.data.shapes.stream import make_sample
    from unclip.models.ar_prior import ARPrior, ARPriorConfig
    from unclip.models.prior import DiffusionPrior, DiffusionPriorConfig
    from unclip.presets import get_preset

    torch.manual_seed(0)
    cfg = ClipConfig.from_dict(get_preset("clip-tiny-test")["model"])
    captions = [make_sample(0, i)[1] for i in range(64)]
    clip = ClipModel(cfg, train_bpe(captions, cfg.text.vocab_size, cfg.text.context_length))
    clip.save(tmp_path / "clip")
    d, w, length = cfg.embed_dim, clip.token_width, clip.max_text_len
    g = torch.Generator().manual_seed(0)
    img, txt = (
        F.normalize(torch.randn(64, d, generator=g), dim=-1),
        F.normalize(torch.randn(64, d, generator=g), dim=-1),
    )
    small = dict(embed_dim=d, text_width=w, max_text_len=length, width=32, layers=1, heads=2)
    diff = DiffusionPrior(DiffusionPriorConfig(**small))
    diff.scaler.fit(img)
    ar = ARPrior(ARPriorConfig(**small, num_components=4, num_buckets=16, num_dot_buckets=4))
    ar.fit_statistics(img, txt)
    from unclip.checkpoint import save_component

    save_component(diff, diff.config, "diffusion_prior", tmp_path / "diff")
    save_component(ar, ar.config, "ar_prior", tmp_path / "ar")
    args = ["-q", "evaluate", "--prior", str(tmp_path / "diff"), "--prior", str(tmp_path / "ar")]
    args += ["--clip", str(tmp_path / "clip"), "--suite", "shapes", "--n", "6", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    for split in ("val", "heldout"):
        rows = res["main"][split]
        assert {"no prior (text_emb)", "diffusion prior", "AR prior", "true image_emb (ceiling)"} <= set(rows)
        assert rows["true image_emb (ceiling)"]["R@1"] == 1.0
        assert 0.0 <= rows["diffusion prior"]["all_correct"] <= 1.0
    assert set(res["sweeps"]) == {"diffusion prior", "AR prior"} and res["speed"]["AR prior"]["per_s"] > 0
    assert "| diffusion prior |" in (tmp_path / "ev" / "results.md").read_text()
    assert main(["evaluate", "--prior", str(tmp_path / "diff"), "--suite", "shapes"]) == 2  # no --clip


def test_cli_time_budget_ends_the_run_early_and_finished(emb_dir, tmp_path):
    """`--time-budget` reaches TrainConfig, stops far before --steps and counts as a finished run."""
    out = tmp_path / "run"
    args = ["-q", "train", "prior", "--kind", "diffusion", "--data", str(emb_dir), "--out", str(out)]
    args += ["--preset", "prior-diffusion-tiny-test", "--steps", "1000000", "--time-budget", "1.5"]
    args += ["--sample-every", "0", "--val-size", "16", "--log-every", "1"]
    assert main(args) == 0  # not 130: the budget is the run's end, not an interruption
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["time_budget"] == 1.5
    steps = [int(r["step"]) for r in csv.DictReader((out / "log.csv").open())]
    assert 5 <= steps[-1] < 1_000_000
    assert (out / "prior" / "component.json").is_file()
