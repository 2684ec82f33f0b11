"""Quality per compute: oracle fidelity and FD of the shapes decoder against sampler and steps.

    python bench/quality_per_compute.py [--model shapes] [--n 32] [--json OUT]

Runs only the "steps" section of the shapes suite (``unclip.eval.shapes_suite``): the model's
decoder, guided by true CLIP image embeddings of the single-object prompts, sampled with DDIM,
DPM-Solver++(2M) and ancestral DDPM at several step counts from the same x_T, scored by the
pixel oracle (attribute accuracy, all attributes correct) and by FD on the shipped eval CNN
against real renders. Seconds per image are measured in the same run, so each row is a point on a
quality / wall-time curve; the model's default decoder steps should sit at the knee.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
os.environ.setdefault("UNCLIP_QUIET", "1")  # no per-batch progress bars

from unclip.eval.shapes_suite import evaluate_model


def table(rows: list[dict]) -> str:
    """Markdown table of the steps rows, fastest first within each sampler."""
    lines = [
        "| sampler | steps | s / image | attribute acc. % | all correct % | FD |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['seconds_per_image']:.3f} | {100 * r['attr_acc']:.1f} "
            f"| {100 * r['all_correct']:.1f} | {r['fd']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="bundle name or model directory")
    ap.add_argument("--n", type=int, default=32, help="single-object prompts per point (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results, _ = evaluate_model(args.model, n=args.n, seed=args.seed, sections=("steps",))
    rows = results["steps"]
    print(f"model {args.model}, {rows[0]['n']} prompts per point, decoder at {results['resolution']} px, "
          f"guidance {results['settings']['decoder_scale']}, model default {results['settings']['decoder_steps']} "
          f"DDIM steps; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"settings": results["settings"], "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
