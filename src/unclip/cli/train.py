"""`unclip train {clip,...}`: train one stage.

Each stage is one small ``_add_<stage>(sub)`` function that adds its parser (usually on top of
:func:`add_common_args`) and sets ``func``; register it in ``_STAGES``. The shared flags (data,
out, preset/config, steps, batch size, lr, precision, resume, seed, cadence) mean the same thing
for every stage and map onto :class:`unclip.train.config.TrainConfig`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unclip.errors import UserError

logger = logging.getLogger(__name__)


def add_common_args(parser: argparse.ArgumentParser, default_preset: str | None) -> None:
    """Flags every `unclip train STAGE` shares."""
    parser.add_argument(
        "--data", required=True, help="shapes[:SIZE], synthetic[:N], an image-caption folder, or shards"
    )
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, the trained model)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", default=default_preset, help=f"named preset (default: {default_preset})")
    src.add_argument("--config", help="JSON file shaped like a preset: {'model': {...}, 'train': {...}}")
    parser.add_argument("--steps", type=int, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, help="samples per optimizer step")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup", type=int, help="warmup steps")
    parser.add_argument("--ema-decay", type=float, help="EMA decay (0 = off)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="autocast precision")
    parser.add_argument("--seed", type=int, help="seed for init, data order and RNG")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, help="steps between log rows")
    parser.add_argument("--sample-every", type=int, help="steps between samples/quick evals (0 = off)")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="train for about this long: the schedule shrinks to the steps that fit (<= --steps)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="decoder, upsampler: torch.compile the denoiser (a minute or more per input shape to compile)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="data loading worker processes (they also render the shapes world: use several on a GPU)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="save and stop at STEP, keeping the schedule of --steps (continue later with --resume)",
    )
    parser.add_argument(
        "--init-from",
        metavar="DIR",
        help="start from the weights of a trained component directory (e.g. RUN/decoder): fine-tuning",
    )


_FLAG_TO_FIELD = {
    "steps": "steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "lr": "lr",
    "warmup": "warmup",
    "ema_decay": "ema_decay",
    "precision": "precision",
    "seed": "seed",
    "save_every": "save_every",
    "log_every": "log_every",
    "sample_every": "sample_every",
    "time_budget": "time_budget",
    "compile": "compile",
}


_ACCELERATE_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def resolve_recipe(args: argparse.Namespace, kind: str) -> tuple[dict[str, Any], Any]:
    """(model config dict, TrainConfig) from --preset/--config plus the flag overrides."""
    from unclip.presets import get_preset, load_preset_file
    from unclip.train.config import TrainConfig

    # --compile compiles the module's own forward, which only the diffusion stages' losses call.
    if getattr(args, "compile", None) and kind not in ("decoder", "upsampler"):
        raise UserError(f"--compile applies to decoder and upsampler training, not {kind.replace('_', ' ')}")
    if getattr(args, "stop_at", None) is not None and args.stop_at < 1:
        raise UserError(f"--stop-at must be a step >= 1, got {args.stop_at}")
    if args.config:
        recipe = load_preset_file(args.config)
    elif args.preset:
        recipe = get_preset(args.preset)
    else:
        raise UserError("give --preset NAME or --config FILE")
    if recipe.get("kind", kind) != kind:
        raise UserError(f"preset is for {recipe.get('kind')!r}, not {kind!r}")
    train = dict(recipe.get("train", {}))
    # `accelerate launch --mixed_precision X` (or `accelerate config`) sets this; --precision wins.
    accel = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if accel:
        if accel not in _ACCELERATE_PRECISION:
            raise UserError(f"ACCELERATE_MIXED_PRECISION={accel!r}: unclip trains in no, bf16 or fp16")
        train["precision"] = _ACCELERATE_PRECISION[accel]
    for flag, field in _FLAG_TO_FIELD.items():
        value = getattr(args, flag, None)
        if value is not None:
            train[field] = value
    return recipe.get("model", {}), TrainConfig.from_dict(train)


def _report(result: Any, out: Path, what: str, stop_at: int | None = None) -> int:
    from unclip.train.loop import is_main_process

    if not is_main_process():  # one report per job, from rank 0
        return 130 if result.interrupted and result.step != stop_at else 0
    mins = result.train_seconds / 60
    if result.interrupted and result.step == stop_at:
        print(
            f"stopped at step {result.step} (--stop-at); checkpoint saved in {out} (continue with --resume)"
        )
        return 0
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint saved in {out} (continue with --resume)")
        return 130
    print(
        f"trained {what} for {result.step} steps ({mins:.1f} min, {result.images_per_second:.0f} img/s): {out}"
    )
    return 0


def _run_clip(args: argparse.Namespace) -> int:
    from unclip.clip.config import ClipConfig
    from unclip.train.clip import EXPORT_DIR, train_clip

    model_dict, train_config = resolve_recipe(args, "clip")
    model_config = ClipConfig.from_dict(model_dict)
    out = Path(args.out)
    result = train_clip(
        model_config,
        train_config,
        args.data,
        out,
        resume=args.resume,
        stop_at=args.stop_at,
        init_from=args.init_from,
        num_workers=args.workers,
        device=args.device,
        counterfactual=not args.no_counterfactual,
        aux_weight=args.aux_attributes,
        aux_shape_weight=args.aux_shape_weight,
        aux_background_weight=args.aux_background_weight,
        probe_first=args.probe_first,
        background_edits=args.background_edits,
        freeze_image=args.freeze_image,
    )
    return _report(result, out / EXPORT_DIR, "CLIP", args.stop_at)


def _add_clip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clip",
        help="contrastive CLIP (image + text towers)",
        description="Train our CLIP with symmetric InfoNCE (paper App. C). The model is written to OUT/clip/.",
    )
    add_common_args(p, default_preset="clip-shapes-resnet")
    p.add_argument(
        "--no-counterfactual",
        action="store_true",
        help="shapes world: plain random batches instead of half one-attribute edits (see docs/clip.md)",
    )
    p.add_argument(
        "--aux-attributes",
        type=float,
        default=0.0,
        metavar="W",
        help="shapes world: add W x an auxiliary loss predicting each grid cell's object from the image "
        "embedding (breaks contrastive learning's slow start on shape and position; see docs/clip.md)",
    )
    p.add_argument(
        "--aux-shape-weight",
        type=float,
        default=1.0,
        metavar="K",
        help="weight of the probe's shape term relative to colour, size and fill (default 1)",
    )
    p.add_argument(
        "--aux-background-weight",
        type=float,
        default=0.0,
        metavar="K",
        help="with --aux-attributes: also predict the background colour, weighted K relative to colour "
        "(default 0: off; puts the background into the image embedding; see docs/clip.md)",
    )
    p.add_argument(
        "--probe-first",
        type=int,
        default=0,
        metavar="N",
        help="with --aux-attributes: train the image tower on the probe alone for the first N steps, "
        "then add InfoNCE (puts shape into the tower first; see docs/clip.md)",
    )
    p.add_argument(
        "--background-edits",
        type=float,
        default=0.0,
        metavar="F",
        help="shapes world: fraction F of the counterfactual edits that change the background, both "
        "captions naming it (default 0; teaches the text tower the background; see docs/clip.md)",
    )
    p.add_argument(
        "--freeze-image",
        action="store_true",
        help="with --init-from: train the text tower only, so the image embeddings (and a decoder "
        "trained on them) stay valid",
    )
    p.set_defaults(func=_run_clip)


def _run_prior(args: argparse.Namespace) -> int:
    from unclip.train.prior import EXPORT_DIR, train_prior

    if not args.preset and not args.config:
        args.preset = f"prior-{args.kind}-shapes"
    model_dict, train_config = resolve_recipe(args, f"{args.kind}_prior")
    out = Path(args.out)
    result = train_prior(
        args.kind,
        model_dict,
        train_config,
        args.data,
        out,
        resume=args.resume,
        stop_at=args.stop_at,
        init_from=args.init_from,
        val_size=args.val_size,
        pca_variance=args.pca_variance,
        device=args.device,
    )
    return _report(result, out / EXPORT_DIR, f"{args.kind} prior", args.stop_at)


def _add_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prior",
        help="diffusion or autoregressive prior (text -> CLIP image embedding)",
        description="Train a prior (paper §2.2) on CLIP embedding shards written by `unclip embed` "
        "(--data is that folder). The model is written to OUT/prior/. See docs/priors.md.",
    )
    add_common_args(p, default_preset=None)
    p.add_argument(
        "--kind", choices=["diffusion", "ar"], default="diffusion", help="which prior (default: diffusion)"
    )
    p.add_argument(
        "--val-size", type=int, default=1000, help="samples held out at the end of --data for validation"
    )
    p.add_argument(
        "--pca-variance", type=float, default=0.99, help="AR prior: variance the kept PCA components retain"
    )
    p.set_defaults(func=_run_prior)


def _unet_recipe(args: argparse.Namespace, stage: str) -> tuple[dict[str, Any], Any]:
    """The decoder's or upsampler's recipe, with --fp32 turning off bf16 and channels_last."""
    model_dict, train_config = resolve_recipe(args, stage)
    if args.fp32:
        train_config = train_config.replace(precision="fp32", channels_last=False)
    return model_dict, train_config


def _unet_run_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments the decoder and upsampler trainers share."""
    return {
        "resume": args.resume,
        "stop_at": args.stop_at,
        "init_from": args.init_from,
        "eval_samples": args.eval_samples,
        "sample_steps": args.sample_steps,
        "gradient_checkpointing": args.grad_checkpointing,
        "num_workers": args.workers,
        "device": args.device,
    }


def _run_decoder(args: argparse.Namespace) -> int:
    from unclip.train.decoder import EXPORT_DIR, train_decoder

    model_dict, train_config = _unet_recipe(args, "decoder")
    out = Path(args.out)
    result = train_decoder(
        model_dict,
        train_config,
        args.data,
        out,
        clip=args.clip,
        guidance_scale=args.guidance,
        **_unet_run_args(args),
    )
    return _report(result, out / EXPORT_DIR, "decoder", args.stop_at)


def _add_decoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decoder",
        help="diffusion decoder (CLIP image embedding + caption -> image)",
        description="Train the unCLIP decoder (paper §2.1) with a frozen CLIP: --clip DIR computes "
        "embeddings on the fly, or --data names embedding shards of the shapes world (unclip embed). "
        "The model is written to OUT/decoder/. See docs/decoder.md.",
    )
    add_common_args(p, default_preset="decoder-shapes")
    p.add_argument("--clip", help="frozen CLIP directory (ours or a transformers CLIP)")
    _add_unet_args(p, eval_default=32, steps_default="25")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale of the periodic samples")
    p.set_defaults(func=_run_decoder)


def _run_upsampler(args: argparse.Namespace) -> int:
    from unclip.train.upsampler import EXPORT_DIR, train_upsampler

    model_dict, train_config = _unet_recipe(args, "upsampler")
    out = Path(args.out)
    result = train_upsampler(
        model_dict, train_config, args.data, out, crops_per_image=args.crops_per_image, **_unet_run_args(args)
    )
    return _report(result, out / EXPORT_DIR, "upsampler", args.stop_at)


def _add_upsampler(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upsampler",
        help="diffusion upsampler (low-res image -> high-res image)",
        description="Train a convolution-only diffusion upsampler (paper §2.1, App. C) on random crops "
        "a quarter of the target side. The model is written to OUT/upsampler/. See docs/decoder.md.",
    )
    add_common_args(p, default_preset="upsampler-32-128")
    _add_unet_args(p, eval_default=16, steps_default="27")
    p.add_argument("--crops-per-image", type=int, default=4, help="training crops cut from each image")
    p.set_defaults(func=_run_upsampler)


def _add_unet_args(p: argparse.ArgumentParser, eval_default: int, steps_default: str) -> None:
    """Flags the two UNet stages share."""
    p.add_argument("--fp32", action="store_true", help="fp32 without channels_last (default: bf16 autocast)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--eval-samples", type=int, default=eval_default, help="held-out images per sampling")
    p.add_argument("--sample-steps", default=steps_default, help="sampler steps of the periodic samples")


# Stages in the order `unclip train --help` lists them; each adds one subparser.
_STAGES: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_clip,
    _add_prior,
    _add_decoder,
    _add_upsampler,
]


def _launched(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a stage inside the process group a launcher (torchrun, accelerate launch) asked for."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from unclip.train.distributed import init_distributed, shutdown_distributed

        init_distributed()
        try:
            return func(args)
        finally:
            shutdown_distributed()

    return run


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a stage: clip, prior, decoder, upsampler")
    inner = parser.add_subparsers(dest="stage", metavar="STAGE", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help())
    for add in _STAGES:
        add(inner)
    for stage_parser in inner.choices.values():
        stage_parser.set_defaults(func=_launched(stage_parser.get_default("func")))


def add_stage(add: Callable[[argparse._SubParsersAction], None]) -> None:
    """Append a stage's parser-adding function (for stages defined outside this file)."""
    _STAGES.append(add)


__all__ = ["add_common_args", "add_stage", "register", "resolve_recipe"]
