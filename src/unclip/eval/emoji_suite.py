"""The whole-model emoji suite: caption fidelity and realism judged by an independent CLIP.

``unclip evaluate --model M --suite emoji --data EMOJI_BUILD --eval-clip CLIP [--quick] --out DIR``

The emoji corpus has no pixel oracle, so an **evaluation CLIP** does the judging. It must be
trained separately from the model's own CLIP (a different seed or the other text tower, docs/clip.md):
a generator is always scored well by the encoder it was conditioned on. The suite refuses an
evaluation CLIP whose image embeddings equal the model's.

Per split of the build (``val``: seen concepts, unseen images; ``heldout_concept``; ``heldout_style``),
one image is generated for each of ``n`` images' first caption, at the model's defaults, and scored:

* **CLIP score**: 100 x mean cosine between the generated image and its caption in the evaluation
  CLIP (Hessel et al. 2021 without the 2.5 weight and the clip at 0), next to the same number for
  the real images of those captions;
* **R-precision**: how often the image's own caption ranks first among all distinct captions of
  the split (R = 1), for generated and for real images;
* **FD**: Fréchet distance between the evaluation CLIP's image embeddings of the generated and of
  the real images, with the FD between two halves of the real images as the small-sample floor.

Sample grids (real row, generated rows) go with the report for a fixed set of captions.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unclip.errors import UserError
from unclip.eval.metrics import frechet_distance
from unclip.progress import progress

logger = logging.getLogger(__name__)

SPLITS = ("val", "heldout_concept", "heldout_style")
QUICK_N, FULL_N = 24, 200
GRID_PROMPTS = 8
BATCH = 16


def check_independent(model_clip: Any, eval_clip: Any) -> None:
    """Refuse an evaluation CLIP that is the model's own (same image embeddings on a probe batch)."""
    if model_clip.embed_dim != eval_clip.embed_dim or model_clip.image_size != eval_clip.image_size:
        return
    probe = torch.rand(
        4, 3, eval_clip.image_size, eval_clip.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        a = model_clip.encode_image(probe * 2 - 1).float()
        b = eval_clip.encode_image(probe * 2 - 1).float()
    if torch.allclose(a, b, atol=1e-4):
        raise UserError(
            "--eval-clip is the model's own CLIP: the emoji suite needs a CLIP trained separately "
            "(another seed or text tower), or the generator grades itself"
        )


def _to_signed(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] pipeline output -> [-1, 1] as the CLIP interface expects."""
    return images.float() * 2 - 1


def _encode_images(clip: Any, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [clip.encode_image(images[i : i + 64]).float().cpu() for i in range(0, len(images), 64)]
        )


def _encode_texts(clip: Any, captions: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [
                clip.encode_text(captions[i : i + 64]).text_emb.float().cpu()
                for i in range(0, len(captions), 64)
            ]
        )


def fidelity(
    image_emb: torch.Tensor, captions: list[str], caption_emb: dict[str, torch.Tensor]
) -> dict[str, float]:
    """CLIP score (100 x mean cosine to the own caption) and R-precision (R=1) among ``caption_emb``.

    Args:
        image_emb: (N, D) image embeddings.
        captions: the N captions (keys of ``caption_emb``).
        caption_emb: every distinct caption of the split -> (D,) embedding.
    """
    names = list(caption_emb)
    bank = F.normalize(torch.stack([caption_emb[c] for c in names]), dim=-1)  # (C, D)
    img = F.normalize(image_emb, dim=-1)
    own = torch.tensor([names.index(c) for c in captions])
    sim = img @ bank.T  # (N, C)
    score = sim[torch.arange(len(captions)), own]
    return {
        "clip_score": float(100 * score.mean()),
        "r_precision": float((sim.argmax(1) == own).float().mean()),
        "num_captions": len(names),
    }


def evaluate_emoji_model(
    model: str,
    data: str | Path,
    eval_clip: str,
    *,
    quick: bool = False,
    seed: int = 0,
    n: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the suite. Returns (results, artefacts) for :func:`write_emoji_report`."""
    from unclip.clip import load_encoder
    from unclip.data.emoji import load_emoji_split, read_manifest
    from unclip.pipeline import UnCLIPPipeline

    if not Path(data).is_dir():
        raise UserError(f"emoji build not found: {data} (make one with `unclip data emoji`)")
    manifest = read_manifest(data)
    pipe = UnCLIPPipeline.from_pretrained(model)
    judge = load_encoder(eval_clip)
    check_independent(pipe.clip, judge)
    n = n or (QUICK_N if quick else FULL_N)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "suite": "emoji",
        "model": str(model),
        "eval_clip": str(eval_clip),
        "data": str(data),
        "quick": quick,
        "seed": seed,
        "n": n,
        "settings": "pipeline defaults, one image per caption, seeds seed + i",
        "splits": {},
    }
    artefacts: dict[str, Any] = {"grids": {}}
    for split in SPLITS:
        if split not in manifest.get("shards", {}):
            continue
        samples = load_emoji_split(data, split, limit=n)
        if not samples:
            continue
        captions = [s.captions[0] for s in samples]
        real = (
            torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        )
        gen = []
        for i in progress(range(0, len(captions), BATCH), desc=f"emoji {split}", unit="batch"):
            out = pipe(captions[i : i + BATCH], seed=seed + i, output_type="pt")
            gen.append(_to_signed(out.images))
        generated = torch.cat(gen)
        gen_emb, real_emb = _encode_images(judge, generated), _encode_images(judge, real)
        distinct = list(dict.fromkeys(captions))
        cap_emb = dict(zip(distinct, _encode_texts(judge, distinct)))
        half = len(real_emb) // 2
        row = {
            "n": len(captions),
            "generated": fidelity(gen_emb, captions, cap_emb),
            "real": fidelity(real_emb, captions, cap_emb),
            "fd": frechet_distance(gen_emb.numpy(), real_emb.numpy()),
            "fd_real_halves": frechet_distance(real_emb[:half].numpy(), real_emb[half:].numpy())
            if half >= 2
            else None,
        }
        results["splits"][split] = row
        k = min(GRID_PROMPTS, len(captions))
        side = generated.shape[-1]
        real_up = F.interpolate(real[:k], size=side, mode="bilinear", antialias=True, align_corners=False)
        artefacts["grids"][split] = ({"real": real_up, "generated": generated[:k]}, captions[:k])
        logger.info("emoji %s: %s", split, row)
    if not results["splits"]:
        raise UserError(f"{data} has none of the splits {', '.join(SPLITS)}")
    results["seconds"] = time.perf_counter() - t0
    return results, artefacts


def markdown_report(r: dict[str, Any]) -> str:
    """The report's tables."""

    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if pct else f"{v:.1f}"

    lines = [
        f"# Emoji suite: {r['model']}",
        "",
        f"Judged by the evaluation CLIP `{r['eval_clip']}` (trained separately from the model's CLIP). "
        f"{r['n']} captions per split ({'quick' if r['quick'] else 'full'} mode), seed {r['seed']}, "
        f"{r['settings']}; {r.get('seconds', 0):.0f} s.",
        "",
        "| split | n | CLIP score gen | CLIP score real | R-prec gen % | R-prec real % | captions | FD gen-real | FD real halves |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, row in r["splits"].items():
        g, rl = row["generated"], row["real"]
        lines.append(
            f"| {split} | {row['n']} | {f(g['clip_score'])} | {f(rl['clip_score'])} | {f(g['r_precision'], True)} | "
            f"{f(rl['r_precision'], True)} | {g['num_captions']} | {f(row['fd'])} | {f(row['fd_real_halves'])} |"
        )
    lines.append("")
    for name in r.get("files", []):
        if name.endswith(".png"):
            lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def write_emoji_report(results: dict[str, Any], artefacts: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """results.json, report.md and grid_<split>.png into ``out``; returns the results with ``files``."""
    from unclip.eval.report import jsonable, labelled_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for split, (rows, captions) in artefacts["grids"].items():
        labelled_grid(rows, captions).save(out / f"grid_{split}.png")
        files.append(f"grid_{split}.png")
    results = {**results, "files": ["results.json", "report.md", *files]}
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(results))
    return results
