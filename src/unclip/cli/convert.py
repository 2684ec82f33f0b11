"""``unclip convert``: pretrained checkpoints from other libraries into unclip model directories.

    unclip convert diffusers-unclip SRC_DIR OUT_DIR   # a diffusers UnCLIPPipeline (Karlo) directory
    unclip convert clip SRC_DIR OUT_DIR               # a transformers CLIP checkpoint directory

Nothing is downloaded: SRC_DIR is a folder already on disk (docs/karlo.md says where to get
Karlo). The converted directory runs through every other command (``generate --model OUT_DIR``,
``manipulate``, ``evaluate``, ``serve``) and needs neither diffusers nor the source folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from unclip.errors import UserError

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _out_dir(path: str, force: bool) -> Path:
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty; choose another OUT_DIR or pass --force")
    return out


def _diffusers_unclip(args: argparse.Namespace) -> int:
    from unclip.convert.diffusers_unclip import convert_diffusers_unclip

    out = convert_diffusers_unclip(
        args.src, _out_dir(args.out, args.force), dtype=_DTYPES[args.dtype], image_encoder=args.image_encoder
    )
    print(out)
    return 0


def _clip(args: argparse.Namespace) -> int:
    from unclip.convert.clip import convert_clip

    out = convert_clip(args.src, _out_dir(args.out, args.force), normalize=not args.raw)
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a diffusers unCLIP (Karlo) pipeline or a transformers CLIP into unclip's format",
        description=__doc__.split("\n\n")[0],
    )
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True, parser_class=type(p))
    d = kinds.add_parser(
        "diffusers-unclip",
        help="a diffusers UnCLIPPipeline / UnCLIPImageVariationPipeline directory (Karlo)",
        description="Writes a model directory: CLIP, prior, decoder and super-resolution stage, with "
        "Karlo's reference sampling settings as defaults (docs/karlo.md).",
    )
    d.add_argument(
        "src", metavar="SRC_DIR", help="the pipeline directory (model_index.json and component folders)"
    )
    d.add_argument("out", metavar="OUT_DIR", help="the model directory to write")
    d.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="storage dtype of the weights")
    d.add_argument(
        "--image-encoder",
        metavar="DIR",
        help="a CLIPVisionModelWithProjection folder (e.g. the image-variation pipeline's image_encoder/) "
        "to give a text-to-image pipeline's CLIP an image tower",
    )
    d.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    d.set_defaults(func=_diffusers_unclip)
    c = kinds.add_parser(
        "clip",
        help="a transformers CLIPModel checkpoint directory",
        description="Writes one CLIP component directory (usable as --clip, or as a model's clip).",
    )
    c.add_argument(
        "src", metavar="SRC_DIR", help="config.json + model.safetensors (or pytorch_model.bin) + tokenizer"
    )
    c.add_argument("out", metavar="OUT_DIR", help="the component directory to write")
    c.add_argument(
        "--raw",
        action="store_true",
        help="return unnormalised embeddings (as unCLIP models trained on them expect)",
    )
    c.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    c.set_defaults(func=_clip)
