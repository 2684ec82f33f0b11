"""`unclip vary | interpolate | mix | edit`: the paper's image manipulations (§3) from the CLI.

Each command checks its arguments and ``--out`` before the model loads, turns them into one job
(see :mod:`unclip.cli.generate`) and writes PNGs + ``manifest.json``. Inputs of ``interpolate``
and ``mix`` are images when they name an existing file, prompts otherwise
(:func:`unclip.cli.outputs.parse_item`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from unclip.cli import outputs as O
from unclip.cli.generate import (
    add_model_args,
    add_out_arg,
    check_common,
    check_prompts_fit,
    decoder_settings,
    load_pipeline,
    pick_seed,
    resolve_size,
    run_and_write,
)
from unclip.errors import UserError

if TYPE_CHECKING:
    from unclip.pipeline import UnCLIPPipeline

REFINE = 2  # fixed-point refinements per DDIM inversion step (unclip.manipulate.invert)


def _load(item: dict[str, Any]) -> Any:
    """A job input back as the pipeline takes it: a PIL image (sha256 checked) or a prompt."""
    got = O.item_from_json(item)
    return got.load() if isinstance(got, O.ImageRef) else got


def _decoder_kwargs(job: dict[str, Any], callback: Any) -> dict[str, Any]:
    return {
        "seed": job["seed"],
        "steps": job["decoder_steps"],
        "guidance_scale": job["decoder_guidance"],
        "upsampler_steps": job["upsampler_steps"],
        "precision": job["precision"],
        "callback": callback,
    }


def _prompts_of(items: list[O.ImageRef | str]) -> list[str]:
    return [i for i in items if isinstance(i, str)]


def _start(args: argparse.Namespace, prompts: list[str]) -> tuple[UnCLIPPipeline, dict[str, Any], Any, dict]:
    """Out folder, model, prompt lengths, resolved decoder settings and seed."""
    out = O.prepare_out_dir(args.out)
    pipe, model_record = load_pipeline(args.model)
    size = resolve_size(pipe, args.size)
    check_prompts_fit(pipe, prompts, getattr(args, "truncate", False))
    settings = {"seed": pick_seed(args.seed), **decoder_settings(pipe, args, size)}
    return pipe, model_record, out, settings


def _finish(pipe: UnCLIPPipeline, command: str, job: dict[str, Any], model_record: dict, out: Any) -> int:
    run_and_write(pipe, command, [job], model_record, O.OutputWriter(out, command))
    return 0


# ---------------------------------------------------------------------------- vary


def run_vary(pipe: UnCLIPPipeline, job: dict[str, Any], callback: Any) -> list[Any]:
    out = pipe.variations(
        _load(job["image"]),
        n=job["num_images"],
        eta=job["eta"],
        mode=job["mode"],
        refine=job["refine"],
        **_decoder_kwargs(job, callback),
    )
    return list(out.images)


def _vary(args: argparse.Namespace) -> int:
    check_common(args)
    O.check_int_range("--num-images", args.num_images, 1, O.MAX_IMAGES)
    O.check_float_range("--eta", args.eta, 0.0, 1.0)
    image = O.image_ref(args.image)
    pipe, model_record, out, settings = _start(args, [])
    job = {
        "image": image.to_json(),
        "num_images": args.num_images,
        "eta": args.eta,
        "mode": args.mode,
        "refine": REFINE,
        **settings,
    }
    return _finish(pipe, "vary", job, model_record, out)


# ---------------------------------------------------------------------------- interpolate


def run_interpolate(pipe: UnCLIPPipeline, job: dict[str, Any], callback: Any) -> list[Any]:
    out = pipe.interpolate(
        _load(job["a"]),
        _load(job["b"]),
        frames=job["frames"],
        x_T=job["latent"],
        refine=job["refine"],
        **_decoder_kwargs(job, callback),
    )
    return list(out.images)


def _interpolate(args: argparse.Namespace) -> int:
    check_common(args)
    O.check_int_range("--frames", args.frames, 2, O.MAX_FRAMES)
    a, b = O.parse_item(args.a), O.parse_item(args.b)
    pipe, model_record, out, settings = _start(args, _prompts_of([a, b]))
    job = {
        "a": O.item_json(a),
        "b": O.item_json(b),
        "frames": args.frames,
        "latent": args.latent,
        "refine": REFINE,
        **settings,
    }
    return _finish(pipe, "interpolate", job, model_record, out)


# ---------------------------------------------------------------------------- mix


def run_mix(pipe: UnCLIPPipeline, job: dict[str, Any], callback: Any) -> list[Any]:
    items = [_load(i) for i in job["items"]]
    out = pipe.mix(items, job["weights"], n=job["num_images"], **_decoder_kwargs(job, callback))
    return list(out.images)


def _mix(args: argparse.Namespace) -> int:
    check_common(args)
    O.check_int_range("--num-images", args.num_images, 1, O.MAX_IMAGES)
    items, weights = O.parse_weighted(args.items)
    pipe, model_record, out, settings = _start(args, _prompts_of(items))
    job = {
        "items": [O.item_json(i) for i in items],
        "weights": weights,
        "num_images": args.num_images,
        **settings,
    }
    return _finish(pipe, "mix", job, model_record, out)


# ---------------------------------------------------------------------------- edit


def run_edit(pipe: UnCLIPPipeline, job: dict[str, Any], callback: Any) -> list[Any]:
    out = pipe.text_diff(
        _load(job["image"]),
        to=job["to"],
        from_=job["from"],
        max_theta=job["max_theta"],
        frames=job["frames"],
        refine=job["refine"],
        **_decoder_kwargs(job, callback),
    )
    return list(out.images)


def _edit(args: argparse.Namespace) -> int:
    check_common(args)
    O.check_int_range("--frames", args.frames, 2, O.MAX_FRAMES)
    if not (0.0 < args.max_theta <= 1.0):  # also refuses nan
        raise UserError(f"--max-theta must be in (0, 1], got {args.max_theta:g}")
    to = O.check_prompt(args.to)
    from_ = args.from_.strip()
    image = O.image_ref(args.image)
    pipe, model_record, out, settings = _start(args, [to, from_] if from_ else [to])
    job = {
        "image": image.to_json(),
        "to": to,
        "from": from_,
        "max_theta": args.max_theta,
        "frames": args.frames,
        "refine": REFINE,
        **settings,
    }
    return _finish(pipe, "edit", job, model_record, out)


RUNNERS = {"vary": run_vary, "interpolate": run_interpolate, "mix": run_mix, "edit": run_edit}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vary",
        help="variations of an image (paper §3.1)",
        description="Decode the image's CLIP embedding (and inverted latent) with DDIM eta > 0.",
    )
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--num-images", type=int, default=4, metavar="N", help="variations to make (1-64)")
    p.add_argument("--eta", type=float, default=1.0, metavar="E", help="DDIM eta in [0, 1]: 0 reconstructs")
    p.add_argument(
        "--mode",
        choices=["inverted", "noise"],
        default="inverted",
        help="start from the image's inverted latent or from fresh noise",
    )
    add_model_args(p, prompts=False)
    add_out_arg(p, "vary")
    p.set_defaults(func=_vary)

    p = sub.add_parser(
        "interpolate",
        help="frames between two images or prompts (paper §3.2)",
        description="An argument naming an existing file is an image; anything else is a prompt.",
    )
    p.add_argument("a", metavar="A", help="image file or prompt")
    p.add_argument("b", metavar="B", help="image file or prompt")
    p.add_argument("--frames", type=int, default=5, metavar="K", help="frames, endpoints included (2-256)")
    p.add_argument(
        "--latent",
        choices=["fixed", "interpolate"],
        default="fixed",
        help="decoder latent: A's (fixed) or slerped between A's and B's",
    )
    add_model_args(p)
    add_out_arg(p, "interpolate")
    p.set_defaults(func=_interpolate)

    p = sub.add_parser(
        "mix",
        help="decode a weighted mix of images and prompts",
        description="ITEM:WEIGHT arguments (split on the last colon); weights for all items or none.",
    )
    p.add_argument("items", nargs="+", metavar="ITEM:W", help="image file or prompt, with a weight")
    p.add_argument("--num-images", type=int, default=1, metavar="N", help="images of the mix (1-64)")
    add_model_args(p)
    add_out_arg(p, "mix")
    p.set_defaults(func=_mix)

    p = sub.add_parser(
        "edit",
        help="edit an image toward a caption with a text diff (paper §3.3)",
        description="Frames slerp the image's embedding toward normalise(z_t(TO) - z_t(FROM)).",
    )
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--to", required=True, metavar="TEXT", help="caption of the target")
    p.add_argument("--from", dest="from_", default="", metavar="TEXT", help="caption of the image as it is")
    p.add_argument("--max-theta", type=float, default=0.5, metavar="T", help="largest slerp angle in (0, 1]")
    p.add_argument("--frames", type=int, default=5, metavar="K", help="frames (2-256)")
    add_model_args(p)
    add_out_arg(p, "edit")
    p.set_defaults(func=_edit)
