"""`unclip evaluate`: measure a model the way the paper does, suite by suite.

Today: ``--clip M --suite shapes|emoji`` evaluates a CLIP alone (retrieval, zero-shot
attributes, binding). Whole-model suites (``--model M``) plug into the same command: add a
function to ``_MODEL_SUITES``. Results go to ``--out`` as results.json + results.md and the table
is printed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unclip.errors import UserError

logger = logging.getLogger(__name__)


def _clip_shapes(clip: Any, args: argparse.Namespace) -> dict[str, Any]:
    from unclip.eval.clip_eval import evaluate_shapes

    return evaluate_shapes(clip, n=args.n or 1000, seed=args.seed)


def _clip_emoji(clip: Any, args: argparse.Namespace) -> dict[str, Any]:
    from unclip.eval.clip_eval import evaluate_emoji

    if not args.data:
        raise UserError("the emoji suite needs --data DIR (an emoji build from `unclip data emoji`)")
    return evaluate_emoji(clip, args.data, limit=args.n)


# (suite name) -> function(encoder, args) -> results dict
_CLIP_SUITES: dict[str, Callable[[Any, argparse.Namespace], dict[str, Any]]] = {
    "shapes": _clip_shapes,
    "emoji": _clip_emoji,
}
# Whole-model suites: (suite name) -> function(model_dir, args) -> results dict.
_MODEL_SUITES: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {}


def _run(args: argparse.Namespace) -> int:
    from unclip.eval.clip_eval import markdown_report, write_report

    if args.prior:  # priors are evaluated with the CLIP they were trained on (docs/priors.md)
        from unclip.eval.prior_eval import run_from_args

        return run_from_args(args)
    if bool(args.clip) == bool(args.model):
        raise UserError("give exactly one of --clip DIR or --model DIR")
    if args.clip:
        if args.suite not in _CLIP_SUITES:
            raise UserError(f"unknown CLIP suite {args.suite!r}; choose from {', '.join(_CLIP_SUITES)}")
        from unclip.clip import load_encoder

        clip = load_encoder(args.clip)
        results = _CLIP_SUITES[args.suite](clip, args)
        results["clip"] = str(args.clip)
    else:
        if args.suite not in _MODEL_SUITES:
            known = ", ".join(_MODEL_SUITES) or "none yet"
            raise UserError(f"no whole-model suite {args.suite!r} (available: {known})")
        results = _MODEL_SUITES[args.suite](Path(args.model), args)
        results["model"] = str(args.model)
    print(markdown_report(results))
    if args.out:
        js, md = write_report(results, args.out)
        print(f"wrote {js} and {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a CLIP or a whole model on a suite (shapes, emoji, ...)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--clip", help="a CLIP directory (ours, or a transformers CLIP)")
    target.add_argument("--model", help="a whole unCLIP model directory")
    p.add_argument("--prior", action="append", help="a prior directory (repeat to compare; needs --clip)")
    p.add_argument("--suite", required=True, help="shapes or emoji")
    p.add_argument("--data", help="dataset the suite needs (the emoji build directory)")
    p.add_argument("--out", help="folder for results.json and results.md")
    p.add_argument("--n", type=int, help="samples per measurement (default: suite's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated evaluation scenes")
    p.set_defaults(func=_run)
