"""Which image tower can learn the shapes world at our budget? A supervised probe.

Trains an image tower plus a linear head to name the shape in each of the 3x3 grid cells (or
"empty") on fresh shapes-world scenes, and prints, every 100 steps, the shape accuracy on occupied
cells and the fraction of single-object scenes whose occupied cell is found exactly. This is
the experiment behind the ResNet tower of the shapes presets (docs/clip.md).

    OMP_NUM_THREADS=1 python scripts/clip_tower_probe.py --arch vit --size 32 --patch 4
    OMP_NUM_THREADS=1 python scripts/clip_tower_probe.py --arch resnet --size 32 --width 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unclip.clip.config import VisionConfig
from unclip.clip.model import VisionTower
from unclip.clip.resnet import ResNetTower
from unclip.data.shapes import position_name, scene, vocab
from unclip.data.shapes.stream import image_tensor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["vit", "resnet"], default="resnet")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--width", type=int, default=32, help="resnet: first-stage channels; vit: token width")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()

    torch.manual_seed(0)
    if a.arch == "vit":
        cfg = VisionConfig(image_size=a.size, patch_size=a.patch, width=a.width, layers=a.layers, heads=2)
        tower: nn.Module = VisionTower(cfg, 128)
    else:
        cfg = VisionConfig(image_size=a.size, arch="resnet", width=a.width, layers=a.layers, heads=4)
        tower = ResNetTower(cfg, 128)
    shapes, cells = list(vocab.SHAPES), list(vocab.POSITIONS)
    head = nn.Linear(128, len(cells) * (len(shapes) + 1))
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
    rng = np.random.default_rng(0)
    print(f"{a.arch}: {sum(q.numel() for q in tower.parameters()) / 1e6:.2f}M parameters")

    def batch(n: int, num_objects: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        specs = [scene.sample_scene(rng, split="train", num_objects=num_objects) for _ in range(n)]
        x = torch.stack([image_tensor(s, a.size) for s in specs])
        y = torch.zeros(n, len(cells), dtype=torch.long)
        for i, s in enumerate(specs):
            for o in s.objects:
                y[i, cells.index(position_name(o.x, o.y))] = shapes.index(o.shape) + 1
        return x, y

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f = tower(x)
        return head(f.float()).view(len(x), len(cells), -1)

    t0 = time.time()
    for step in range(1, a.steps + 1):
        x, y = batch(a.batch)
        loss = F.cross_entropy(logits(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                x, y = batch(300, num_objects=1)
                pred = logits(x).argmax(-1)
            occ = y > 0
            shape_acc = (pred[occ] == y[occ]).float().mean().item()
            cell_acc = ((pred > 0) == occ).all(1).float().mean().item()
            print(
                f"step {step}: loss {loss.item():.3f} shape {shape_acc:.3f} cell {cell_acc:.3f} ({time.time() - t0:.0f} s)"
            )


if __name__ == "__main__":
    main()
