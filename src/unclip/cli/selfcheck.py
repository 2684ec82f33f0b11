"""`unclip selfcheck`: run every sampler on an exactly solvable diffusion and report its errors."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unclip.errors import UserError

log = logging.getLogger(__name__)

_MAX_SAMPLES = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "selfcheck",
        help="verify every sampler against the exact Gaussian denoiser (table + figure)",
        description=(
            "Run every sampler on data ~ N(mu, diag(s^2)), whose optimal denoiser is closed form, "
            "print mean / variance / exact-flow errors per sampler and step count, and write a "
            "figure. Exit status 1 if a sampler is less accurate than when it was verified."
        ),
    )
    parser.add_argument(
        "--out", default="selfcheck", help="output directory for selfcheck.png (default: %(default)s)"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=10_000,
        help="samples per run; more means less Monte Carlo noise (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="only the checked step counts (a few seconds)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 2 <= args.num_samples <= _MAX_SAMPLES:
        raise UserError(f"--num-samples must be between 2 and {_MAX_SAMPLES}, got {args.num_samples}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")

    from unclip.selfcheck import format_table, plot_report, run_selfcheck

    report = run_selfcheck(num_samples=args.num_samples, seed=args.seed, quick=args.quick)
    print(f"exact Gaussian denoiser, cosine schedule T=1000, eps-prediction, float32, N={args.num_samples}")
    print(f"data std per dim: {', '.join(f'{s:g}' for s in report.data.std)}")
    print("mean err: max |mean - mu|; var err: max |var / s^2 - 1|; flow err: RMS (x - exact ODE) / s")
    print(format_table(report.runs))
    if not args.no_plot:
        try:
            path = plot_report(report, out / "selfcheck.png")
        except ModuleNotFoundError as e:
            if e.name != "matplotlib":
                raise
            log.warning("matplotlib is not installed; no figure (pip install 'unclip[eval]')")
        else:
            print(f"wrote {path}")
    if report.failures:
        for line in report.failures:
            print(f"FAIL {line}", file=sys.stderr)
        print(f"selfcheck: {len(report.failures)} of {report.checked} checks failed", file=sys.stderr)
        return 1
    print(f"selfcheck: all {report.checked} checks passed")
    return 0
