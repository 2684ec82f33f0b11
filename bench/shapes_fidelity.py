"""Oracle fidelity of whole models on the shapes world, with more prompts than ``--quick``.

    python bench/shapes_fidelity.py MODEL [MODEL ...] [--n 48] [--json OUT]

Runs only the main section of the shapes suite (full mode, at most ``--n`` prompts per set) and
prints, per model, the unCLIP (diffusion prior) row: single-object attribute accuracy and
all-correct, two-object binding, held-out compositions, entropy ratio and FD. For comparing two
versions of a bundle where the quick suite's 12 single-object prompts are too few.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
os.environ.setdefault("UNCLIP_QUIET", "1")

from unclip.eval.shapes_suite import evaluate_model

SYSTEM = "unCLIP (diffusion prior)"


def row(model: str, main: dict) -> str:
    s = main[SYSTEM]
    one, two, held, div = s["single"], s["two"], s["heldout"], s["diversity"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    return (
        f"| {model} | {one['n']} | {pct(one['shape'])} | {pct(one['color'])} | {pct(one['all_correct'])} "
        f"| {pct(two['binding'])} | {pct(held['attr_acc'])} | {div['entropy_ratio']:.3f} | {s.get('fd', float('nan')):.0f} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(
        "| model | single n | shape % | colour % | single all % | two: binding % | held-out attr % | entropy ratio | FD |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    out = {}
    for m in args.models:
        results, _ = evaluate_model(m, n=args.n, seed=args.seed, sections=("main",))
        out[m] = results["main"]
        print(row(m, results["main"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
