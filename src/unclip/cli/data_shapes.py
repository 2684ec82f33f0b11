"""`unclip data shapes`: render the shapes world into webdataset tar shards."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unclip.errors import UserError

logger = logging.getLogger(__name__)

MAX_SIZE = 1024


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes:
        raise UserError("--sizes is empty")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shapes",
        help="render captioned shapes scenes to webdataset shards",
        description=(
            "Render NUM captioned scenes of the shapes world into DIR/shapes-000000.tar, ... "
            "Each sample holds the image(s) and a JSON record (caption, full scene spec, seed). "
            "The same arguments always give byte-identical shards. See docs/data-shapes.md."
        ),
    )
    p.add_argument("--num", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--size", type=int, default=None, metavar="PX", help="image side in pixels (default 64)")
    p.add_argument(
        "--sizes", default=None, metavar="LIST", help="several sizes of the same scene, e.g. 32,128"
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (sample i uses seed and i only)")
    p.add_argument(
        "--split",
        choices=("train", "heldout", "any"),
        default="train",
        help="train: never a held-out combination; heldout: one in every scene (default train)",
    )
    p.add_argument("--shard-size", type=int, default=1000, metavar="K", help="samples per shard")
    p.add_argument(
        "--caption-mode",
        choices=("mixed", "full", "partial", "canonical"),
        default="mixed",
        help="which attributes captions state (default mixed: 35%% full, 65%% partial)",
    )
    p.add_argument("--num-objects", type=int, choices=(1, 2, 3), default=None, help="default: 1-3 at random")
    p.add_argument(
        "--texture-prob", type=float, default=0.3, metavar="P", help="share of textured backgrounds"
    )
    p.add_argument("--overwrite", action="store_true", help="replace shards already in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sizes = sorted(set(_sizes(args.sizes) if args.sizes else []) | ({args.size} if args.size else set()))
    sizes = sizes or [64]
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    if args.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {args.shard_size}")
    bad = [s for s in sizes if not 8 <= s <= MAX_SIZE]
    if bad:
        raise UserError(f"image sizes must be between 8 and {MAX_SIZE} pixels, got {bad}")
    if not 0.0 <= args.texture_prob <= 1.0:
        raise UserError(f"--texture-prob must be in [0, 1], got {args.texture_prob}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.glob("shapes-*.tar")) and not args.overwrite:
        raise UserError(f"{out} already holds shapes shards; pass --overwrite to replace them")
    from unclip.data.shapes.stream import write_shards  # torch import: only when running

    if args.overwrite:
        for old in out.glob("shapes-*.tar"):
            old.unlink()
    paths = write_shards(
        out,
        args.num,
        sizes=sizes,
        seed=args.seed,
        split=args.split,
        shard_size=args.shard_size,
        caption_mode=args.caption_mode,
        num_objects=args.num_objects,
        texture_prob=args.texture_prob,
    )
    logger.info("wrote %d samples at %s px in %d shard(s)", args.num, ",".join(map(str, sizes)), len(paths))
    for path in paths:
        print(path)
    print(out / "manifest.json")
    return 0
