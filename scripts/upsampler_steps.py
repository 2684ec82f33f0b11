"""How an upsampler's quality and time depend on its DDIM steps (held-out shapes scenes).

    OMP_NUM_THREADS=1 python scripts/upsampler_steps.py UPSAMPLER [UPSAMPLER ...] \
        [--n 32] [--steps 27,15,10,6,4] [--blur 0.6]

Prints, per upsampler and step count, the wall time, the PSNR to the true high-resolution render
(also split by the scene's background texture: plain, gradient, per-pixel noise), the pixel
oracle's all-correct rate, and the same for plain bicubic. ``--blur SIGMA`` blurs the low-res
input first (the corruption the first stage is trained for). This chose the `shapes` bundle's
default of 6 upsampler steps (docs/bundles.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from unclip.checkpoint import load_component
from unclip.models.degrade import blur
from unclip.train.upsampler import evaluate_upsampler, psnr, upsampler_eval_batch

TEXTURES = ("plain", "gradient", "noise")


def by_texture(out: torch.Tensor, truth: torch.Tensor, specs: list[dict]) -> str:
    """PSNR per background texture, "plain/gradient/noise" (dB; '-' where a texture is absent)."""
    cells = []
    for tex in TEXTURES:
        idx = [i for i, s in enumerate(specs) if s.get("texture", "plain") == tex]
        cells.append(f"{psnr(out[idx], truth[idx]):.2f}" if idx else "-")
    return "/".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("upsamplers", nargs="+", help="upsampler component directories")
    ap.add_argument("--n", type=int, default=32, help="held-out scenes")
    ap.add_argument("--steps", default="27,15,10,6,4", help="comma-separated DDIM step counts")
    ap.add_argument("--blur", type=float, default=0.0, help="Gaussian sigma applied to the low-res input")
    a = ap.parse_args()
    print(
        "upsampler | steps | seconds | psnr | plain/gradient/noise | all_correct || bicubic: psnr | plain/gradient/noise | all_correct"
    )
    for path in a.upsamplers:
        up, _, _ = load_component(path)
        pairs = upsampler_eval_batch("shapes", up.config, a.n, 0)
        if a.blur > 0:
            pairs["low_res"] = blur(pairs["low_res"], torch.full((a.n,), a.blur))
        truth, specs = pairs["image"], pairs["spec"]
        bicubic = F.interpolate(pairs["low_res"], size=truth.shape[-1], mode="bicubic", align_corners=False)
        for steps in (int(s) for s in a.steps.split(",")):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m, out = evaluate_upsampler(up, pairs, steps)
            sec = time.perf_counter() - start
            print(
                f"{path} | {steps} | {sec:.1f} | {m['psnr']:.2f} | {by_texture(out, truth, specs)}"
                f" | {m['oracle_all_correct']:.3f} || {m['psnr_bicubic']:.2f}"
                f" | {by_texture(bicubic.clamp(-1, 1), truth, specs)} | {m['bicubic_all_correct']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
