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
