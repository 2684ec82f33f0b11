"""Training our CLIP with the shared loop (``unclip train clip``).

Paper App. C: CLIP is trained with the symmetric contrastive objective of Radford et al. 2021 and a
learned temperature; unCLIP then keeps it frozen. Here: AdamW, warmup + cosine, bf16 autocast,
gradient clipping, optional EMA, all from :mod:`unclip.train.loop`.

Run directory layout::

    RUN/run.json        stage, model config, train config, data spec (checked on --resume)
    RUN/tokenizer.json  the BPE tokenizer trained on the data's captions (our text tower)
    RUN/state.pt        the atomic training checkpoint
    RUN/log.csv         per-interval loss, lr, grad norm, in-batch accuracy, images/s
    RUN/eval.csv        periodic quick evaluation (retrieval, shapes zero-shot)
    RUN/clip/           the usable model (component directory), refreshed at every checkpoint
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import atomic_write_bytes
from unclip.clip.config import ClipConfig
from unclip.clip.loss import caption_positives, contrastive_loss
from unclip.clip.model import TOKENIZER_FILE, ClipModel
from unclip.clip.tokenizer import load_bpe, train_bpe
from unclip.errors import UserError
from unclip.train.config import TrainConfig
from unclip.train.data import ShapesBatches, caption_corpus, describe_data, open_data, parse_size
from unclip.train.loop import Trainer, TrainResult

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
EXPORT_DIR = "clip"


GRID_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "fill")


class AttributeProbe(nn.Module):
    """Training-only auxiliary head: the image features predict every grid cell's object.

    For each of the shapes world's 3x3 cells, a linear map of the image tower's output (the
    unnormalised embedding, (B, D)) classifies the object there: shape, colour, size and fill,
    each with an extra "empty" class. It is thrown away after training; only the CLIP is exported.

    With ``background_weight`` > 0 a second linear head names the scene's background colour. The
    contrastive loss alone leaves the background out of the embedding (captions name it 20 % of
    the time and counterfactual pairs share it), and the decoder can only paint what the
    embedding carries (docs/clip.md, "Background").
    """

    def __init__(self, embed_dim: int, shape_weight: float = 1.0, background_weight: float = 0.0) -> None:
        super().__init__()
        from unclip.data.shapes import vocab

        # Relative weights of the attribute terms; shape is the slowest to learn (docs/clip.md).
        self.weights = {a: (shape_weight if a == "shape" else 1.0) for a in GRID_ATTRIBUTES}

        self.values = {a: list(getattr(vocab, a.upper() + "S")) for a in GRID_ATTRIBUTES}
        self.cells = list(vocab.POSITIONS)
        self.head = nn.Linear(embed_dim, len(self.cells) * sum(len(v) + 1 for v in self.values.values()))
        self.backgrounds = list(vocab.BACKGROUNDS)
        self.background_weight = background_weight
        # Only built when used, so runs without it keep their checkpoints' module layout.
        self.background_head: nn.Linear | None = None
        if background_weight > 0:
            self.background_head = nn.Linear(embed_dim, len(self.backgrounds))

    def targets(self, specs: Sequence[dict[str, Any]]) -> torch.Tensor:
        """(B, 9, A) class indices (0 = empty cell) from scene specs."""
        from unclip.data.shapes import position_name

        out = torch.zeros(len(specs), len(self.cells), len(self.values), dtype=torch.long)
        for i, spec in enumerate(specs):
            for o in spec["objects"]:
                c = self.cells.index(position_name(o["x"], o["y"]))
                for a, (name, values) in enumerate(self.values.items()):
                    out[i, c, a] = values.index(o[name]) + 1
        return out

    def logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (B, D) -> {attribute: (B, 9, values + 1) logits}, class 0 = empty cell."""
        flat = self.head(features.float()).view(features.shape[0], len(self.cells), -1)
        sizes = [len(v) + 1 for v in self.values.values()]
        return dict(zip(self.values, flat.split(sizes, dim=-1)))

    def background_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, D) -> (B, backgrounds) logits (needs ``background_weight`` > 0)."""
        if self.background_head is None:
            raise ValueError("this probe has no background head (background_weight 0)")
        return self.background_head(features.float())

    def loss(self, features: torch.Tensor, specs: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Cross-entropy averaged over cells, weighted-averaged over attributes; features (B, D).

        The background term (when on) is one more attribute in the weighted average.
        """
        target = self.targets(specs).to(features.device)
        total = features.new_zeros((), dtype=torch.float32)
        for a, (name, chunk) in enumerate(self.logits(features).items()):
            ce = F.cross_entropy(chunk.reshape(-1, chunk.shape[-1]), target[..., a].reshape(-1))
            total = total + self.weights[name] * ce
        norm = sum(self.weights.values())
        if self.background_head is not None:
            bg = torch.tensor(
                [self.backgrounds.index(s["background"]) for s in specs], device=features.device
            )
            total = total + self.background_weight * F.cross_entropy(self.background_logits(features), bg)
            norm += self.background_weight
        return total / norm


class ClipWithProbe(nn.Module):
    """A CLIP plus its :class:`AttributeProbe` (what the trainer optimises with ``aux_weight``)."""

    def __init__(
        self, clip: ClipModel, aux_weight: float, shape_weight: float = 1.0, background_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.clip = clip
        self.probe = AttributeProbe(clip.embed_dim, shape_weight, background_weight)
        self.aux_weight = aux_weight


def unwrap(model: nn.Module) -> ClipModel:
    """The CLIP inside a training module."""
    return model.clip if isinstance(model, ClipWithProbe) else model  # type: ignore[return-value]


def clip_loss(
    model: nn.Module, batch: dict[str, Any], contrastive_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE on one batch (plus the attribute probe's loss when the model has one).

    Positives: identical captions, and on the shapes world every caption that is true of an image
    (from the scene specs), so that "a star" is not pushed away from every other star in the batch.
    ``contrastive_weight`` scales InfoNCE (0 during a probe-only warm start; it is still logged).
    """
    clip = unwrap(model)
    device = clip.device
    pixels = clip.preprocess(batch["image"].to(device))
    ids, mask = clip.tokenize(batch["caption"])
    img, txt, scale = clip(pixels, ids, mask)
    if "positives" in batch:  # computed by the data workers
        positives = batch["positives"].t().to(device)
    elif "spec" in batch:
        positives = shapes_positives(batch["caption"], batch["spec"]).t().to(device)
    else:
        positives = caption_positives(batch["caption"], device)
    loss, metrics = contrastive_loss(img, txt, scale, positives)
    metrics["infonce"] = loss.item()
    loss = loss * contrastive_weight
    if isinstance(model, ClipWithProbe):
        aux = model.probe.loss(img * img.shape[-1] ** 0.5, batch["spec"])  # unit-variance inputs
        metrics["aux_loss"] = aux.item()
        loss = loss + model.aux_weight * aux
    return loss, metrics


@functools.lru_cache(maxsize=1 << 16)
def _parsed_caption(text: str) -> Any:
    from unclip.data.shapes import parse_caption

    try:
        return parse_caption(text)
    except UserError:
        return None


def _caption_true_of(
    cs: Any, objs: list[dict[str, str]], xys: list[tuple[float, float]], background: str
) -> bool:
    """Whether a parsed caption is true of a scene: same number of objects, the stated
    background, and some one-to-one assignment of mentions to objects that satisfies every pinned
    attribute and the stated relation."""
    from unclip.data.shapes import relation_holds
    from unclip.data.shapes.captions import mention_matches

    if cs is None or len(cs.mentions) != len(objs):
        return False
    if cs.background is not None and cs.background != background:
        return False
    for perm in itertools.permutations(range(len(objs))):
        if all(mention_matches(m, objs[p]) for m, p in zip(cs.mentions, perm)):
            if cs.relation is None:
                return True
            i, rel, j = cs.relation
            if relation_holds(xys[perm[i]], xys[perm[j]], rel):
                return True
    return False


def shapes_positives(captions: Sequence[str], specs: Sequence[dict[str, Any]]) -> torch.Tensor:
    """(B, B) bool: ``[i, j]`` True when caption i is true of scene j (shapes world ground truth).

    The diagonal is always True (a caption describes its own scene even if it fails to parse).
    """
    from unclip.data.shapes import position_name

    scenes = []
    for spec in specs:
        objs = spec["objects"]
        attrs = [
            {
                "shape": o["shape"],
                "color": o["color"],
                "size": o["size"],
                "fill": o["fill"],
                "position": position_name(o["x"], o["y"]),
            }
            for o in objs
        ]
        scenes.append((attrs, [(o["x"], o["y"]) for o in objs], spec["background"]))
    parsed = [_parsed_caption(c) for c in captions]
    out = torch.zeros(len(captions), len(specs), dtype=torch.bool)
    for i, cs in enumerate(parsed):
        for j, (attrs, xys, bg) in enumerate(scenes):
            out[i, j] = i == j or _caption_true_of(cs, attrs, xys, bg)
    return out


def build_tokenizer(config: ClipConfig, data: str, run_dir: Path, seed: int) -> Any:
    """Load RUN/tokenizer.json, or train a BPE tokenizer on the data's captions and write it there."""
    path = run_dir / TOKENIZER_FILE
    if path.is_file():
        return load_bpe(path, config.text.context_length)
    captions = caption_corpus(data, seed=seed)
    if not captions:
        raise UserError(f"no captions found in {data} to train a tokenizer on")
    tok = train_bpe(captions, config.text.vocab_size, config.text.context_length)
    logger.info("trained a BPE tokenizer on %d captions: %d tokens", len(captions), tok.vocab_size)
    tok.save(path)
    return tok


def _check_run(run_dir: Path, record: dict[str, Any]) -> None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    saved.setdefault("aux_weight", 0.0)  # runs from before the attribute probe
    saved.setdefault("aux_background_weight", 0.0)  # runs from before its background head
    saved.setdefault("background_edits", 0.0)  # runs from before background edits
    saved.setdefault("freeze_image", False)
    for key in ("stage", "model", "data", "counterfactual", "background_edits", "freeze_image"):
        if saved.get(key) != record.get(key):
            raise UserError(
                f"{run_dir} holds a run with a different {key} ({saved.get(key)!r}); "
                "resume with the same settings or choose a new --out"
            )
    # The probe's weights are loss weights and may change on resume (like the learning rate);
    # turning the probe on or off changes the trained modules and may not.
    if (saved["aux_weight"] > 0) != (record["aux_weight"] > 0):
        raise UserError(
            f"{run_dir} was trained with --aux-attributes {saved['aux_weight']}; resume with a "
            "positive weight"
            if saved["aux_weight"] > 0
            else f"{run_dir} was trained without --aux-attributes"
        )
    saved_bg, bg = saved["aux_background_weight"], record["aux_background_weight"]
    if (saved_bg > 0) != (bg > 0):
        raise UserError(
            f"{run_dir} was trained with --aux-background-weight {saved_bg}; resume with the probe's "
            "background head on or off as it was"
        )
    for key in ("aux_weight", "aux_shape_weight", "aux_background_weight", "probe_first"):
        if saved.get(key, 1.0) != record.get(key, 1.0):
            logger.info("resuming with %s %s (was %s)", key, record.get(key), saved.get(key, 1.0))
    fixed = ("batch_size", "grad_accum", "seed")
    for key in fixed:
        if saved["train"].get(key) != record["train"].get(key):
            raise UserError(
                f"cannot change train.{key} on --resume ({saved['train'].get(key)} -> {record['train'].get(key)})"
            )


def train_clip(
    model_config: ClipConfig,
    train_config: TrainConfig,
    data: str,
    run_dir: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    init_from: str | Path | None = None,
    num_workers: int = 0,
    sample_fn: Any = None,
    device: str | None = None,
    counterfactual: bool = True,
    aux_weight: float = 0.0,
    aux_shape_weight: float = 1.0,
    aux_background_weight: float = 0.0,
    probe_first: int = 0,
    background_edits: float = 0.0,
    freeze_image: bool = False,
) -> TrainResult:
    """Train a CLIP on ``data`` into ``run_dir``.

    Args:
        model_config: the CLIP to build.
        train_config: optimisation and cadence.
        data: a ``--data`` spec (see :func:`unclip.train.data.open_data`).
        run_dir: the run directory (see the module docstring).
        resume: continue the run in ``run_dir``; without it an existing run is an error.
        init_from: a component directory whose weights start a fresh run (fine-tuning).
        stop_at: save and stop at this step (the schedule still spans all the steps).
        num_workers: data loading (shapes: rendering) worker processes.
        sample_fn: periodic quick evaluation hook (default: :func:`default_eval_fn` for the data).
        device: default from the environment.
        counterfactual: on the shapes world, fill half of each batch with one-attribute edits
            of the other half (see :class:`unclip.train.data.ShapesBatches`).
        aux_weight: shapes world only: weight of the :class:`AttributeProbe` loss added to
            InfoNCE (0: plain CLIP). The probe is not exported.
        aux_shape_weight: weight of the probe's shape term relative to colour, size and fill.
        aux_background_weight: weight of a background-colour term in the probe (0: none).
        probe_first: train the image tower with the probe loss alone for this many steps, then
            add InfoNCE (a supervised warm start that puts shape into the tower before the
            contrastive loss can crowd it out; docs/clip.md). Needs ``aux_weight`` > 0.
        background_edits: on the shapes world, the fraction of counterfactual edits that change
            the background, with both captions naming it (text-side background; docs/clip.md).
        freeze_image: train the text tower (and temperature) only. The image embeddings stay
            exactly as they were, so a decoder trained on them needs no retraining.

    Raises:
        UserError: an existing run without ``resume``, or a resume with different settings.
    """
    run_dir = Path(run_dir)
    describe_data(data)  # fail early on a bad spec
    is_shapes = describe_data(data) == "shapes"
    if aux_weight < 0 or aux_shape_weight <= 0 or (aux_weight > 0 and not is_shapes):
        raise UserError("--aux-attributes needs the shapes world (it reads scene specs) and a weight >= 0")
    if aux_background_weight < 0 or (aux_background_weight > 0 and aux_weight <= 0):
        raise UserError("--aux-background-weight needs --aux-attributes > 0 and a weight >= 0")
    if probe_first < 0 or (probe_first > 0 and aux_weight <= 0):
        raise UserError("--probe-first needs --aux-attributes > 0 and a step count >= 0")
    if freeze_image and (aux_weight > 0 or init_from is None):
        raise UserError(
            "--freeze-image fine-tunes the text tower of an --init-from CLIP; the probe reads the image tower"
        )
    if background_edits and not (is_shapes and counterfactual):
        raise UserError("--background-edits needs the shapes world with counterfactual batches")
    record = {
        "stage": "clip",
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": data,
        "counterfactual": counterfactual and is_shapes,
        "aux_weight": aux_weight,
        "aux_shape_weight": aux_shape_weight,
        "aux_background_weight": aux_background_weight,
        "probe_first": probe_first,
        "background_edits": background_edits,
        "freeze_image": freeze_image,
    }
    has_state = (run_dir / "state.pt").is_file()
    if has_state and not resume:
        raise UserError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose a new --out"
        )
    if resume:
        _check_run(run_dir, record)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / RUN_FILE, (json.dumps(record, indent=2) + "\n").encode())

    torch.manual_seed(train_config.seed)  # model init is part of the run's identity
    tokenizer = None
    if model_config.text.tower == "transformer":
        init_tok = Path(init_from) / TOKENIZER_FILE if init_from is not None else None
        if init_tok is not None and not (run_dir / TOKENIZER_FILE).is_file():
            if not init_tok.is_file():
                raise UserError(f"--init-from {init_from}: no {TOKENIZER_FILE} (the text tower's vocabulary)")
            # Fine-tuning keeps the model's vocabulary: a tokenizer retrained here (another seed
            # or other captions) would give the pretrained token embeddings other meanings.
            atomic_write_bytes(run_dir / TOKENIZER_FILE, init_tok.read_bytes())
        tokenizer = build_tokenizer(model_config, data, run_dir, train_config.seed)
    model: nn.Module = ClipModel(model_config, tokenizer)
    if aux_weight > 0:
        model = ClipWithProbe(model, aux_weight, aux_shape_weight, aux_background_weight)  # type: ignore[arg-type]
    if is_shapes and counterfactual:
        size = parse_size(data, model_config.vision.image_size)
        stream: Any = ShapesBatches(
            size,
            train_config.micro_batch_size,
            seed=train_config.seed,
            counterfactual=True,
            background_edits=background_edits,
            num_workers=num_workers,
        )
    else:
        stream = open_data(
            data,
            model_config.vision.image_size,
            train_config.micro_batch_size,
            seed=train_config.seed,
            num_workers=num_workers,
        )
    if sample_fn is None:
        sample_fn = default_eval_fn(data, model_config.vision.image_size)

    def export(m: torch.nn.Module, out: Path) -> None:
        unwrap(m).save(out / EXPORT_DIR, extra={"data": data, "train_config": train_config.to_dict()})  # type: ignore[operator]

    if freeze_image:
        unwrap(model).visual.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("CLIP: %.2fM trainable parameters; data %s", n_params / 1e6, data)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return clip_loss(m, batch, 0.0 if trainer.step < probe_first else 1.0)

    trainer = Trainer(
        model,
        loss_fn,
        stream,
        train_config,
        run_dir,
        export_fn=export,
        sample_fn=sample_fn,
        extra_state=record,
        device=device,
        init_from=init_from,
        init_target=unwrap,
    )
    return trainer.run(resume=resume, stop_at=stop_at)


def default_eval_fn(data: str, image_size: int) -> Any:
    """A quick periodic evaluation suited to the data (shapes: zero-shot attributes + retrieval)."""
    if describe_data(data) != "shapes":
        return None

    def fn(model: ClipModel, step: int, run_dir: Path) -> dict[str, float]:
        from unclip.eval.clip_eval import quick_shapes_eval

        return quick_shapes_eval(unwrap(model), image_size=image_size)

    return fn
