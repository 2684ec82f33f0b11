"""Read back a CLIP run's attribute probe (``--aux-attributes``) on fresh single- and two-object scenes.

    python scripts/clip_probe_readout.py runs/clip-shapes-f [--n 400]

Loads ``RUN/state.pt`` (the live weights, not the EMA), embeds fresh training-split scenes and
prints, per attribute, how often the probe names the object in an occupied cell correctly, and how
often it finds exactly the occupied cells. This is the probe-phase number behind docs/clip.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from unclip.clip.config import ClipConfig
from unclip.clip.model import ClipModel
from unclip.clip.tokenizer import load_bpe
from unclip.data.shapes import scene
from unclip.data.shapes.stream import image_tensor
from unclip.train.clip import ClipWithProbe


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    run = Path(a.run)
    record = json.loads((run / "run.json").read_text())
    cfg = ClipConfig.from_dict(record["model"])
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=False)
    tokenizer = load_bpe(run / "tokenizer.json", cfg.text.context_length)
    model = ClipWithProbe(ClipModel(cfg, tokenizer), 1.0)
    model.load_state_dict(state["model"])
    model.eval()
    rng = np.random.default_rng(12345)
    specs = [scene.sample_scene(rng, split="train") for _ in range(a.n)]
    x = torch.stack([image_tensor(s, cfg.vision.image_size) for s in specs])
    img = model.clip.image_features(model.clip.preprocess(x))
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    probe = model.probe
    target = probe.targets([s.to_dict() for s in specs])
    occupied = target[..., 0] > 0
    out = {}
    for i, (name, logits) in enumerate(probe.logits(img * img.shape[-1] ** 0.5).items()):
        pred = logits.argmax(-1)
        out[name] = float((pred[occupied] == target[..., i][occupied]).float().mean())
        if i == 0:
            out["cells_exact"] = float(((pred > 0) == occupied).all(-1).float().mean())
    print(f"step {state['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
