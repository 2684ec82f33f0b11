"""`unclip evaluate`: measure a model the way the paper does, suite by suite.

``--clip M --suite shapes|emoji`` evaluates a CLIP alone (retrieval, zero-shot attributes,
binding); results go to ``--out`` as results.json + results.md and the table is printed.
``--model M --suite shapes [--quick]`` runs the whole-model suite (:mod:`unclip.eval.shapes_suite`)
and writes results.json, report.md, plots and sample grids into ``--out``. Add whole-model suites
to ``_MODEL_SUITES``.
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


def _model_shapes(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The whole-model shapes suite; writes its own report (results.json, report.md, plots, grids)."""
    from unclip.eval.report import write_report
    from unclip.eval.shapes_suite import evaluate_model

    if not args.out:
        raise UserError("the whole-model suite writes a report folder: give --out DIR")
    results, artefacts = evaluate_model(str(model), quick=args.quick, seed=args.seed, n=args.n)
    return write_report(results, artefacts, args.out)


def _model_emoji(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The whole-model emoji suite, judged by an independent CLIP (unclip.eval.emoji_suite)."""
    from unclip.eval.emoji_suite import evaluate_emoji_model, write_emoji_report

    if not args.out:
        raise UserError("the whole-model suite writes a report folder: give --out DIR")
    if not args.data:
        raise UserError("the emoji suite needs --data DIR (an emoji build from `unclip data emoji`)")
    if not args.eval_clip:
        raise UserError("the emoji suite needs --eval-clip DIR: a CLIP trained separately from the model's")
    results, artefacts = evaluate_emoji_model(
        str(model), args.data, args.eval_clip, quick=args.quick, seed=args.seed, n=args.n
    )
    return write_emoji_report(results, artefacts, args.out)


# Whole-model suites: (suite name) -> function(model_dir, args) -> results dict. They write their
# own report into --out (results.json, report.md, plots, grids) and include "files".
_MODEL_SUITES: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "shapes": _model_shapes,
    "emoji": _model_emoji,
}


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
        if results.get("suite") == "emoji":
            from unclip.eval.emoji_suite import markdown_report as model_markdown
        else:
            from unclip.eval.report import markdown_report as model_markdown

        print(model_markdown(results))
        print(f"wrote {', '.join(results['files'])} to {args.out}")
        return 0
    print(markdown_report(results))
    if args.out:
        js, md = write_report(results, args.out)
        print(f"wrote {js} and {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a CLIP or a whole model on a suite (shapes, emoji, ...)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--clip", help="a CLIP directory (ours, or a transformers CLIP)")
    target.add_argument("--model", help="a whole unCLIP model: bundle name or model directory")
    p.add_argument("--prior", action="append", help="a prior directory (repeat to compare; needs --clip)")
    p.add_argument("--suite", required=True, help="shapes or emoji")
    p.add_argument("--data", help="dataset the suite needs (the emoji build directory)")
    p.add_argument(
        "--eval-clip", help="emoji model suite: the judging CLIP, trained separately from the model's CLIP"
    )
    p.add_argument("--out", help="folder for results.json and results.md")
    p.add_argument("--n", type=int, help="samples per measurement (default: suite's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated evaluation scenes")
    p.add_argument(
        "--quick", action="store_true", help="whole-model suites: the few-minute CPU run (docs/evaluation.md)"
    )
    p.set_defaults(func=_run)
