"""`unclip data emoji`: build the emoji corpus into webdataset shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from unclip.data.emoji.build import SIZES, EmojiConfig, build_emoji
from unclip.data.emoji.sources import STYLES, list_styles

_DEFAULT = EmojiConfig()


def _styles(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in list_styles()]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown style(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(list_styles())}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a style twice")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``emoji`` dataset to ``unclip data``."""
    licences = "; ".join(f"{s.name} {s.license}" for s in STYLES.values())
    parser = sub.add_parser(
        "emoji",
        help="emoji art in several styles with CLDR captions -> webdataset shards",
        description=(
            "Render installed emoji sets (install them first: bash scripts/install_emoji_sources.sh), "
            "caption them from emojibase-data, split them (train / val / heldout_concept / heldout_style) "
            f"and write webdataset tar shards. Licences: {licences}."
        ),
    )
    parser.add_argument(
        "--styles",
        type=_styles,
        default=_DEFAULT.styles,
        metavar="LIST",
        help=f"comma-separated art styles (default: {','.join(_DEFAULT.styles)})",
    )
    parser.add_argument(
        "--size",
        type=int,
        choices=SIZES,
        default=_DEFAULT.size,
        help="tile side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: <cache>/emoji/build-<size>px)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=_DEFAULT.seed,
        help="backgrounds, captions and shard order (default: %(default)s)",
    )
    parser.add_argument(
        "--shard-size",
        type=_positive,
        default=_DEFAULT.shard_size,
        metavar="K",
        help="samples per shard (default: %(default)s)",
    )
    parser.add_argument(
        "--heldout-style",
        choices=list_styles(),
        default=None,
        help="keep one style out of training entirely (its images form the heldout_style split)",
    )
    parser.add_argument("--include-flags", action="store_true", help="also build the flags group")
    parser.add_argument("--include-components", action="store_true", help="also build the component group")
    parser.add_argument(
        "--no-style-captions",
        action="store_true",
        help='leave out captions naming the style ("... in 3D style")',
    )
    parser.add_argument(
        "--workers", type=_positive, default=None, help="render processes (default: CPUs, at most 4)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, then print the counts per style and split and the build time."""
    config = EmojiConfig(
        styles=args.styles,
        size=args.size,
        seed=args.seed,
        shard_size=args.shard_size,
        heldout_style=args.heldout_style,
        include_flags=args.include_flags,
        include_components=args.include_components,
        style_captions=not args.no_style_captions,
    )
    result = build_emoji(args.out, config, workers=args.workers)
    print(result.table())
    shards = sum(len(v) for v in result.shards.values())
    print(f"wrote {shards} shards to {result.out_dir} in {result.seconds:.1f} s")
    return 0
