"""Evaluating priors on the shapes world: how close is a sampled image embedding to the real one?

Paper §5.1 / §7.4 (spec): a prior matters because feeding the decoder the CLIP *text* embedding
instead of an image embedding is clearly worse. Here the prior is measured directly in CLIP space,
on captions it never saw:

* ``val``: fresh training-distribution scenes (a seed the embedding job never used);
* ``heldout``: compositions kept out of every training scene (purple hearts, ...).

For each caption and method one image embedding is predicted and scored by

* ``cos``: cosine to the caption's true image embedding;
* retrieval among the split's images (a hit is an image whose caption is identical to the
  query's): ``R@1``, ``R@5``, mean and median rank of the true image;
* the oracle: the real image nearest to the prediction, among a pool of renders with known
  scenes (both splits' distributions), is scored against the caption by
  :func:`unclip.data.shapes.score` (``all_correct``, per-attribute accuracy).

Methods: each prior at its defaults; baselines (a) ``text_emb`` used as the image embedding
(the paper's "no prior" ablation) and (b) the training image embedding nearest to text_emb (a
retrieval prior); and the true image embedding (the oracle's ceiling for the pool). Sweeps:
guidance scale and best-of-N (diffusion), guidance scale and dot-product percentile (AR).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unclip.errors import UserError

logger = logging.getLogger(__name__)

BATCH = 256
EVAL_SEED = 10_000  # the embedding job uses small seeds; evaluation scenes never coincide


@dataclasses.dataclass
class EvalSet:
    """Captions of one split with their scenes, CLIP text encodings and true image embeddings."""

    name: str
    captions: list[str]
    specs: list[Any]
    text: Any  # TextEncoding (N, ...)
    image_emb: torch.Tensor  # (N, D)


@dataclasses.dataclass
class Pool:
    """Real renders with known scenes: the oracle scores the one nearest to a prediction."""

    images: np.ndarray  # (P, S, S, 3) uint8
    image_emb: torch.Tensor  # (P, D)
    readings: dict[int, Any] = dataclasses.field(default_factory=dict)

    @property
    def center(self) -> torch.Tensor:
        """(D,) mean image embedding of the pool."""
        return self.image_emb.float().mean(0)

    def reading(self, i: int) -> Any:
        from unclip.data.shapes import read_scene

        if i not in self.readings:
            self.readings[i] = read_scene(self.images[i])
        return self.readings[i]


# --------------------------------------------------------------------------- data
def _encode_text(clip: Any, captions: Sequence[str]) -> Any:
    from unclip.clip.interface import TextEncoding

    with torch.inference_mode():
        parts = [
            clip.encode_text(list(captions[i : i + BATCH])).to("cpu") for i in range(0, len(captions), BATCH)
        ]
    return TextEncoding.cat(parts)


def _encode_images(clip: Any, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [clip.encode_image(images[i : i + BATCH]).cpu() for i in range(0, len(images), BATCH)]
        )


def _render(specs: Sequence[Any], size: int) -> tuple[torch.Tensor, np.ndarray]:
    from unclip.data.shapes.render import render_array

    arr = np.stack([np.rint(render_array(s, size) * 255.0).astype(np.uint8) for s in specs])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0, arr


def make_eval_set(clip: Any, name: str, split: str, n: int, seed: int) -> EvalSet:
    """``n`` captioned scenes of ``split`` ("train" distribution or "heldout"), embedded by CLIP."""
    from unclip.data.shapes.stream import make_sample

    samples = [make_sample(seed, i, split) for i in range(n)]  # type: ignore[arg-type]
    specs, captions = [s for s, _ in samples], [c for _, c in samples]
    images, _ = _render(specs, clip.image_size)
    return EvalSet(name, captions, specs, _encode_text(clip, captions), _encode_images(clip, images))


def make_pool(clip: Any, n: int, seed: int) -> Pool:
    """``n`` renders from both distributions (half training, half held-out compositions)."""
    from unclip.data.shapes.stream import make_sample

    specs = [make_sample(seed, i, "train" if i % 2 else "heldout")[0] for i in range(n)]
    images, arr = _render(specs, clip.image_size)
    return Pool(arr, _encode_images(clip, images))


def load_train_image_emb(data: str | Path, limit: int | None = None) -> torch.Tensor:
    """(N, D) image embeddings of a training embedding folder (the first ``limit`` samples)."""
    from unclip.data.embeddings import EmbeddingShards

    shards = EmbeddingShards(data, fields=["image_emb"])
    n = len(shards) if limit is None else min(limit, len(shards))
    idx = np.arange(n)
    return torch.cat([shards.get_batch(idx[i : i + 8192])["image_emb"] for i in range(0, n, 8192)]).float()


# --------------------------------------------------------------------------- metrics
def retrieval_metrics(
    pred: torch.Tensor, es: EvalSet, center: torch.Tensor | None = None
) -> dict[str, float]:
    """Cosine to the true embedding and retrieval of the true image among the split's images.

    ``ccos`` is the cosine after subtracting ``center`` (the mean image embedding of the pool)
    from both: CLIP image embeddings of one domain share a large common direction, which makes
    the plain cosine of any two of them high; the centred cosine measures the caption-specific part.
    """
    pred = F.normalize(pred.float(), dim=-1)
    true = F.normalize(es.image_emb.float(), dim=-1)
    ccos = float("nan")
    if center is not None:
        ccos = float(F.cosine_similarity(pred - center, true - center, dim=-1).mean())
    sim = pred @ true.T  # (N, N)
    ids = {c: i for i, c in enumerate(dict.fromkeys(es.captions))}
    cap = torch.tensor([ids[c] for c in es.captions])
    relevant = cap[:, None] == cap[None, :]
    best_rel = sim.masked_fill(~relevant, -math.inf).max(1).values
    # Rank of the best relevant image: 1 + irrelevant images scoring strictly higher.
    rank = 1 + ((sim > best_rel[:, None]) & ~relevant).sum(1).float()
    return {
        "cos": float((pred * true).sum(-1).mean()),
        "ccos": ccos,
        "R@1": float((rank <= 1).float().mean()),
        "R@5": float((rank <= 5).float().mean()),
        "mean_rank": float(rank.mean()),
        "median_rank": float(rank.median()),
    }


def oracle_metrics(pred: torch.Tensor, es: EvalSet, pool: Pool) -> dict[str, float]:
    """Score the pool image nearest to each prediction against its caption with the oracle."""
    from unclip.data.shapes import score

    nearest = (F.normalize(pred.float(), dim=-1) @ F.normalize(pool.image_emb, dim=-1).T).argmax(1)
    per_attr: dict[str, list[bool]] = {}
    hits = total = 0
    correct = []
    for cap, j in zip(es.captions, nearest.tolist()):
        r = score(pool.images[j], cap, readings=pool.reading(j))
        correct.append(r["all_correct"])
        hits, total = hits + r["hits"], total + r["total"]
        for k in ("shape", "color", "size", "fill", "position", "count", "binding", "relation", "background"):
            if r[k] is not None:
                per_attr.setdefault(k, []).append(bool(r[k]))
    out = {"all_correct": float(np.mean(correct)), "attr_acc": hits / max(total, 1)}
    out |= {k: float(np.mean(v)) for k, v in per_attr.items()}
    return out


def _chunked_sample(prior: Any, text: Any, seed: int, **kw: Any) -> tuple[torch.Tensor, float]:
    """One embedding per caption, sampled in chunks; returns (embeddings, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    # Chunks of captions of similar length: the priors drop padding columns no caption in the
    # batch uses, so this roughly halves the sequence length on shapes captions.
    order = text.text_mask.sum(1).argsort(stable=True)
    out, t0 = [], time.perf_counter()
    for i in range(0, len(text), BATCH):
        out.append(prior.sample(text[order[i : i + BATCH]], generator=gen, **kw).cpu())
    emb = torch.empty_like(torch.cat(out))
    emb[order] = torch.cat(out)
    return emb, time.perf_counter() - t0


def _nearest_train(text_emb: torch.Tensor, train_emb: torch.Tensor) -> torch.Tensor:
    """Baseline (b): the training image embedding with the largest dot product with text_emb."""
    idx = torch.cat(
        [(text_emb[i : i + BATCH] @ train_emb.T).argmax(1) for i in range(0, len(text_emb), BATCH)]
    )
    return train_emb[idx]


# --------------------------------------------------------------------------- the suite
def _predictions(
    priors: dict[str, Any],
    es: EvalSet,
    seed: int,
    train_image_emb: torch.Tensor | None,
    sample_kwargs: dict[str, dict[str, Any]],
    speed: dict[str, dict[str, float]],
) -> dict[str, torch.Tensor]:
    """Method -> (N, D) predicted image embeddings: the baselines, then each prior (timed into ``speed``)."""
    methods: dict[str, torch.Tensor] = {"no prior (text_emb)": es.text.text_emb}
    if train_image_emb is not None:
        methods["nearest train image"] = _nearest_train(es.text.text_emb, train_image_emb)
    for name, prior in priors.items():
        emb, secs = _chunked_sample(prior, es.text, seed, **sample_kwargs.get(name, {}))
        methods[name] = emb
        speed.setdefault(name, {"embeddings": 0, "seconds": 0.0})
        speed[name]["embeddings"] += len(emb)
        speed[name]["seconds"] += secs
    return methods


def evaluate_priors(
    priors: dict[str, Any],
    clip: Any,
    *,
    n: int = 500,
    pool_size: int = 2000,
    seed: int = 0,
    train_image_emb: torch.Tensor | None = None,
    sweep_n: int = 200,
    guidance_scales: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    best_ofs: Sequence[int] = (1, 2, 4),
    dot_percentiles: Sequence[float] = (0.0, 0.5, 0.9),
    sample_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The prior suite on shapes (see the module docstring).

    Args:
        priors: name -> loaded prior (DiffusionPrior or ARPrior).
        clip: the CLIP the priors were trained on.
        n: captions per split for the main table.
        pool_size: real renders the oracle picks the nearest from.
        seed: offsets every evaluation seed.
        train_image_emb: (N, D) training image embeddings for baseline (b); skipped when None.
        sweep_n: captions per split in the sweeps (0 disables them).
        guidance_scales, best_ofs, dot_percentiles: sweep values.
        sample_kwargs: name -> extra ``sample`` arguments for the main table.

    Returns:
        A JSON-able dict: ``main[split][method]`` metrics, ``sweeps``, ``speed`` and settings.
    """
    _check_dims(priors, clip)
    sample_kwargs = sample_kwargs or {}
    t_start = time.perf_counter()
    sets = [
        make_eval_set(clip, "val", "train", n, EVAL_SEED + seed),
        make_eval_set(clip, "heldout", "heldout", n, EVAL_SEED + seed + 1),
    ]
    pool = make_pool(clip, pool_size, EVAL_SEED + seed + 2)
    results: dict[str, Any] = {
        "suite": "prior-shapes",
        "n": n,
        "pool_size": pool_size,
        "seed": seed,
        "main": {},
    }
    speed: dict[str, dict[str, float]] = {}
    for es in sets:
        methods = _predictions(priors, es, seed, train_image_emb, sample_kwargs, speed)
        methods["true image_emb (ceiling)"] = es.image_emb
        table = {}
        for m, pred in methods.items():
            table[m] = retrieval_metrics(pred, es, pool.center) | oracle_metrics(pred, es, pool)
            logger.info("%s / %s: %s", es.name, m, {k: round(v, 3) for k, v in table[m].items()})
        results["main"][es.name] = table
    results["speed"] = {k: v | {"per_s": v["embeddings"] / max(v["seconds"], 1e-9)} for k, v in speed.items()}
    if sweep_n:
        results["sweeps"] = _sweeps(
            priors, sets, pool, sweep_n, seed, guidance_scales, best_ofs, dot_percentiles
        )
    results["seconds"] = time.perf_counter() - t_start
    return results


EMOJI_SPLITS = ("val", "heldout_concept", "heldout_style")


def make_emoji_eval_set(clip: Any, data: str | Path, split: str, n: int | None) -> EvalSet | None:
    """The images of one split of an emoji build with their first captions, embedded by CLIP."""
    from unclip.data.emoji import load_emoji_split, read_manifest

    if split not in read_manifest(data).get("shards", {}):
        return None
    samples = load_emoji_split(data, split, limit=n)
    if not samples:
        return None
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captions = [s.captions[0] for s in samples]
    return EvalSet(
        split, captions, [None] * len(captions), _encode_text(clip, captions), _encode_images(clip, images)
    )


def evaluate_priors_emoji(
    priors: dict[str, Any],
    clip: Any,
    data: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    train_image_emb: torch.Tensor | None = None,
    sample_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The prior suite on an emoji build: cosine, centred cosine and retrieval per split.

    Splits: ``val`` (seen concepts, unseen images), ``heldout_concept`` and ``heldout_style`` when
    the build has them. There is no oracle on emoji; retrieval is among all images of the split.
    The centre for the centred cosine is the mean training image embedding when given.
    """
    _check_dims(priors, clip)
    sample_kwargs = sample_kwargs or {}
    t_start = time.perf_counter()
    results: dict[str, Any] = {"suite": "prior-emoji", "n": n, "seed": seed, "main": {}}
    speed: dict[str, dict[str, float]] = {}
    for split in EMOJI_SPLITS:
        es = make_emoji_eval_set(clip, data, split, n)
        if es is None:
            continue
        center = train_image_emb.mean(0) if train_image_emb is not None else es.image_emb.float().mean(0)
        methods = _predictions(priors, es, seed, train_image_emb, sample_kwargs, speed)
        results["main"][f"{split} ({len(es.captions)})"] = {
            m: retrieval_metrics(pred, es, center) for m, pred in methods.items()
        }
    if not results["main"]:
        raise UserError(f"{data} has none of the splits {', '.join(EMOJI_SPLITS)}")
    results["speed"] = {k: v | {"per_s": v["embeddings"] / max(v["seconds"], 1e-9)} for k, v in speed.items()}
    results["seconds"] = time.perf_counter() - t_start
    return results


def _check_dims(priors: dict[str, Any], clip: Any) -> None:
    for name, p in priors.items():
        if p.embed_dim != clip.embed_dim or p.config.text_width != clip.token_width:
            raise UserError(
                f"prior {name} expects D={p.embed_dim}, W={p.config.text_width} but the CLIP gives "
                f"D={clip.embed_dim}, W={clip.token_width}: evaluate with the CLIP it was trained on"
            )


def _subset(es: EvalSet, k: int) -> EvalSet:
    k = min(k, len(es.captions))
    return EvalSet(es.name, es.captions[:k], es.specs[:k], es.text[:k], es.image_emb[:k])


def _sweeps(
    priors: dict[str, Any],
    sets: list[EvalSet],
    pool: Pool,
    k: int,
    seed: int,
    guidance_scales: Sequence[float],
    best_ofs: Sequence[int],
    dot_percentiles: Sequence[float],
) -> dict[str, list[dict[str, Any]]]:
    """Guidance x best-of (diffusion) and guidance x dot percentile (AR), on the first k captions."""
    from unclip.models.ar_prior import ARPrior

    out: dict[str, list[dict[str, Any]]] = {}
    for name, prior in priors.items():
        if isinstance(prior, ARPrior):
            grid = [{"guidance_scale": g} for g in guidance_scales]
            grid += [{"dot_percentile": p} for p in dot_percentiles if p != 0.5]
            grid += [{"best_of": 2}]
        else:
            grid = [{"guidance_scale": g} for g in guidance_scales]
            grid += [{"best_of": b} for b in best_ofs if b != 2]
        rows = []
        for setting in grid:
            row: dict[str, Any] = {"setting": setting}
            for es in sets:
                sub = _subset(es, k)
                emb, secs = _chunked_sample(prior, sub.text, seed, **setting)
                row[es.name] = retrieval_metrics(emb, sub, pool.center) | oracle_metrics(emb, sub, pool)
                row[es.name]["per_s"] = len(emb) / max(secs, 1e-9)
            logger.info(
                "sweep %s %s: %s", name, setting, {s.name: round(row[s.name]["cos"], 3) for s in sets}
            )
            rows.append(row)
        out[name] = rows
    return out


# --------------------------------------------------------------------------- reports
def _f(v: Any, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


MAIN_COLS: tuple[tuple[str, str, bool], ...] = (
    ("cos", "cos", False),
    ("ccos", "centred cos", False),
    ("R@1", "R@1 %", True),
    ("R@5", "R@5 %", True),
    ("mean_rank", "mean rank", False),
    ("all_correct", "oracle all-correct %", True),
    ("attr_acc", "oracle attr %", True),
    ("color", "colour %", True),
    ("shape", "shape %", True),
)


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown tables for :func:`evaluate_priors` results."""
    if results.get("suite") == "prior-emoji":
        cols = MAIN_COLS[:5]
        lines = [f"# Prior evaluation: emoji (images per split in brackets; {results.get('data', '')})", ""]
    else:
        cols = MAIN_COLS
        lines = [
            f"# Prior evaluation: shapes ({results['n']} captions per split, pool {results['pool_size']})",
            "",
        ]
    for split, table in results["main"].items():
        lines += [f"## {split}", "", "| method | " + " | ".join(c[1] for c in cols) + " |"]
        lines.append("|---|" + "---|" * len(cols))
        for m, row in table.items():
            lines.append(f"| {m} | " + " | ".join(_f(row.get(k), p) for k, _, p in cols) + " |")
        lines.append("")
    if results.get("speed"):
        lines += ["## Sampling speed (defaults, bf16)", "", "| prior | embeddings/s |", "|---|---|"]
        lines += [f"| {k} | {v['per_s']:.1f} |" for k, v in results["speed"].items()]
        lines.append("")
    for name, rows in results.get("sweeps", {}).items():
        splits = [s for s in rows[0] if s != "setting"]
        lines += [
            f"## Sweep: {name}",
            "",
            "| setting | "
            + " | ".join(f"{s} cos | {s} centred cos | {s} R@1 % | {s} oracle %" for s in splits)
            + " | emb/s |",
        ]
        lines.append("|---|" + "---|---|---|---|" * len(splits) + "---|")
        for row in rows:
            cells = [
                f"{_f(row[s]['cos'])} | {_f(row[s]['ccos'])} | {_f(row[s]['R@1'], True)} | {_f(row[s]['all_correct'], True)}"
                for s in splits
            ]
            setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items())
            lines.append(f"| {setting} | " + " | ".join(cells) + f" | {row[splits[0]]['per_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(results))
    return out / "results.json", out / "results.md"


# --------------------------------------------------------------------------- CLI hook
def _prior_name(kind: str, used: set[str]) -> str:
    name = {"diffusion_prior": "diffusion prior", "ar_prior": "AR prior"}.get(kind, kind)
    base, i = name, 2
    while name in used:
        name, i = f"{base} #{i}", i + 1
    return name


def run_from_args(args: Any, echo: Callable[[str], None] = print) -> int:
    """``unclip evaluate --prior P [--prior P2] --clip C --suite shapes [--data TRAIN_EMB] [--n N]``."""
    from unclip.checkpoint import load_component
    from unclip.clip import load_encoder

    if not args.clip:
        raise UserError("--prior needs --clip DIR (the CLIP the prior was trained on)")
    if args.suite not in ("shapes", "emoji"):
        raise UserError(f"the prior suite supports --suite shapes or emoji, got {args.suite!r}")
    emoji_build = None
    if args.suite == "emoji":
        if not args.data or not Path(args.data).is_dir():
            raise UserError("--suite emoji with --prior needs --data EMOJI_BUILD (unclip data emoji)")
        emoji_build, args.data = args.data, None  # training embeddings then come from the prior
    clip = load_encoder(args.clip)
    priors: dict[str, Any] = {}
    train_data = args.data
    for path in args.prior:
        p = Path(path)
        if (p / "prior" / "component.json").is_file():
            p = p / "prior"  # a training run directory
        module, _, header = load_component(p)
        if header["kind"] not in ("diffusion_prior", "ar_prior"):
            raise UserError(f"{path} is a {header['kind']!r} component, not a prior")
        priors[_prior_name(header["kind"], set(priors))] = module
        train_data = train_data or header.get("extra", {}).get("data")
        limit = header.get("extra", {}).get("num_train")
    train_emb = None
    if train_data and Path(train_data).is_dir():
        train_emb = load_train_image_emb(train_data, limit)
    else:
        logger.warning("no training embeddings found (--data): skipping the nearest-train-image baseline")
    if emoji_build is not None:
        results = evaluate_priors_emoji(
            priors, clip, emoji_build, n=args.n, seed=args.seed, train_image_emb=train_emb
        )
        results["data"] = str(emoji_build)
    else:
        n = args.n or 500
        results = evaluate_priors(
            priors, clip, n=n, seed=args.seed, train_image_emb=train_emb, sweep_n=min(200, n)
        )
    results["priors"] = [str(p) for p in args.prior]
    results["clip"] = str(args.clip)
    echo(markdown_report(results))
    if args.out:
        js, md = write_report(results, args.out)
        echo(f"wrote {js} and {md}")
    return 0
