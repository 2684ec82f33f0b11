"""Scale-out (issue #12): 2 processes (gloo, CPU) against 1, under torchrun and accelerate launch.

The contract (docs/scale-out.md): ``batch_size`` is the global batch, rank r of W reads global
micro-batches r, r + W, ... and micro-batch k draws its randomness from (seed, k). So 2 processes
with micro-batch B must give the same weights as 1 process with batch 2B in 2 micro-batches of B.
Measured: identical bit for bit in fp32 on this CPU; the tests allow 1e-6.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from clip_helpers import tiny_clip
from fixture_helpers import write_embedding_shards
from unclip.cli import main
from unclip.train.data import MapBatches, ShapesBatches, SyntheticCaptions
from unclip.train.distributed import micro_batch_seed
from unclip.train.prior import EmbeddingBatches

TOL = 1e-6
PRIOR = ["train", "prior", "--kind", "diffusion", "--preset", "prior-diffusion-tiny-test", "--val-size", "16"]
PRIOR += [
    "--steps",
    "6",
    "--precision",
    "fp32",
    "--ema-decay",
    "0.9",
    "--sample-every",
    "3",
    "--save-every",
    "3",
]


def launch(args, launcher="torchrun", check=True):
    """Run `unclip -q ARGS` in 2 processes; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    else:  # accelerate's multi-process launcher; on a machine without GPUs unclip uses gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        cmd += [
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
        ]
    proc = subprocess.run(
        [*cmd, "-m", "unclip", "-q", *args], env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def state(run):
    return torch.load(run / "state.pt", map_location="cpu", weights_only=True)


def assert_close_states(a, b):
    assert a["step"] == b["step"]
    for key in a["model"]:
        x, y = a["model"][key], b["model"][key]
        if x.is_floating_point():
            assert (x - y).abs().max().item() <= TOL, key
        else:
            assert torch.equal(x, y), key
    for key in a["ema"]["shadow"]:
        assert (a["ema"]["shadow"][key] - b["ema"]["shadow"][key]).abs().max().item() <= TOL, key


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    return write_embedding_shards(tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def prior_reference(emb_dir, tmp_path_factory):
    """One process, batch 16 in 2 micro-batches of 8."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert (
        main(
            [
                "-q",
                *PRIOR,
                "--data",
                str(emb_dir),
                "--batch-size",
                "16",
                "--grad-accum",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return state(out)


def test_prior_two_processes_equal_one(emb_dir, tmp_path, prior_reference):
    out = tmp_path / "ddp"
    launch([*PRIOR, "--data", str(emb_dir), "--batch-size", "16", "--out", str(out)])
    got = state(out)
    assert got["world_size"] == 2 and len(got["ranks"]) == 2
    # Both ranks' data positions are the global one: 6 steps x 16 samples.
    assert got["ranks"][0]["data"] == got["ranks"][1]["data"] == prior_reference["ranks"][0]["data"]
    assert_close_states(got, prior_reference)
    assert (out / "prior" / "model.safetensors").is_file() and (out / "eval.csv").is_file()


def test_decoder_two_processes_equal_one(tmp_path):
    clip = tmp_path / "clip"
    tiny_clip().save(clip)
    args = ["train", "decoder", "--data", "shapes", "--clip", str(clip), "--preset", "decoder-tiny-test"]
    args += [
        "--steps",
        "4",
        "--precision",
        "fp32",
        "--ema-decay",
        "0.9",
        "--sample-every",
        "0",
        "--batch-size",
        "8",
    ]
    launch([*args, "--out", str(tmp_path / "ddp")])
    assert main(["-q", *args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    assert_close_states(state(tmp_path / "ddp"), state(tmp_path / "one"))


CLIP_ARGS = ["train", "clip", "--data", "shapes", "--preset", "clip-tiny-test", "--batch-size", "16"]
UP_ARGS = ["train", "upsampler", "--data", "synthetic:16", "--preset", "upsampler-tiny-test"]
UP_ARGS += ["--batch-size", "16", "--eval-samples", "2", "--sample-steps", "2"]


@pytest.mark.parametrize("args", [CLIP_ARGS, UP_ARGS], ids=["clip", "upsampler"])
def test_clip_and_upsampler_two_processes_equal_one(tmp_path, args):
    args = [*args, "--steps", "3", "--precision", "fp32", "--ema-decay", "0.9"]
    launch([*args, "--out", str(tmp_path / "ddp")])
    assert main(["-q", *args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    assert_close_states(state(tmp_path / "ddp"), state(tmp_path / "one"))


def test_two_process_stop_and_resume_continues_exactly(emb_dir, tmp_path, prior_reference):
    """Stopped at step 3 (as a kill after the step-3 checkpoint leaves it), then resumed on 2 ranks."""
    out = tmp_path / "ddp"
    base = [*PRIOR, "--data", str(emb_dir), "--batch-size", "16", "--out", str(out)]
    launch([*base, "--stop-at", "3"])
    assert state(out)["step"] == 3
    launch([*base, "--resume"])
    assert_close_states(state(out), prior_reference)
    # A 2-process checkpoint is not resumed by 1 process (the data split would change).
    assert main(["-q", *base, "--resume"]) == 2


def test_two_process_hard_kill_resumes_from_last_checkpoint(emb_dir, tmp_path):
    """SIGKILL one worker mid-run (torchrun then stops the other); the resume ends where a run
    that never stopped ends. Whenever the kill lands, the outcome must be the same."""
    args = [*PRIOR, "--data", str(emb_dir), "--batch-size", "16", "--steps", "150", "--save-every", "5"]
    args += ["--sample-every", "0"]
    assert main(["-q", *args, "--grad-accum", "2", "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*cmd, "-m", "unclip", "-q", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    killed = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "state.pt").is_file():
            workers = subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
            if workers:
                os.kill(int(workers[-1]), signal.SIGKILL)
                killed = True
                break
        time.sleep(0.01)
    proc.wait(timeout=120)
    if killed:
        assert proc.returncode != 0 and state(out)["step"] < 150
    launch([*args, "--out", str(out), "--resume"])
    assert_close_states(state(out), state(tmp_path / "ref"))


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_accelerate_launch_equals_one_process(emb_dir, tmp_path, prior_reference):
    out = tmp_path / "acc"
    launch([*PRIOR, "--data", str(emb_dir), "--batch-size", "16", "--out", str(out)], launcher="accelerate")
    assert state(out)["world_size"] == 2
    assert_close_states(state(out), prior_reference)


# --------------------------------------------------------------------------- the split itself
def _union_over_ranks(make, world, steps):
    per_rank = []
    for rank in range(world):
        stream = make(rank, world)
        per_rank.append([next(stream) for _ in range(steps)])
    return per_rank


def test_map_batches_ranks_partition_the_single_process_order():
    ds = SyntheticCaptions(30, 8)
    single = MapBatches(ds, 4, seed=5, rank=0, world_size=1)
    want = [next(single)["caption"] for _ in range(6)]  # 6 micro-batches of 4 (wraps into epoch 2)
    per_rank = _union_over_ranks(lambda r, w: MapBatches(ds, 4, seed=5, rank=r, world_size=w), 2, 3)
    got = [per_rank[k % 2][k // 2]["caption"] for k in range(6)]
    assert got == want
    s0 = MapBatches(ds, 4, seed=5, rank=0, world_size=2)
    for _ in range(3):
        next(s0)
    assert (s0.epoch, s0.index) == (single.epoch, single.index)  # the saved position is global


def test_embedding_batches_split_without_duplicates_or_gaps(emb_dir):
    from unclip.data.embeddings import EmbeddingShards

    shards = EmbeddingShards(emb_dir)
    idx = torch.arange(80).numpy()
    per_rank = _union_over_ranks(
        lambda r, w: EmbeddingBatches(shards, idx, 8, seed=1, rank=r, world_size=w), 2, 5
    )
    seen = [c for rank in per_rank for b in rank for c in b["caption"]]
    assert len(seen) == 80 and len(set(seen)) == 80  # one epoch, every sample exactly once


def test_shapes_ranks_read_distinct_samples():
    per_rank = _union_over_ranks(lambda r, w: ShapesBatches(16, 4, seed=0, rank=r, world_size=w), 2, 2)
    single = ShapesBatches(16, 4, seed=0, rank=0, world_size=1)
    want = [next(single)["caption"] for _ in range(4)]
    assert [per_rank[k % 2][k // 2]["caption"] for k in range(4)] == want
    assert per_rank[0][0]["caption"] != per_rank[1][0]["caption"]


def test_micro_batch_seeds_differ_and_repeat():
    seeds = {micro_batch_seed(0, k) for k in range(1000)}
    assert len(seeds) == 1000 and micro_batch_seed(3, 7) == micro_batch_seed(3, 7)
    assert micro_batch_seed(0, 5) != micro_batch_seed(1, 5) and all(0 <= s < 2**63 for s in seeds)


def test_accelerate_mixed_precision_environment(monkeypatch):
    import argparse

    from unclip.cli.train import resolve_recipe
    from unclip.errors import UserError

    args = argparse.Namespace(config=None, preset="prior-diffusion-tiny-test", precision=None, stop_at=None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_recipe(args, "diffusion_prior")[1].precision == "fp32"
    args.precision = "bf16"  # the flag wins
    assert resolve_recipe(args, "diffusion_prior")[1].precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserError, match="ACCELERATE_MIXED_PRECISION"):
        resolve_recipe(args, "diffusion_prior")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_loss_scaling_on_gpu(tmp_path):
    clip = tmp_path / "clip"
    tiny_clip().save(clip)
    args = [
        "-q",
        "train",
        "decoder",
        "--data",
        "shapes",
        "--clip",
        str(clip),
        "--preset",
        "decoder-tiny-test",
    ]
    args += ["--steps", "4", "--precision", "fp16", "--sample-every", "0", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    st = state(tmp_path / "run")
    assert st["scaler"] is not None and st["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
