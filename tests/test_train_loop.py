from __future__ import annotations

import csv
import os
import signal

import pytest
import torch

from clip_helpers import tiny_clip
from unclip.train.clip import clip_loss
from unclip.train.config import TrainConfig
from unclip.train.data import MapBatches, SyntheticCaptions, open_data
from unclip.train.loop import Trainer
from unclip.train.optim import WarmupCosine, param_groups
from unclip.train.state import capture_rng, load_train_state, restore_rng

CFG = TrainConfig(steps=8, batch_size=16, lr=3e-3, warmup=2, save_every=2, log_every=1, ema_decay=0.9, seed=3)


def make_trainer(run_dir, config=CFG, loss_fn=clip_loss, sample_fn=None):
    model = tiny_clip(seed=1)
    data = MapBatches(SyntheticCaptions(40, 16), config.micro_batch_size, seed=config.seed)
    return Trainer(
        model, loss_fn, data, config, run_dir, sample_fn=sample_fn, export_fn=lambda m, d: m.save(d / "clip")
    )


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log_rows(run_dir):
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    t = make_trainer(run)
    res = t.run()
    assert res.step == 8 and not res.interrupted
    return weights(t), log_rows(run), t


def test_loss_goes_down(tmp_path):
    cfg = TrainConfig(
        steps=40, batch_size=32, lr=3e-3, warmup=4, save_every=100, log_every=5, weight_decay=0.0
    )
    make_trainer(tmp_path, cfg).run()
    rows = log_rows(tmp_path)
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < first - 0.5, (first, last)


def test_stop_and_resume_is_identical(tmp_path, reference):
    ref_weights, ref_rows, ref_trainer = reference

    def stop_at_3(model, step, run_dir):
        if step == 3:
            t.request_stop()

    cfg = CFG.replace(sample_every=1)
    t = make_trainer(tmp_path, cfg, sample_fn=stop_at_3)
    res = t.run()
    assert res.interrupted and res.step == 3
    assert load_train_state(tmp_path / "state.pt")["step"] == 3
    t2 = make_trainer(tmp_path, cfg)
    res2 = t2.run(resume=True)
    assert res2.step == 8 and not res2.interrupted
    assert_same(weights(t2), ref_weights)
    assert_same(t2.ema.shadow, ref_trainer.ema.shadow)
    rows = log_rows(tmp_path)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_stop_at_then_resume_is_identical(tmp_path, reference):
    """--stop-at keeps the schedule of the whole run, so stopping there and resuming changes nothing."""
    ref_weights, ref_rows, _ = reference
    res = make_trainer(tmp_path).run(stop_at=5)
    assert res.interrupted and res.step == 5
    assert load_train_state(tmp_path / "state.pt")["step"] == 5
    t2 = make_trainer(tmp_path)
    assert t2.run(resume=True, stop_at=20).step == 8  # past the end: just finishes
    assert_same(weights(t2), ref_weights)
    assert [r["lr"] for r in log_rows(tmp_path)] == [r["lr"] for r in ref_rows]


def test_crash_between_checkpoints_resumes_from_last(tmp_path, reference):
    ref_weights, ref_rows, _ = reference
    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # during step 6: steps 5 is lost, the checkpoint at step 4 remains
            raise RuntimeError("simulated kill")
        return clip_loss(model, batch)

    with pytest.raises(RuntimeError, match="simulated kill"):
        make_trainer(tmp_path, loss_fn=crashing_loss).run()
    assert load_train_state(tmp_path / "state.pt")["step"] == 4
    t = make_trainer(tmp_path)
    t.run(resume=True)
    assert_same(weights(t), ref_weights)
    rows = log_rows(tmp_path)
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]  # the lost step's row was dropped


def test_sigterm_saves_and_stops(tmp_path):
    calls = {"n": 0}

    def loss_with_signal(model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return clip_loss(model, batch)

    previous = signal.getsignal(signal.SIGTERM)
    res = make_trainer(tmp_path, loss_fn=loss_with_signal).run()
    assert res.interrupted and res.step == 2
    assert load_train_state(tmp_path / "state.pt")["step"] == 2
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_grad_accum_fp32_and_no_ema(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=16, grad_accum=2, precision="fp32", grad_clip=0.0, save_every=5)
    res = make_trainer(tmp_path, cfg).run()
    assert res.step == 3 and (tmp_path / "state.pt").is_file()


def test_rng_round_trip():
    import random

    import numpy as np

    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_param_groups_and_schedule():
    m = tiny_clip()
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all("ln_" not in n and "bias" not in n for n in decayed)
    assert {"text.token_emb.weight", "visual.pos_emb", "text.pos_emb"}.isdisjoint(decayed)
    assert {"visual.patch_embed.weight", "visual.proj.weight"} <= decayed
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]}
    s = WarmupCosine(1.0, 10, 110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)


def test_map_batches_resume_and_epochs():
    ds = SyntheticCaptions(10, 8)
    a = MapBatches(ds, 4, seed=1)
    seq = [next(a)["caption"] for _ in range(6)]  # crosses epoch boundaries
    b = MapBatches(ds, 4, seed=1)
    for _ in range(3):
        next(b)
    c = MapBatches(ds, 4, seed=1)
    c.load_state_dict(b.state_dict())
    assert [next(c)["caption"] for _ in range(3)] == seq[3:]
    batch = next(open_data("synthetic:8", 16, 4))
    assert batch["image"].shape == (4, 3, 16, 16) and len(batch["caption"]) == 4


def test_init_from_starts_from_exported_weights(tmp_path):
    """--init-from: a fresh run starts from a component's weights (and a fresh EMA of them)."""
    src = make_trainer(tmp_path / "src", CFG.replace(steps=40, save_every=100))
    src.run()
    src_rows = log_rows(tmp_path / "src")
    export = tmp_path / "src" / "clip"
    t = make_trainer(tmp_path / "ft", CFG.replace(steps=1))
    t.init_from = export
    t.run()
    first = float(log_rows(tmp_path / "ft")[0]["loss"])
    assert first < float(src_rows[0]["loss"]) - 0.5  # the trained start, not the random init
    t2 = make_trainer(tmp_path / "ft2")
    t2.load_init_weights(export)
    with src.ema.applied(src.model):
        exported = {k: v.clone() for k, v in src.model.state_dict().items()}
    assert_same(weights(t2), exported)
    assert_same(t2.ema.shadow, {k: v.float() for k, v in exported.items() if k in t2.ema.shadow})


def test_init_from_refuses_a_different_model(tmp_path, reference):
    import json

    from safetensors.torch import save_file

    from unclip.checkpoint import FORMAT_VERSION, CheckpointError

    other = tmp_path / "other"
    other.mkdir()
    (other / "component.json").write_text(
        json.dumps({"kind": "clip", "config": {}, "format_version": FORMAT_VERSION})
    )
    save_file({"some.other.weight": torch.zeros(3)}, str(other / "model.safetensors"))
    t = make_trainer(tmp_path / "run")
    with pytest.raises(CheckpointError, match="do not fit this model"):
        t.load_init_weights(other)
    with pytest.raises(CheckpointError, match="not a component directory"):
        t.load_init_weights(tmp_path)


class _Clock:
    """A fake ``time`` module for the loop: every reading advances the clock by ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def process_time(self) -> float:
        return self.now


def test_time_budget_shrinks_the_schedule_to_fit(tmp_path, monkeypatch):
    import unclip.train.loop as loop_mod

    monkeypatch.setattr(loop_mod, "time", _Clock(0.01))
    cfg = TrainConfig(
        steps=5000, batch_size=8, lr=1e-3, warmup=5, min_lr_ratio=0.1, save_every=1000, log_every=1,
        time_budget=6.0, seed=1,
    )  # fmt: skip
    t = make_trainer(tmp_path, cfg)
    res = t.run()
    # It ended on its own, at the budget, with the cosine schedule finished there.
    assert not res.interrupted and res.step < 5000
    assert t.total_steps == res.step == t.schedule.total
    assert 0.9 * 6.0 <= t.wall_seconds <= 6.0 + 0.5
    lrs = [float(r["lr"]) for r in log_rows(tmp_path)]
    assert lrs[-1] < 0.15e-3 and max(lrs) > 0.9e-3
    state = load_train_state(tmp_path / "state.pt")
    assert state["budget_steps"] == res.step and state["wall_seconds"] == pytest.approx(t.wall_seconds)


def test_time_budget_is_kept_across_a_resume(tmp_path, monkeypatch):
    import unclip.train.loop as loop_mod

    monkeypatch.setattr(loop_mod, "time", _Clock(0.01))
    cfg = TrainConfig(
        steps=5000, batch_size=8, lr=1e-3, warmup=5, save_every=1000, log_every=10, time_budget=6.0, seed=1
    )
    first = make_trainer(tmp_path, cfg)
    res = first.run(stop_at=100)
    assert res.interrupted and res.step == 100 and first.total_steps < 5000
    second = make_trainer(tmp_path, cfg)
    res2 = second.run()
    # The resumed run starts from the saved schedule end and clock, and stops within the budget.
    assert second.schedule.total == res2.step and not res2.interrupted
    assert res2.step <= first.total_steps + 50
    assert second.wall_seconds <= 6.0 + 0.5


def test_time_budget_must_be_non_negative():
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=-1.0)


def test_compile_compiles_the_model_in_place_and_keeps_its_weights(tmp_path, monkeypatch, reference):
    """compile=True calls Module.compile() once on the trained model; state-dict keys are unchanged."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    t = make_trainer(tmp_path, CFG.replace(compile=True))
    assert compiled == [t.model]
    t.run()
    assert_same(weights(t), reference[0])  # the (stubbed) compile changed nothing else
