"""bench/vs_peers.py's pure-Python parts: parameter matching, ratios, tables (no peer env needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _peers_common as pc  # noqa: E402


def test_closest_picks_nearest_count_and_first_on_ties():
    counts = {"dim=56": 7_019_859, "dim=64": 8_812_995, "dim=72": 10_803_763}
    assert pc.closest(8_270_083, counts) == ("dim=64", 8_812_995)
    assert pc.closest(100, {"a": 90, "b": 110}) == ("a", 90)
    with pytest.raises(ValueError):
        pc.closest(1, {})


def test_param_tolerance_is_ten_percent():
    assert pc.rel_diff(100, 110) == pytest.approx(0.10)
    assert pc.params_match(8_270_083, 8_812_995)  # +6.6%
    assert pc.params_match(1000, 900) and pc.params_match(1000, 1100)
    assert not pc.params_match(1000, 1101) and not pc.params_match(1000, 899)


def test_formatting_helpers():
    assert pc.fmt_params(8_270_083) == "8.27M"
    assert pc.fmt_params(512_000) == "512.0k"
    assert pc.fmt_params(None) == "-"
    assert [pc.fmt_rate(x) for x in (1234.5, 26.24, 0.4031, 0.00123, None)] == [
        "1234",
        "26.2",
        "0.403",
        "1.23e-03",
        "-",
    ]
    assert pc.ratio(3.0, 2.0) == 1.5
    assert pc.ratio(None, 2.0) is None and pc.ratio(1.0, 0.0) is None and pc.ratio(1.0, None) is None
    assert pc.fmt_ratio(1.5) == "x1.50" and pc.fmt_ratio(None) == "-"


def test_markdown_table_shape_and_alignment():
    t = pc.markdown_table(["a", "b"], [["x", 1], ["y", 2.5]]).splitlines()
    assert t == ["| a | b |", "|:---|---:|", "| x | 1 |", "| y | 2.5 |"]
    with pytest.raises(ValueError):
        pc.markdown_table(["a", "b"], [["only one"]])


def fake_case():
    return {
        "title": "Decoder sampling, fake",
        "unit": "img/s",
        "rows": [
            {"side": "ours", "label": "ours", "params": 1_000_000, "rates": {"fp32": 2.0, "bf16": 6.0}},
            {"side": "peer", "label": "peerA", "params": 1_050_000, "rates": {"fp32": 1.0, "bf16": 3.0}},
            {
                "side": "peer",
                "label": "peerB",
                "params": 950_000,
                "rates": {"fp32": 4.0, "bf16": None},
                "errors": {"bf16": "RuntimeError: no bf16 kernel"},
                "note": "CFG batched",
            },
        ],
    }


def test_case_tables_ratios_and_errors():
    md = pc.case_tables(fake_case())
    lines = md.splitlines()
    assert lines[0] == "**Decoder sampling, fake**"
    assert "| peerA | 1.05M (+5.0%) | 1 | 3 |" in lines
    assert "| peerB | 950.0k (-5.0%) | 4 | failed: RuntimeError: no bf16 kernel |" in lines
    # same-precision ratios, then ours bf16 (default) over the peer's fp32 (default)
    assert "| ours vs peerA | x2.00 | x2.00 | x6.00 |" in lines
    assert "| ours vs peerB | x0.50 | - | x1.50 |" in lines
    assert "- peerB: CFG batched" in lines


def test_per_second_scales_quick_timings_to_the_full_step_count():
    assert pc.per_second(8, 2.0) == 4.0
    assert pc.per_second(8, 2.0, steps=50, steps_timed=2) == pytest.approx(8 / 50)
    assert pc.per_second(8, 2.0, steps=50, steps_timed=50) == 4.0
    with pytest.raises(ValueError):
        pc.per_second(1, 0.0)


def test_measure_reports_a_failing_precision_instead_of_raising():
    calls = []

    def run(steps, precision):
        calls.append((steps, precision))
        if precision == "bf16":
            raise RuntimeError("unsupported\nsecond line")

    res = pc.measure(("fp32", "bf16"), run, items=4, repeats=2, steps=10, steps_timed=2, warmup_steps=1)
    assert calls[:3] == [(1, "fp32"), (2, "fp32"), (2, "fp32")]
    assert res["rates"]["fp32"] > 0 and res["rates"]["bf16"] is None
    assert res["errors"] == {"bf16": "RuntimeError: unsupported"}


def test_vs_peers_help_exits_zero_without_the_peer_env():
    out = subprocess.run(
        [sys.executable, str(BENCH / "vs_peers.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--cases" in out.stdout and "--json" in out.stdout


# ----------------------------------------------------------------------------- e2e128


def test_cut_steps_quarters_each_stage_and_keeps_two_steps():
    assert pc.cut_steps((64, 25, 6), 4) == (16, 7, 2)
    assert pc.cut_steps((25, 25, 7), 4) == (7, 7, 2)
    assert pc.cut_steps((25, 25, 7), 1) == (25, 25, 7)
    assert pc.cut_steps((3, 1), 4) == (2, 1)  # at least 2 (UnCLIPScheduler), never above the count
    with pytest.raises(ValueError):
        pc.cut_steps((10,), 0)


def test_stage_diffs_and_formatting():
    ours = {"text": 1000, "prior": 2_000_000}
    theirs = {"text": 1100, "prior": 1_900_000, "extra": 5}
    assert pc.stage_diffs(ours, theirs) == pytest.approx({"text": 0.10, "prior": -0.05})
    assert pc.fmt_stages(ours) == "text 1.0k, prior 2.00M"
    assert pc.fmt_stages(theirs, ours) == "text 1.1k (+10.0%), prior 1.90M (-5.0%), extra 0.0k"


def test_measure_calls_warms_up_once_then_times_whole_calls():
    calls = []

    def call(warmup, precision):
        calls.append((warmup, precision))
        if precision == "bf16":
            raise RuntimeError("no kernel")

    res = pc.measure_calls(("fp32", "bf16"), call, items=8, repeats=2)
    assert calls == [(True, "fp32"), (False, "fp32"), (False, "fp32"), (True, "bf16")]
    assert res["rates"]["fp32"] == pytest.approx(8 / res["seconds"]["fp32"])
    assert res["errors"] == {"bf16": "RuntimeError: no kernel"}


def fake_e2e_settings():
    return {
        "tokenizer_file": "tok.json",
        "special_tokens": {"pad": "<pad>", "bos": "<sot>", "eos": "<eot>"},
        "vocab_size": 1024,
        "text_len": 48,
        "text_width": 128,
        "text_layers": 3,
        "text_heads": 2,
        "embed_dim": 128,
        "prior_heads": 4,
        "prior_head_dim": 48,
        "decoder_size": 32,
        "image_size": 128,
        "context_dim": 256,
        "prior_guidance": 2.0,
        "decoder_guidance": 3.0,
        "stage_targets": {"text": 1, "prior": 2, "decoder": 3, "upsampler": 4},
    }


def test_e2e_peer_jobs_carry_our_sizes_steps_and_guidance():
    import vs_peers

    ours = {"params": 10, "peer_settings": fake_e2e_settings()}
    jobs = vs_peers.peer_jobs("e2e128", vs_peers.QUICK, 1, ours)
    assert [j["lib"] for j, _ in jobs] == ["dalle2", "diffusers"]
    for job, label in jobs:
        assert job["case"] == "e2e" and job["steps"] == [7, 7, 2] and job["best_of"] == 1
        assert job["prompts"] == list(vs_peers.E2E_PROMPTS) and job["per_prompt"] == 2 and job["batch"] == 8
        assert job["stage_targets"] == ours["peer_settings"]["stage_targets"] and job["target_params"] == 10
        assert "7/7/2 steps (quick cut of 25/25/7)" in label
    full = vs_peers.peer_jobs("e2e128", vs_peers.FULL, 1, ours)
    assert full[0][0]["steps"] == list(vs_peers.PEER_E2E_STEPS)
    assert full[1][1] == "diffusers UnCLIPPipeline, 25/25/7 steps"


def test_e2e_peer_stages_match_ours_within_tolerance():
    """Needs the peer venv (skipped without it): the worker's per-stage picks, on the meta device."""
    import json

    import peers_env
    import vs_peers

    if not peers_env.is_ready():
        pytest.skip("no peer venv (python bench/peers_env.py)")
    mods, defaults, tokenizer_file = vs_peers.our_e2e_components()
    stages = vs_peers.e2e_stage_params(mods)
    job = dict(vs_peers.e2e_peer_settings(mods, defaults, tokenizer_file, stages), counts_only=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import _peer_worker as w; "
        "job = json.loads(sys.argv[2]); "
        "print(json.dumps({lib: w.JOBS[(lib, 'e2e')](job) for lib in ('dalle2', 'diffusers')}))"
    )
    py = peers_env.venv_python(peers_env.DEFAULT_VENV)
    out = subprocess.run(
        [str(py), "-c", code, str(BENCH), json.dumps(job)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for lib, res in json.loads(out.stdout.splitlines()[-1]).items():
        assert set(res["stage_params"]) == set(stages), lib
        for stage, diff in pc.stage_diffs(stages, res["stage_params"]).items():
            assert abs(diff) <= pc.PARAM_TOLERANCE, (lib, stage, diff, res["candidates"][stage])
        assert res["params"] == sum(res["stage_params"].values())


def test_flop_fields_counts_a_fixed_prefix_once_and_each_step_steps_times():
    import torch

    w, x = torch.randn(64, 64), torch.randn(8, 64)
    mm = 2 * 8 * 64 * 64  # FLOPs of one x @ w

    def run(steps, precision):
        assert precision == "fp32"
        y = x @ w  # a fixed per-call prefix (like a cached caption)
        for _ in range(steps):
            y = (y @ w) @ w  # two network evaluations per step (like CFG)

    res = pc.flop_fields(run, items=8, steps=50)
    assert res["gflop_per_item"] == pytest.approx((mm + 50 * 2 * mm) / 8 / 1e9)
    # training-style jobs (no step count) count one call
    assert pc.flop_fields(run, items=8)["gflop_per_item"] == pytest.approx(3 * mm / 8 / 1e9)

    def broken(steps, precision):
        raise ZeroDivisionError("division by zero")

    assert pc.flop_fields(broken, items=8, steps=50) == {"flops_error": "ZeroDivisionError: division by zero"}


def test_case_tables_add_achieved_gflops_when_flops_were_counted():
    case = fake_case()
    case["rows"][0]["gflop_per_item"] = 10.0  # ours: 2 / 6 items/s
    case["rows"][1]["gflop_per_item"] = 20.0  # peerA: 1 / 3 items/s
    lines = pc.case_tables(case).splitlines()
    assert lines[2].endswith("| GFLOP per item | achieved GFLOP/s fp32 / bf16 |")
    assert "| ours | 1.00M | 2 | 6 | 10 | 20.0 / 60.0 |" in lines
    assert "| peerA | 1.05M (+5.0%) | 1 | 3 | 20 | 20.0 / 60.0 |" in lines
    assert "| peerB | 950.0k (-5.0%) | 4 | failed: RuntimeError: no bf16 kernel | - | - / - |" in lines


def test_decoder_profile_lists_each_distinct_3x3_conv_once():
    import decoder_profile
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)  # same shape as b: listed once
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # strided: not listed
            self.d = nn.Conv2d(8, 4, 3, padding=1)
            self.one = nn.Conv2d(4, 4, 1)  # 1x1: not listed

        def forward(self, x):
            return self.one(self.d(self.down(self.c(self.b(self.a(x))))))

    shapes = decoder_profile.conv_shapes(Net(), torch.randn(2, 3, 16, 16))
    assert shapes == [(3, 8, 16, 16), (8, 8, 16, 16), (8, 4, 8, 8)]
