"""`unclip data ...`: build datasets (the shapes world, the emoji corpus)."""

from __future__ import annotations

import argparse
import importlib

# One module per dataset; each exposes register(subparsers).
_DATASETS: tuple[str, ...] = ("data_shapes", "data_emoji")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="build datasets: shapes world, emoji corpus")
    inner = parser.add_subparsers(dest="dataset", metavar="DATASET", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help())
    for name in _DATASETS:
        try:
            module = importlib.import_module(f"unclip.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("unclip"):
                continue  # dataset not built into this version
            raise
        module.register(inner)
