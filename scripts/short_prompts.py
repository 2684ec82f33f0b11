"""Short single-object prompts through the whole text-to-image path, with and without a background.

    OMP_NUM_THREADS=1 python scripts/short_prompts.py MODEL [MODEL ...] [--n 40]

``--n`` single objects on plain backgrounds are captioned "a <colour> <shape>" and
"a <colour> <shape> on a <background> background". Each caption goes through the diffusion prior
and the decoder (32 px, the model's defaults, no upsampler; image i uses seed i), and the pixel
oracle reads the largest object's colour and shape and the background. The evaluation suite's
prompts name every attribute and the background; these are what people type (docs/bundles.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("UNCLIP_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decoder_background import background_accuracy, object_accuracy

from unclip.data.shapes import sample_scene
from unclip.pipeline import UnCLIPPipeline


def run(pipe: UnCLIPPipeline, specs: list, with_background: bool) -> dict[str, float]:
    """Oracle colour / shape (and background) accuracy of one image per scene's short caption."""
    prompts = [
        f"a {s.objects[0].color} {s.objects[0].shape}"
        + (f" on a {s.background} background" if with_background else "")
        for s in specs
    ]
    seeds = list(range(len(specs)))
    with torch.no_grad():
        text = pipe.encode_prompts(prompts)
        emb = pipe.prior_embeds(text, pipe.generators(seeds))
        out = pipe.decode(
            emb,
            pipe.decoder_noise(pipe.generators(seeds)),
            text=text,
            sampler=pipe.defaults.decoder_sampler,
            upsample=False,
        )
    acc = object_accuracy(out, specs)
    if with_background:
        acc["background"] = background_accuracy(out, [s.background for s in specs])
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    specs = [sample_scene(rng, num_objects=1, texture_prob=0.0) for _ in range(a.n)]
    print("| model | no background named: colour / shape | background named: colour / shape / background |")
    print("|---|---|---|")
    for name in a.models:
        pipe = UnCLIPPipeline.from_pretrained(name)
        plain, named = run(pipe, specs, False), run(pipe, specs, True)
        cells = (
            f"{100 * plain['color']:.0f} / {100 * plain['shape']:.0f}",
            f"{100 * named['color']:.0f} / {100 * named['shape']:.0f} / {100 * named['background']:.0f}",
        )
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
