"""CLIP training throughput: bf16 autocast vs fp32, per preset, in one run.

One optimizer step of a batch (forward, symmetric InfoNCE, backward, AdamW) on fixed random
pixels and fixed shapes captions, so data rendering is excluded; the best of several repeats is
reported (the CPU may be shared). Run::

    OMP_NUM_THREADS=1 python bench/clip_throughput.py [--presets clip-shapes-resnet clip-shapes-small]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from unclip.clip import ClipConfig
from unclip.clip.loss import caption_positives, contrastive_loss
from unclip.clip.model import ClipModel
from unclip.clip.tokenizer import train_bpe
from unclip.data.shapes import describe, scene
from unclip.presets import get_preset


def step_time(model: ClipModel, pixels: torch.Tensor, captions: list[str], bf16: bool, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ids, mask = model.tokenize(captions)
            img, txt, scale = model(pixels, ids, mask)
            loss, _ = contrastive_loss(img, txt, scale, caption_positives(captions, pixels.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["clip-shapes-resnet", "clip-shapes-small"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    captions = [describe(scene.sample_scene(rng)) for _ in range(a.batch)]
    print(f"threads {torch.get_num_threads()}, batch {a.batch}")
    print("| preset | params | bf16 img/s | fp32 img/s | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for name in a.presets:
        cfg = ClipConfig.from_dict(get_preset(name)["model"])
        torch.manual_seed(0)
        tok = train_bpe(captions, cfg.text.vocab_size, cfg.text.context_length)
        model = ClipModel(cfg, tok).to(memory_format=torch.channels_last)
        s = cfg.vision.image_size
        pixels = torch.randn(a.batch, 3, s, s).contiguous(memory_format=torch.channels_last)
        bf16 = a.batch / step_time(model, pixels, captions, True, a.repeats)
        fp32 = a.batch / step_time(model, pixels, captions, False, a.repeats)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {n:.2f}M | {bf16:.0f} | {fp32:.0f} | {bf16 / fp32:.2f} |")


if __name__ == "__main__":
    main()
