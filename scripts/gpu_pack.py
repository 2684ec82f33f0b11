"""Pack a GPU run's exports for the device tool: bf16 component directories plus the logs.

    python scripts/gpu_pack.py WORK PACK

Every run directory under WORK (one per stage) is copied to PACK/<stage>/ with its log.csv,
eval.csv and run.json; its exported components get bf16 weights (a CLIP stays fp32: it is small
and may be fine-tuned again). PACK/summary.json holds each stage's last log row. The caller tars
PACK and splits it (the tool returns at most 8 files of 16 MiB).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def to_bf16(weights: Path) -> None:
    """Rewrite a safetensors file with bf16 floating tensors, keeping its metadata."""
    with open(weights, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(size)).get("__metadata__")
    tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata=meta)


def main(work: Path, pack: Path) -> None:
    shutil.rmtree(pack, ignore_errors=True)
    summary = {}
    for run in sorted(p for p in work.iterdir() if p.is_dir() and p.name not in (pack.name, "logs")):
        dest = pack / run.name
        dest.mkdir(parents=True)
        for name in ("log.csv", "eval.csv", "run.json"):
            if (run / name).is_file():
                shutil.copy(run / name, dest / name)
        for comp in run.iterdir():
            if not (comp / "component.json").is_file():
                continue
            shutil.copytree(comp, dest / comp.name)
            if json.loads((comp / "component.json").read_text())["kind"] != "clip":
                to_bf16(dest / comp.name / "model.safetensors")
        rows = (run / "log.csv").read_text().splitlines() if (run / "log.csv").is_file() else []
        summary[run.name] = rows[-1] if len(rows) > 1 else None
    (pack / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
