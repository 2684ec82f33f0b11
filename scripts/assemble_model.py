"""Assemble a model directory (model.json + components) from trained run directories.

    python scripts/assemble_model.py --out runs/model-shapes --clip runs/clip-shapes/clip \
        --prior runs/prior-diffusion-shapes --prior-ar runs/prior-ar-shapes \
        --decoder runs/decoder-shapes --upsampler runs/upsampler-shapes [--dtype bf16]

Each stage argument is a run directory (its exported component subdirectory is found) or a
component directory. The result loads with ``UnCLIPPipeline.from_pretrained(OUT)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unclip.checkpoint import load_component
from unclip.clip import load_clip
from unclip.pipeline import save_model


def _component_dir(path: str, export: str) -> Path:
    p = Path(path)
    return p / export if (p / export / "component.json").is_file() else p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--decoder", required=True)
    ap.add_argument("--prior")
    ap.add_argument("--prior-ar")
    ap.add_argument("--upsampler", action="append", default=[])
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--defaults", help="JSON object of pipeline defaults")
    a = ap.parse_args()

    components = {"clip": load_clip(_component_dir(a.clip, "clip"))}
    sources = {"clip": a.clip, "decoder": a.decoder}
    components["decoder"] = load_component(_component_dir(a.decoder, "decoder"))[0]
    if a.prior:
        components["prior"] = load_component(_component_dir(a.prior, "prior"))[0]
        sources["prior"] = a.prior
    if a.prior_ar:
        components["prior_ar"] = load_component(_component_dir(a.prior_ar, "prior"))[0]
        sources["prior_ar"] = a.prior_ar
    for i, up in enumerate(a.upsampler, 1):
        components[f"upsampler{i}"] = load_component(_component_dir(up, "upsampler"))[0]
        sources[f"upsampler{i}"] = up
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    defaults = json.loads(a.defaults) if a.defaults else None
    out = save_model(a.out, components, defaults=defaults, info={"sources": sources}, dtype=dtype)
    print(out)


if __name__ == "__main__":
    main()
