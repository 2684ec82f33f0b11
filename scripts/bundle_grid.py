"""The README's picture of a bundle: a few prompts, four images each, one labelled row per prompt.

    python scripts/bundle_grid.py --model shapes --out docs/images/shapes-bundle.png \
        "a small red star" "a large solid blue circle at the top left"

Every image comes from the pipeline at its default settings with ``seed`` (image i of a prompt
uses seed + i, as `unclip generate` does), so the picture is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from unclip.data.images import make_grid
from unclip.pipeline import UnCLIPPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--model", required=True, help="bundle name or model directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=4, help="images per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label-width", type=int, default=220)
    a = ap.parse_args()
    pipe = UnCLIPPipeline.from_pretrained(a.model)
    rows = []
    with torch.inference_mode():
        for prompt in a.prompts:
            images = pipe(prompt, num_images_per_prompt=a.num, seed=a.seed).images
            strip = make_grid(images, cols=a.num)
            row = Image.new("RGB", (a.label_width + strip.width, strip.height), (255, 255, 255))
            row.paste(strip, (a.label_width, 0))
            draw = ImageDraw.Draw(row)
            words, line, y = prompt.split(), "", 6
            for w in words:  # wrap the prompt into the label column
                if len(line) + len(w) + 1 > a.label_width // 7:
                    draw.text((6, y), line, fill=(0, 0, 0))
                    line, y = w, y + 14
                else:
                    line = f"{line} {w}".strip()
            draw.text((6, y), line, fill=(0, 0, 0))
            rows.append(row)
    grid = make_grid(rows, cols=1, pad=0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.out)
    print(f"wrote {a.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
    main()
