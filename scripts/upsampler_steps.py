"""How an upsampler's quality and time depend on its DDIM steps (held-out shapes scenes).

    OMP_NUM_THREADS=1 python scripts/upsampler_steps.py runs/bundle-shapes/upsampler/upsampler \
        [--n 32] [--steps 27,15,10,6,4]

Prints, per step count, the wall time, the PSNR to the true high-resolution render, the pixel
oracle's all-correct rate, and the same two for plain bicubic. This chose the `shapes` bundle's
default of 6 upsampler steps (docs/bundles.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from unclip.checkpoint import load_component
from unclip.train.upsampler import evaluate_upsampler, upsampler_eval_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upsampler", help="an upsampler component directory")
    ap.add_argument("--n", type=int, default=32, help="held-out scenes")
    ap.add_argument("--steps", default="27,15,10,6,4", help="comma-separated DDIM step counts")
    a = ap.parse_args()
    up, _, _ = load_component(a.upsampler)
    pairs = upsampler_eval_batch("shapes", up.config, a.n, 0)
    print("steps  seconds  psnr  all_correct  | bicubic: psnr  all_correct")
    for steps in (int(s) for s in a.steps.split(",")):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m, _ = evaluate_upsampler(up, pairs, steps)
        sec = time.perf_counter() - start
        print(
            f"{steps:5d}  {sec:7.1f}  {m['psnr']:.2f}  {m['oracle_all_correct']:11.3f}"
            f"  | {m['psnr_bicubic']:.2f}  {m['bicubic_all_correct']:.3f}"
        )


if __name__ == "__main__":
    main()
