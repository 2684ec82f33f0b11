"""Sample grids of the shapes world, for docs and quick looks.

``python -m unclip.data.shapes.grid OUT.png`` writes the grid shown in docs/data-shapes.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from unclip.data.images import make_grid
from unclip.data.shapes.captions import caption
from unclip.data.shapes.render import render
from unclip.data.shapes.scene import sample_scene


def captioned_grid(
    seed: int = 0, num: int = 12, cols: int = 4, size: int = 96, sizes: Sequence[int] = ()
) -> Image.Image:
    """Random training scenes with their captions underneath (and extra renders at ``sizes``)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(num):
        spec = sample_scene(rng)
        text = caption(spec, rng)
        row = [render(spec, size)] + [
            render(spec, s).resize((size, size), Image.Resampling.NEAREST) for s in sizes
        ]
        tile_w = len(row) * size + (len(row) - 1) * 2
        tile = Image.new("RGB", (tile_w, size + 52), (255, 255, 255))
        for k, im in enumerate(row):
            tile.paste(im, (k * (size + 2), 0))
        draw = ImageDraw.Draw(tile)
        words, lines, line = text.split(), [], ""
        for word in words:  # wrap to the tile width (default bitmap font: ~6 px per character)
            if len(line) + len(word) + 1 > tile_w // 6:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for k, ln in enumerate(lines[:4]):
            draw.text((2, size + 2 + 12 * k), ln, fill=(0, 0, 0))
        tiles.append(tile)
    return make_grid(tiles, cols, pad=6)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a sample grid of the shapes world")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=int, default=12)
    parser.add_argument("--cols", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sizes", default="32", help="extra low-res renders shown next to each scene")
    args = parser.parse_args(argv)
    extra = [int(s) for s in args.sizes.split(",") if s]
    captioned_grid(args.seed, args.num, args.cols, args.size, extra).save(args.out, optimize=True)


if __name__ == "__main__":
    main()
