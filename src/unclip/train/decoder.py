"""Training the decoder (``unclip train decoder``) with the shared loop [paper §2.1, App. C].

CLIP is frozen (paper Fig. 2). Its embeddings come either from a CLIP run on every batch
(``--clip DIR``; for the shapes world the scene is rendered a second time at CLIP's input size so
CLIP sees exactly what it saw in its own training and in ``unclip embed``), or from embedding
shards written by ``unclip embed`` (``--embeddings DIR``) whose ``spec`` field lets the image be
re-rendered at the decoder's size (shapes world only).

Per step: uniform timesteps, independent condition drops (CLIP 10%, caption 50%, drawn by
:meth:`unclip.models.decoder.Decoder.sample_drop_masks`), and the diffusion's own training loss
(v-prediction + min-SNR by default, design.md §10). Every ``sample_every`` steps a grid of
samples from held-out renders' true CLIP image embeddings is written to ``RUN/samples/``; on the
shapes world the pixel oracle scores them against the source scenes (``RUN/eval.csv``), which
gives learning curves in accuracy vs CPU-minutes.

Run directory layout::

    RUN/run.json      stage, model config, train config, data, CLIP
    RUN/state.pt      the atomic training checkpoint
    RUN/log.csv       loss, mse, lr, grad norm, images/s
    RUN/eval.csv      oracle accuracy of the periodic samples (shapes world)
    RUN/samples/      step-NNNNNN.png grids
    RUN/decoder/      the usable decoder (component directory, EMA weights)
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unclip.checkpoint import atomic_write_bytes, save_component
from unclip.errors import UserError
from unclip.train.config import TrainConfig
from unclip.train.data import BatchStream, ShapesBatchAt, describe_data, open_data
from unclip.train.loop import Trainer, TrainResult
from unclip.train.prefetch import ordered_map

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
EXPORT_DIR = "decoder"
SAMPLES_DIR = "samples"
EVAL_SEED_OFFSET = 1_000_003  # held-out renders: a stream seed the training stream never uses
ORACLE_ATTRIBUTES = ("color", "shape", "size", "position", "fill")


# --------------------------------------------------------------------------- data streams
class ShapesPairs:
    """Shapes-world batches with the same scene rendered at several sizes; resumable.

    Args:
        size: side of ``image``.
        extra_sizes: more renders, as ``image_<px>``.
        batch_size: scenes per batch.
        seed: stream seed.
        split: "train", "heldout" or "any".
    """

    def __init__(
        self,
        size: int,
        extra_sizes: Sequence[int],
        batch_size: int,
        seed: int = 0,
        split: str = "train",
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        from unclip.train.data import rank_share

        self.size, self.extra_sizes = size, tuple(s for s in extra_sizes if s != size)
        self.batch_size, self.seed, self.split = batch_size, seed, split
        self.rank, self.world_size = rank_share(rank, world_size)
        self.num_workers = num_workers
        self.position = 0
        self._batches: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> ShapesPairs:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._batches is None:  # (re)start the workers at the current position
            make = ShapesBatchAt(
                self.size, self.seed, self.split, self.batch_size, extra_sizes=self.extra_sizes
            )
            keys = itertools.count(
                self.position + self.rank * self.batch_size, self.batch_size * self.world_size
            )
            self._batches = ordered_map(make, keys, self.num_workers)
        batch = next(self._batches)
        self.position += self.batch_size * self.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "shapes_pairs", "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            state.get("kind") != "shapes_pairs"
            or state.get("seed") != self.seed
            or state.get("size") != self.size
        ):
            raise UserError(f"cannot resume the data stream: saved {state}, now {self.state_dict()}")
        self.position = int(state["position"])
        self._batches = None


class ClipBatches:
    """Adds frozen-CLIP conditioning (image_emb, text_tokens, text_mask) to an image stream.

    Args:
        inner: a stream of ``{"image", "caption", ...}`` batches.
        clip: a :class:`unclip.clip.interface.ClipEncoder`.
        clip_image_key: which image of the batch CLIP sees (``image_<px>`` for shapes renders
            at CLIP's size).
    """

    def __init__(self, inner: BatchStream, clip: Any, clip_image_key: str = "image") -> None:
        self.inner, self.clip, self.key = inner, clip, clip_image_key
        self.batch_size = inner.batch_size

    def __iter__(self) -> ClipBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        batch.update(embed_batch(self.clip, batch[self.key], batch["caption"]))
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class RenderedEmbeddings:
    """Embedding shards (``unclip embed`` of the shapes world) with each scene re-rendered.

    Args:
        shards: an :class:`unclip.data.embeddings.EmbeddingShards` with a ``spec`` field.
        size: render side.
        batch_size: samples per batch.
        seed: shuffling seed.
    """

    def __init__(self, shards: Any, size: int, batch_size: int, seed: int = 0) -> None:
        from unclip.train.prior import EmbeddingBatches

        self.inner = EmbeddingBatches(shards, np.arange(len(shards)), batch_size, seed=seed)
        self.size, self.batch_size = size, batch_size

    def __iter__(self) -> RenderedEmbeddings:
        return self

    def __next__(self) -> dict[str, Any]:
        from unclip.data.shapes import SceneSpec, image_tensor

        batch = next(self.inner)
        specs = [json.loads(s) if isinstance(s, str) else s for s in batch["spec"]]
        batch["spec"] = specs
        batch["image"] = torch.stack([image_tensor(SceneSpec.from_dict(s), self.size) for s in specs])
        batch["text_mask"] = batch["text_mask"].bool()
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


@torch.no_grad()
def embed_batch(clip: Any, images: torch.Tensor, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Frozen-CLIP conditioning of one batch: image_emb (B, D), text_tokens (B, L, W), text_mask (B, L)."""
    enc = clip.encode_text(list(captions))
    return {
        "image_emb": clip.encode_image(images),
        "text_tokens": enc.text_tokens,
        "text_mask": enc.text_mask,
    }


def image_stream(
    data: str, size: int, clip_size: int | None, batch_size: int, seed: int, num_workers: int
) -> tuple[BatchStream, str]:
    """A resumable image stream for ``--data`` and the batch key CLIP should read."""
    if describe_data(data) == "shapes":
        from unclip.train.data import parse_size

        if parse_size(data, size) != size:
            raise UserError(
                f"--data {data}: the decoder renders at its own size ({size} px); use plain 'shapes'"
            )
        extra = [clip_size] if clip_size and clip_size != size else []
        key = f"image_{clip_size}" if extra else "image"
        return ShapesPairs(size, extra, batch_size, seed=seed, num_workers=num_workers), key
    if clip_size and clip_size > size:
        # CLIP sees the images at its own resolution (as it will at sampling time, where the prior
        # predicts embeddings of full-resolution images); the decoder learns the downsized copy.
        full = open_data(data, clip_size, batch_size, seed=seed, num_workers=num_workers)
        return Downsized(full, size, f"image_{clip_size}"), f"image_{clip_size}"
    return open_data(data, size, batch_size, seed=seed, num_workers=num_workers), "image"


class Downsized:
    """A stream whose ``image`` is resized (area) to ``size``; the original stays under ``key``."""

    def __init__(self, inner: BatchStream, size: int, key: str) -> None:
        self.inner, self.size, self.key = inner, size, key
        self.batch_size = inner.batch_size

    def __iter__(self) -> Downsized:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.inner)
        full = batch["image"]
        batch[self.key] = full
        batch["image"] = F.interpolate(full.float(), size=(self.size, self.size), mode="area")
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def open_decoder_data(
    data: str | None,
    clip: Any,
    embeddings: str | None,
    size: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
) -> BatchStream:
    """The training stream: images + CLIP conditioning, from ``--clip`` or ``--embeddings``."""
    if embeddings:
        from unclip.train.prior import open_embeddings

        shards = open_embeddings(embeddings)
        if "spec" not in shards.fields:
            raise UserError(
                f"{embeddings} has no 'spec' field: only shapes-world embeddings can be re-rendered; use --clip"
            )
        return RenderedEmbeddings(shards, size, batch_size, seed=seed)
    if clip is None or data is None:
        raise UserError("give --data with --clip DIR (embeddings on the fly) or --embeddings DIR")
    inner, key = image_stream(data, size, clip.image_size, batch_size, seed, num_workers)
    return ClipBatches(inner, clip, key)


# --------------------------------------------------------------------------- loss
def decoder_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """The shared loop's ``loss_fn``: diffusion loss with independent condition drops [paper §2.1]."""
    device = next(model.parameters()).device
    cfg = model.config  # type: ignore[attr-defined]
    diffusion = model.diffusion  # type: ignore[attr-defined]
    x = batch["image"].to(device)
    b = x.shape[0]
    drop_image, drop_text = model.sample_drop_masks(b, device=device)  # type: ignore[operator]
    kwargs: dict[str, Any] = {"image_emb": batch["image_emb"].to(device), "drop_image": drop_image}
    if cfg.text_dim:
        kwargs.update(
            text_tokens=batch["text_tokens"].to(device),
            text_mask=batch["text_mask"].to(device),
            drop_text=drop_text,
        )
    t = diffusion.sample_timesteps(b, device=device)
    out = diffusion.training_losses(
        model, x, t, model_kwargs=kwargs, loss_weighting=cfg.loss_weighting, min_snr_gamma=cfg.min_snr_gamma
    )
    return out["loss"].mean(), {"mse": float(out["mse"].detach().mean())}


# --------------------------------------------------------------------------- evaluation
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: Sequence[torch.Tensor], path: Path, pad: int = 1) -> Path:
    """Write rows of (N, 3, H, W) images (same H, W; rows may differ in N) as one PNG."""
    h, w = rows[0].shape[-2:]
    ncol = max(r.shape[0] for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(row)):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(canvas).save(tmp)
    tmp.replace(path)
    return path


def oracle_metrics(images: torch.Tensor, specs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Score images against their source scenes with the pixel oracle.

    Args:
        images: (B, 3, H, W) in [-1, 1].
        specs: B scene dicts.

    Returns:
        Accuracy per attribute (colour, shape, size, position, fill: fraction of objects read
        with the right value), ``count`` (right number of objects) and ``all_correct``.
    """
    from unclip.data.shapes import SceneSpec, score

    hits: dict[str, list[bool]] = {k: [] for k in (*ORACLE_ATTRIBUTES, "count", "all_correct")}
    for img, spec in zip(to_uint8(images), specs):
        res = score(Image.fromarray(img), SceneSpec.from_dict(spec))
        for k in hits:
            if res.get(k) is not None:
                hits[k].append(bool(res[k]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def eval_batch(
    data: str | None, clip: Any, embeddings: str | None, size: int, n: int, seed: int
) -> dict[str, Any]:
    """Fixed conditioning for periodic samples: renders the training stream never shows."""
    if embeddings:
        from unclip.train.prior import open_embeddings

        shards = open_embeddings(embeddings)
        batch = RenderedEmbeddings(shards, size, min(n, len(shards)), seed=seed + 1)
        return next(batch)
    assert data is not None
    if describe_data(data) == "shapes":
        stream: BatchStream = ShapesPairs(size, [clip.image_size], n, seed=seed + EVAL_SEED_OFFSET)
        return ClipBatches(
            stream, clip, f"image_{clip.image_size}" if clip.image_size != size else "image"
        ).__next__()
    inner, key = image_stream(data, size, clip.image_size, n, seed + 1, 0)
    return ClipBatches(inner, clip, key).__next__()


def make_sample_fn(
    cond: dict[str, Any], guidance_scale: float, steps: int | str, grid_columns: int = 8
) -> Any:
    """The loop's ``sample_fn``: a PNG grid and, on the shapes world, oracle accuracy.

    Grid rows: source images; decoded with image embedding + caption (guided); image
    embedding only; caption only (the GLIDE-like mode).
    """

    def sample_fn(model: nn.Module, step: int, run_dir: Path) -> dict[str, float] | None:
        gen = torch.Generator().manual_seed(0)
        emb, tok, mask = cond["image_emb"], cond.get("text_tokens"), cond.get("text_mask")
        use_text = bool(model.config.text_dim) and tok is not None  # type: ignore[attr-defined]
        tok, mask = (tok, mask) if use_text else (None, None)
        kw: dict[str, Any] = {"guidance_scale": guidance_scale, "steps": steps, "generator": gen}
        guided = model.sample(emb, tok, mask, **kw)  # type: ignore[operator]
        k = min(grid_columns, emb.shape[0])
        rows = [cond["image"][:k], guided[:k]]
        if use_text:
            rows.append(model.sample(emb[:k], **kw))  # type: ignore[operator]
            rows.append(model.sample(None, tok[:k], mask[:k], **kw))  # type: ignore[operator]
        save_grid(rows, run_dir / SAMPLES_DIR / f"step-{step:06d}.png")
        if "spec" not in cond:
            return None
        return {f"oracle_{k}": v for k, v in oracle_metrics(guided, cond["spec"]).items()}

    return sample_fn


@torch.no_grad()
def evaluate_decoder(
    decoder: nn.Module,
    clip: Any,
    num: int = 200,
    seed: int = 0,
    guidance_scale: float = 3.0,
    steps: int | str = 50,
    modes: Sequence[str] = ("guided", "image", "caption"),
    batch_size: int = 50,
) -> dict[str, dict[str, float]]:
    """Oracle accuracy of decoded images against the scenes they came from (shapes world).

    Fresh held-in scenes (the training distribution, a stream seed training never uses) are
    rendered, embedded with the frozen CLIP, decoded, and read back by the pixel oracle.

    Args:
        decoder: a trained :class:`~unclip.models.decoder.Decoder` (eval mode).
        clip: the frozen CLIP it was trained with.
        num: scenes.
        seed: the training seed (the evaluation stream is offset from it).
        guidance_scale: decoder guidance.
        steps: DDIM steps.
        modes: "guided" (image embedding + caption), "image" (embedding only), "caption" (caption
            only, the GLIDE-like baseline); "source" scores the renders themselves (oracle ceiling).
        batch_size: scenes per sampling batch.

    Returns:
        {mode: oracle metrics (see :func:`oracle_metrics`)}.
    """
    size = decoder.config.image_size  # type: ignore[attr-defined]
    stream = ClipBatches(
        ShapesPairs(size, [clip.image_size], batch_size, seed=seed + EVAL_SEED_OFFSET),
        clip,
        f"image_{clip.image_size}" if clip.image_size != size else "image",
    )
    images: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    specs: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {"guidance_scale": guidance_scale, "steps": steps, "generator": gen}
    while len(specs) < num:
        b = next(stream)
        specs.extend(b["spec"])
        emb, tok, mask = b["image_emb"], b["text_tokens"], b["text_mask"]
        for m in modes:
            if m == "source":
                images[m].append(b["image"])
            elif m == "guided":
                images[m].append(decoder.sample(emb, tok, mask, **kw))  # type: ignore[operator]
            elif m == "image":
                images[m].append(decoder.sample(emb, **kw))  # type: ignore[operator]
            elif m == "caption":
                images[m].append(decoder.sample(None, tok, mask, **kw))  # type: ignore[operator]
            else:
                raise ValueError(f"unknown mode {m!r}")
    return {m: oracle_metrics(torch.cat(v)[:num], specs[:num]) for m, v in images.items()}


# --------------------------------------------------------------------------- the run
def write_run_record(run_dir: Path, record: dict[str, Any], resume: bool) -> None:
    """Write run.json; on resume refuse a different model, data or batch layout."""
    path = run_dir / RUN_FILE
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        for key in ("stage", "model", "data"):
            if saved.get(key) != record.get(key):
                raise UserError(
                    f"{run_dir} holds a run with a different {key}; resume with the same settings or choose a new --out"
                )
        for key in ("batch_size", "grad_accum", "seed"):
            if saved["train"].get(key) != record["train"].get(key):
                raise UserError(f"cannot change train.{key} on --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def is_embedding_folder(path: str) -> bool:
    """True for a folder of embedding shards (``unclip embed`` output)."""
    index = Path(path) / "index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == "unclip-embeddings"
    except (OSError, ValueError, AttributeError):
        return False


def with_clip_dims(model: dict[str, Any], clip_dim: int, token_width: int) -> dict[str, Any]:
    """Fill the CLIP-given widths; ``text_dim: 0`` in the preset keeps the caption path off."""
    return {**model, "clip_dim": clip_dim, "text_dim": 0 if model.get("text_dim") == 0 else token_width}


def check_fresh(run_dir: Path, resume: bool) -> None:
    if (run_dir / "state.pt").is_file() and not resume:
        raise UserError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose a new --out"
        )


def train_decoder(
    model: dict[str, Any],
    train_config: TrainConfig,
    data: str | None,
    run_dir: str | Path,
    *,
    clip: str | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    init_from: str | Path | None = None,
    eval_samples: int = 32,
    guidance_scale: float = 3.0,
    sample_steps: int | str = 25,
    gradient_checkpointing: bool = False,
    num_workers: int = 0,
    device: str | None = None,
) -> TrainResult:
    """Train a decoder into ``run_dir`` (see the module docstring).

    Args:
        model: the :class:`~unclip.models.decoder.DecoderConfig` dict; ``clip_dim`` and
            ``text_dim`` are taken from the CLIP (or the embedding shards).
        train_config: optimisation and cadence.
        data: a ``--data`` spec used with ``clip``, or (without ``clip``) a folder of
            shapes-world embedding shards written by ``unclip embed``.
        run_dir: the run directory.
        clip: a frozen CLIP directory (embeddings computed on the fly).
        resume: continue the run in ``run_dir``.
        init_from: a component directory whose weights start a fresh run (fine-tuning).
        stop_at: save and stop at this step (the schedule still spans all the steps).
        eval_samples: held-out scenes decoded at each ``sample_every``.
        guidance_scale: decoder guidance for those samples.
        sample_steps: sampler steps for those samples.
        gradient_checkpointing: trade compute for memory in the UNet.
        num_workers: data loading (shapes: rendering) worker processes.
        device: default from the environment.

    Raises:
        UserError: bad data or CLIP, an existing run without ``resume``, or a changed resume.
    """
    from unclip.models.decoder import Decoder, DecoderConfig

    run_dir = Path(run_dir)
    check_fresh(run_dir, resume)
    encoder, embeddings = None, None
    if not clip:
        if data is None or not is_embedding_folder(data):
            raise UserError(
                "give --clip DIR (embeddings computed on the fly) or --data EMBEDDINGS_DIR (unclip embed)"
            )
        embeddings, data = data, None
    if clip:
        from unclip.clip import load_encoder
        from unclip.nn.precision import resolve_device

        # On the training device: the frozen CLIP encodes every batch.
        encoder = load_encoder(clip, device=str(resolve_device(device)))
        model = with_clip_dims(model, encoder.embed_dim, encoder.token_width)
    elif embeddings:
        from unclip.train.prior import data_fields, open_embeddings

        fields = data_fields(open_embeddings(embeddings))
        model = with_clip_dims(model, fields["embed_dim"], fields["text_width"])
    config = DecoderConfig.from_dict(model)
    size = config.image_size
    stream = open_decoder_data(
        data, encoder, embeddings, size, train_config.micro_batch_size, train_config.seed, num_workers
    )

    torch.manual_seed(train_config.seed)  # model init is part of the run's identity
    decoder = Decoder(config)
    decoder.unet.enable_gradient_checkpointing(gradient_checkpointing)
    record = {
        "stage": "decoder",
        "model": config.to_dict(),
        "train": train_config.to_dict(),
        "data": data or embeddings,
        "clip": clip,
        "init_from": str(init_from) if init_from else None,
    }
    write_run_record(run_dir, record, resume)
    sample_fn = None
    if train_config.sample_every and eval_samples > 0:
        cond = eval_batch(data, encoder, embeddings, size, eval_samples, train_config.seed)
        sample_fn = make_sample_fn(cond, guidance_scale, sample_steps)

    def export(m: nn.Module, out: Path) -> None:
        save_component(m, config, "decoder", out / EXPORT_DIR, extra={"clip": clip, "data": record["data"]})

    n_params = sum(p.numel() for p in decoder.parameters())
    logger.info("decoder: %.2fM parameters, %d px, %s", n_params / 1e6, size, config.prediction)
    trainer = Trainer(
        decoder,
        decoder_loss,
        stream,
        train_config,
        run_dir,
        export_fn=export,
        sample_fn=sample_fn,
        extra_state={"stage": "decoder"},
        device=device,
        init_from=init_from,
    )
    return trainer.run(resume=resume, stop_at=stop_at)
