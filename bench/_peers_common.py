"""Pure-Python helpers shared by ``bench/vs_peers.py`` and ``bench/_peer_worker.py``.

Standard library only: the worker runs in the peers' venv (no ``unclip`` there) and the tests
run it without torch. Parameter matching, ratios and markdown tables live here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

PARAM_TOLERANCE = 0.10  # peers' parameter counts must lie within 10% of ours
PRECISIONS = ("fp32", "bf16")


def closest(target: int, candidates: Mapping[str, int]) -> tuple[str, int]:
    """The candidate whose parameter count is nearest to ``target`` (ties: the first given).

    Args:
        target: our model's parameter count.
        candidates: name (a config description) -> parameter count.

    Returns:
        (name, count) of the best candidate.
    """
    if not candidates:
        raise ValueError("no candidate configs to match against")
    return min(candidates.items(), key=lambda kv: abs(kv[1] - target))


def rel_diff(ours: int, theirs: int) -> float:
    """(theirs - ours) / ours: +0.05 means the peer has 5% more parameters."""
    if ours <= 0:
        raise ValueError("our parameter count must be positive")
    return (theirs - ours) / ours


def params_match(ours: int, theirs: int, tol: float = PARAM_TOLERANCE) -> bool:
    """True when the peer's parameter count is within ``tol`` (relative) of ours."""
    return abs(rel_diff(ours, theirs)) <= tol


def fmt_params(n: int | None) -> str:
    """8270083 -> '8.27M'."""
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k"


def stage_diffs(ours: Mapping[str, int], theirs: Mapping[str, int]) -> dict[str, float]:
    """Per-stage relative parameter differences (theirs - ours) / ours, for the stages both have."""
    return {k: rel_diff(ours[k], theirs[k]) for k in ours if k in theirs}


def fmt_stages(stages: Mapping[str, int], ref: Mapping[str, int] | None = None) -> str:
    """{"text": 748672, "prior": 1963776} -> 'text 748.7k, prior 1.96M' (with ' (+x.x%)' against ``ref``)."""
    parts = []
    for k, n in stages.items():
        delta = f" ({rel_diff(ref[k], n):+.1%})" if ref and ref.get(k) else ""
        parts.append(f"{k} {fmt_params(n)}{delta}")
    return ", ".join(parts)


def cut_steps(steps: Sequence[int], div: int) -> tuple[int, ...]:
    """Step counts divided by ``div``, rounded up: ``--quick``'s end-to-end counts. At least 2
    (diffusers' UnCLIPScheduler divides by steps - 1), or the count itself when it is smaller."""
    if div < 1:
        raise ValueError("div must be >= 1")
    return tuple(min(s, max(2, math.ceil(s / div))) for s in steps)


def fmt_rate(x: float | None) -> str:
    """Throughput with 3 significant digits, '-' for missing."""
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if x >= 0.01 else f"{x:.2e}"


def ratio(ours: float | None, peer: float | None) -> float | None:
    """ours / peer, or None when either side is missing or the peer's is zero."""
    if ours is None or peer is None or peer <= 0:
        return None
    return ours / peer


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"x{r:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row {r} has {len(r)} cells, expected {len(headers)}")
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rate(row: Mapping[str, Any], precision: str) -> float | None:
    v = row.get("rates", {}).get(precision)
    return float(v) if v is not None else None


def achieved_gflops(row: Mapping[str, Any], precision: str) -> float | None:
    """Counted GFLOP per item times items/s: how much arithmetic the implementation gets done."""
    r, g = _rate(row, precision), row.get("gflop_per_item")
    return r * g if r is not None and g else None


def case_tables(case: Mapping[str, Any]) -> str:
    """Markdown for one case: a throughput table and a ratio table (ours / peer, per pairing).

    ``case`` holds "title", "unit" and "rows"; each row has "side" ("ours" or "peer"),
    "label", "params", "rates" ({"fp32": x, "bf16": y}, a value may be None) and optionally
    "errors" ({precision: message}) and "note". Ratios: same precision (fp32/fp32 and
    bf16/bf16), then defaults against defaults (ours bf16 / peer fp32).
    """
    unit = case["unit"]
    rows = case["rows"]
    ours = [r for r in rows if r["side"] == "ours"]
    peers = [r for r in rows if r["side"] == "peer"]
    ref = ours[0]["params"] if ours else None
    flops = any(r.get("gflop_per_item") for r in rows)
    body = []
    for r in rows:
        delta = ""
        if r["side"] == "peer" and ref and r.get("params"):
            delta = f" ({rel_diff(ref, r['params']):+.1%})"
        cells = [r["label"], fmt_params(r.get("params")) + delta]
        for p in PRECISIONS:
            err = r.get("errors", {}).get(p)
            cells.append(f"failed: {err}" if err else fmt_rate(_rate(r, p)))
        if flops:
            g = r.get("gflop_per_item")
            cells.append(f"{g:.3g}" if g else "-")
            cells.append(" / ".join(fmt_rate(achieved_gflops(r, p)) for p in PRECISIONS))
        body.append(cells)
    out = [f"**{case['title']}**", ""]
    headers = ["implementation", "params", f"fp32 {unit}", f"bf16 autocast {unit}"]
    if flops:
        headers += ["GFLOP per item", "achieved GFLOP/s fp32 / bf16"]
    out.append(markdown_table(headers, body))
    if ours and peers:
        pairs = []
        for o in ours:
            for p in peers:
                pairs.append(
                    [
                        f"{o['label']} vs {p['label']}",
                        fmt_ratio(ratio(_rate(o, "fp32"), _rate(p, "fp32"))),
                        fmt_ratio(ratio(_rate(o, "bf16"), _rate(p, "bf16"))),
                        fmt_ratio(ratio(_rate(o, "bf16"), _rate(p, "fp32"))),
                    ]
                )
        out += [
            "",
            markdown_table(
                ["ours / peer", "fp32 / fp32", "bf16 / bf16", "ours bf16 (default) / peer fp32 (default)"],
                pairs,
            ),
        ]
    notes = [f"- {r['label']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def best_time(fn: Callable[[], object], repeats: int, warmup: Callable[[], object] | None = None) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one call of ``warmup`` (if given)."""
    if warmup is not None:
        warmup()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def error_line(exc: BaseException, width: int) -> str:
    """``Type: first line of the message`` (at most ``width`` characters of it), or ``Type``."""
    first = str(exc).splitlines()[0][:width] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def measure(
    precisions: Sequence[str],
    run: Callable[[int, str], object],
    items: int,
    repeats: int,
    steps: int | None = None,
    steps_timed: int | None = None,
    warmup_steps: int = 2,
) -> dict[str, Any]:
    """Time ``run(n_steps, precision)`` for each precision (best of ``repeats`` after one warmup
    call of ``warmup_steps`` steps). ``items`` outputs per timed call.

    Returns:
        {"rates": {precision: items/s or None}, "seconds": {...}, "errors": {precision: message}};
        a precision that raises is reported in "errors", not raised.
    """
    timed = steps_timed or steps or 1
    rates: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for p in precisions:
        try:
            t = best_time(lambda p=p: run(timed, p), repeats, warmup=lambda p=p: run(warmup_steps, p))
        except Exception as exc:
            rates[p] = None
            errors[p] = error_line(exc, 160)
            continue
        seconds[p] = t
        rates[p] = per_second(items, t, steps, steps_timed)
    return {"rates": rates, "seconds": seconds, "errors": errors}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (``torch.utils.flop_counter``: matmuls,
    convolutions and attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def flop_fields(run: Callable[[int, str], object], items: int, steps: int | None = None) -> dict[str, Any]:
    """GFLOP per output item of a job, for the achieved-GFLOP/s column of :func:`case_tables`.

    ``run(n, precision)`` is the timed callable (n sampler steps, or n optimizer steps when
    ``steps`` is None). Sampling jobs are counted at 2 and 3 steps (some schedulers refuse 1), so
    a fixed cost per call (a cached caption prefix) is counted once and the per-step cost
    ``steps`` times.

    Returns:
        {"gflop_per_item": x}, or {"flops_error": message} when counting fails.
    """
    try:
        if steps and steps > 2:
            two = count_flops(lambda: run(2, "fp32"))
            total = two + (steps - 2) * (count_flops(lambda: run(3, "fp32")) - two)
        else:
            total = count_flops(lambda: run(steps or 1, "fp32"))
    except Exception as exc:  # a peer that cannot run one step: report, do not fail the job
        return {"flops_error": error_line(exc, 120)}
    return {"gflop_per_item": total / items / 1e9}


def measure_calls(
    precisions: Sequence[str], call: Callable[[bool, str], object], items: int, repeats: int
) -> dict[str, Any]:
    """:func:`measure` for whole calls (end to end) rather than sampler steps: ``call(True, p)`` is
    the warm-up (one cheap call, e.g. one step per stage), then ``call(False, p)`` is timed
    ``repeats`` times (best kept). ``items`` outputs per timed call; no step scaling.
    """
    return measure(precisions, lambda n, p: call(n == 0, p), items, repeats, warmup_steps=0)


def per_second(items: int, seconds: float, steps: int | None = None, steps_timed: int | None = None) -> float:
    """Items per second; when only ``steps_timed`` of ``steps`` sampler steps were timed
    (``--quick``), the time is scaled linearly to the full step count."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if steps and steps_timed and steps_timed != steps:
        seconds = seconds * steps / steps_timed
    return items / seconds
