"""`unclip embed`: precompute CLIP embeddings of a dataset into embedding shards.

The prior and decoder train on these (CLIP is frozen for them, paper Fig. 2). Each sample stores
``image_emb (D)``, ``text_emb (D)``, ``text_tokens (L, W)``, ``text_mask (L)``, ``caption`` and
``key``; shapes-world samples add ``spec`` (the scene's JSON) so evaluation can score exactly.
Interrupted jobs continue where the shards end (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from unclip.errors import UserError

logger = logging.getLogger(__name__)


def embed_dataset(
    clip: Any,
    data: str,
    out: str | Path,
    batch_size: int = 256,
    limit: int | None = None,
    split: str = "train",
    resume: bool = False,
    shard_size: int = 10_000,
    float_dtype: str = "float16",
    seed: int = 0,
    num_workers: int = 0,
) -> int:
    """Embed ``data`` with ``clip`` into ``out``. Returns the number of samples in ``out``.

    Args:
        clip: a :class:`unclip.clip.interface.ClipEncoder`.
        data: a ``--data`` spec (see :mod:`unclip.train.data`).
        out: the embedding folder (:class:`unclip.data.embeddings.EmbeddingShardWriter`).
        batch_size: samples per CLIP forward.
        limit: samples to embed in total (required for the endless shapes stream).
        split: split of an emoji build or of the shapes world.
        resume: continue an interrupted job in ``out``.
        shard_size: samples per shard file.
        float_dtype: storage dtype of the float fields.
        seed: shapes stream seed.
        num_workers: worker processes rendering/loading batches ahead.
    """
    from unclip.data.embeddings import EmbeddingShardWriter
    from unclip.progress import progress
    from unclip.train.data import iter_ordered

    with EmbeddingShardWriter(out, shard_size=shard_size, resume=resume, float_dtype=float_dtype) as writer:  # type: ignore[arg-type]
        start = writer.num_existing
        if limit is not None and start >= limit:
            return start
        batches = iter_ordered(
            data,
            clip.image_size,
            batch_size,
            start=start,
            limit=limit,
            split=split,
            seed=seed,
            num_workers=num_workers,
        )
        bar = progress(total=limit, initial=start, desc="embed", unit="img")
        with bar, torch.inference_mode():
            for batch in batches:
                enc = clip.encode_text(batch["caption"])
                fields: dict[str, Any] = {
                    "image_emb": clip.encode_image(batch["image"]),
                    "text_emb": enc.text_emb,
                    "text_tokens": enc.text_tokens,
                    "text_mask": enc.text_mask,
                    "caption": list(batch["caption"]),
                    "key": [str(k) for k in batch["key"]],
                }
                if "spec" in batch:
                    fields["spec"] = [json.dumps(_spec_dict(s), sort_keys=True) for s in batch["spec"]]
                writer.write(fields)
                bar.update(len(batch["caption"]))
        return writer.num_written


def _spec_dict(spec: Any) -> Any:
    return spec.to_dict() if hasattr(spec, "to_dict") else spec


def _run(args: argparse.Namespace) -> int:
    from unclip.clip import load_encoder

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    from unclip.nn.precision import resolve_device

    clip = load_encoder(args.clip, device=str(resolve_device(args.device)))
    n = embed_dataset(
        clip,
        args.data,
        args.out,
        batch_size=args.batch_size,
        limit=args.limit,
        split=args.split,
        resume=args.resume,
        shard_size=args.shard_size,
        float_dtype=args.dtype,
        seed=args.seed,
        num_workers=args.workers,
    )
    print(f"{n} embeddings in {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="precompute CLIP embeddings of a dataset (for prior/decoder training)",
        description="Write image_emb, text_emb, text_tokens, text_mask, caption and key (+ shapes scene spec) shards.",
    )
    p.add_argument("--clip", required=True, help="CLIP model directory (ours, or a transformers CLIP)")
    p.add_argument(
        "--data", required=True, help="shapes[:SIZE], synthetic[:N], an emoji build, a folder, or shards"
    )
    p.add_argument("--out", required=True, help="output folder of embedding shards")
    p.add_argument("--batch-size", type=int, default=256, help="samples per CLIP forward")
    p.add_argument("--limit", type=int, help="samples to embed (required for shapes)")
    p.add_argument("--split", default="train", help="split of an emoji build or the shapes world")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard file")
    p.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float16", help="storage dtype"
    )
    p.add_argument("--seed", type=int, default=0, help="shapes stream seed")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes rendering shapes-world batches ahead (0: render here)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted job in --out")
    p.set_defaults(func=_run)
