"""The `unclip` command line.

Each subcommand lives in its own module under ``unclip.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a handler taking the parsed
arguments. Handlers raise :class:`unclip.errors.UserError` for bad input: the command then prints
one line on stderr and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from unclip import __version__
from unclip.errors import UserError

# Subcommand modules, in the order `--help` lists them. A module that fails to import because an
# optional extra is missing is still listed, and says which extra to install when called.
_COMMANDS: tuple[str, ...] = (
    "selfcheck",
    "data",
    "train",
    "embed",
    "evaluate",
    "generate",
    "manipulate",
    "inspect",
    "convert",
    "serve",
)


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 2 and a one-line message on bad arguments."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unclip",
        description="unCLIP (DALL-E 2): text -> CLIP prior -> diffusion decoder -> upsamplers.",
    )
    parser.add_argument("--version", action="version", version=f"unclip {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        module = importlib.import_module(f"unclip.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unclip` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if args.quiet:
        os.environ["UNCLIP_QUIET"] = "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except UserError as e:
        print(f"unclip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        extra = _extra_for(e.name or "")
        hint = f"; install it with: pip install 'unclip[{extra}]'" if extra else ""
        print(f"unclip {args.command}: error: missing dependency {e.name}{hint}", file=sys.stderr)
        return 2
    return int(result or 0)


def _extra_for(module: str) -> str:
    root = module.split(".")[0]
    return {
        "matplotlib": "eval",
        "scipy": "eval",
        "tokenizers": "train",
        "webdataset": "train",
        "accelerate": "train",
        "fastapi": "serve",
        "uvicorn": "serve",
        "transformers": "adapters",
    }.get(root, "")
