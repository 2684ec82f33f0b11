"""The independent evaluation network of the shapes suite: a small CNN trained on exact labels.

FID needs features from a network that had no part in generation (paper §5 / Table 2 use
Inception; here a CNN trained on the renderer's ground truth, separate from the generation CLIP).
It reads a 32 px image (B, 3, 32, 32) in [-1, 1] and predicts, for scenes of 1 to 3 objects:

* ``count`` (3-way) and ``background`` (5-way), softmax heads;
* which shapes, colours, sizes, fills and positions occur (multi-hot, sigmoid heads).

Features for the Fréchet distance are the penultimate layer (:data:`FEATURE_DIM` = 128, after
ReLU). ``scripts/train_eval_features.py`` trains it (seeded) and writes
``unclip/eval/weights/shapes-features/`` (``model.safetensors`` + ``config.json`` with its
held-out accuracy); :func:`load_features` loads it. Weights are safetensors only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unclip.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "shapes-features"
IMAGE_SIZE = 32
FEATURE_DIM = 128
MULTI_HOT = ("shape", "color", "size", "fill", "position")


def label_space() -> dict[str, list[str]]:
    """Head name -> class names (vocabulary order)."""
    from unclip.data.shapes import BACKGROUNDS, COLORS, FILLS, POSITIONS, SHAPES, SIZES

    return {
        "count": ["1", "2", "3"],
        "background": list(BACKGROUNDS),
        "shape": list(SHAPES),
        "color": list(COLORS),
        "size": list(SIZES),
        "fill": list(FILLS),
        "position": list(POSITIONS),
    }


class ShapesFeatureNet(nn.Module):
    """Conv stages at 32, 16, 8, 4 px (max-pool between), a 128-d feature layer, one head per label.

    The feature layer reads the last 4x4 map three ways: global max and mean pooling
    (translation-invariant: "is there a star anywhere" is learned once, not per position) and a
    flattened 1x1-conv reduction (where things are).

    Args:
        widths: channels of the conv stages.
        depths: 3x3 conv + BN + ReLU layers per stage.
        feature_dim: width of the penultimate (feature) layer.
        spatial: channels of the 1x1-conv reduction that is flattened into the feature layer.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 96, 128),
        depths: Sequence[int] = (1, 1, 1, 1),
        feature_dim: int = FEATURE_DIM,
        spatial: int = 8,
    ) -> None:
        super().__init__()
        self.widths, self.depths, self.feature_dim = tuple(widths), tuple(depths), feature_dim
        self.spatial = spatial
        layers: list[nn.Module] = []
        cin = 3
        for k, (w, d) in enumerate(zip(widths, depths)):
            for _ in range(d):
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            if k < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.convs = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** (len(widths) - 1)
        self.reduce = nn.Conv2d(cin, spatial, 1)
        self.fc = nn.Linear(2 * cin + spatial * side * side, feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, len(v)) for k, v in label_space().items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, feature_dim) penultimate features (after ReLU)."""
        if images.shape[-1] != IMAGE_SIZE or images.shape[-2] != IMAGE_SIZE:
            images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
        h = self.convs(images)
        pooled = torch.cat([h.amax((2, 3)), h.mean((2, 3)), self.reduce(h).flatten(1)], 1)
        return F.relu(self.fc(pooled))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 32, 32) -> {head: (B, classes) logits}."""
        f = self.features(images)
        return {k: h(f) for k, h in self.heads.items()}


# --------------------------------------------------------------------------- labels and data
def scene_labels(spec: Any) -> dict[str, np.ndarray | int]:
    """Targets of one SceneSpec: class indices (count, background) and multi-hot vectors."""
    space = label_space()
    out: dict[str, np.ndarray | int] = {
        "count": len(spec.objects) - 1,
        "background": space["background"].index(spec.background),
    }
    for attr in MULTI_HOT:
        v = np.zeros(len(space[attr]), np.float32)
        for o in spec.objects:
            v[space[attr].index(getattr(o, attr))] = 1.0
        out[attr] = v
    return out


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[Any]]:
    """``n`` scenes of any composition (held-out ones included) rendered at 32 px.

    Returns:
        images (n, 3, 32, 32) in [-1, 1], targets {head: (n,) long or (n, C) float}, the specs.
    """
    from unclip.data.shapes import image_tensor, sample_scene
    from unclip.progress import progress

    rng = np.random.default_rng(seed)
    specs = [sample_scene(rng, "any") for _ in progress(range(n), desc="render")]
    images = torch.stack([image_tensor(s, IMAGE_SIZE) for s in specs])
    labels = [scene_labels(s) for s in specs]
    targets = {
        k: torch.tensor([lab[k] for lab in labels])
        if k in ("count", "background")
        else torch.from_numpy(np.stack([lab[k] for lab in labels]))
        for k in label_space()
    }
    return images, targets, specs


def loss_fn(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropies (count, background) + binary cross-entropies summed over each multi-hot head's
    classes (a per-class mean would give the 7-way shape head a seventh of the gradient)."""
    total = F.cross_entropy(logits["count"], targets["count"])
    total = total + F.cross_entropy(logits["background"], targets["background"])
    for k in MULTI_HOT:
        bce = F.binary_cross_entropy_with_logits(logits[k], targets[k], reduction="none")
        total = total + bce.sum(1).mean()
    return total


@torch.no_grad()
def accuracy(
    model: ShapesFeatureNet, images: torch.Tensor, targets: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Held-out accuracy: per attribute on single-object scenes (argmax), exact sets on all scenes."""
    model.eval()
    logits = {k: torch.cat(v) for k, v in _batched_logits(model, images).items()}
    single = targets["count"] == 0
    out = {
        "count": float((logits["count"].argmax(1) == targets["count"]).float().mean()),
        "background": float((logits["background"].argmax(1) == targets["background"]).float().mean()),
    }
    for k in MULTI_HOT:
        pred = logits[k][single].argmax(1)
        out[f"single/{k}"] = float((pred == targets[k][single].argmax(1)).float().mean())
        exact = ((logits[k] > 0).float() == targets[k]).all(1)
        out[f"set/{k}"] = float(exact.float().mean())
    return out


def _batched_logits(model: ShapesFeatureNet, images: torch.Tensor, batch: int = 512) -> dict[str, list]:
    out: dict[str, list] = {}
    for i in range(0, len(images), batch):
        for k, v in model(images[i : i + batch]).items():
            out.setdefault(k, []).append(v)
    return out


def train_features(
    *,
    seed: int = 0,
    num_train: int = 20_000,
    num_test: int = 2_000,
    max_seconds: float = 240.0,
    max_steps: int = 20_000,
    batch_size: int = 64,
    lr: float = 2e-3,
    noise_prob: float = 0.5,
    log: Callable[[str], None] = print,
) -> tuple[ShapesFeatureNet, dict[str, Any]]:
    """Train the evaluation CNN on fresh renders with exact labels (seeded, CPU).

    Half of the batches get Gaussian pixel noise (sigma up to 0.1) so that features stay
    meaningful on imperfect generated images. Training stops at ``max_steps`` or after
    ``max_seconds`` of optimisation, whichever comes first.

    Returns:
        The model (eval mode) and a record: settings, steps, seconds, held-out accuracy.
    """
    from unclip.progress import progress

    torch.manual_seed(seed)
    t_data = time.perf_counter()
    x_tr, y_tr, _ = make_dataset(num_train, seed)
    x_te, y_te, _ = make_dataset(num_test, seed + 1_000_003)
    t_data = time.perf_counter() - t_data
    model = ShapesFeatureNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0, step, loss = time.perf_counter(), 0, torch.tensor(0.0)
    bar = progress(total=max_steps, desc="train eval CNN")
    while step < max_steps and time.perf_counter() - t0 < max_seconds:
        model.train()
        idx = torch.randint(0, num_train, (batch_size,), generator=g)
        x = x_tr[idx]
        if torch.rand((), generator=g) < noise_prob:
            sigma = 0.1 * torch.rand((batch_size, 1, 1, 1), generator=g)
            x = x + sigma * torch.randn(x.shape, generator=g)
        frac = min(1.0, (time.perf_counter() - t0) / max_seconds)
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * frac))
        loss = loss_fn(model(x), {k: v[idx] for k, v in y_tr.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 200 == 0:
            log(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    acc = accuracy(model, x_te, y_te)
    record = {
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "batch_size": batch_size,
        "lr": lr,
        "noise_prob": noise_prob,
        "steps": step,
        "train_seconds": round(seconds, 1),
        "data_seconds": round(t_data, 1),
        "final_loss": loss.item(),
        "test_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "torch_threads": torch.get_num_threads(),
    }
    return model, record


# --------------------------------------------------------------------------- saving and loading
def save_features(model: ShapesFeatureNet, record: dict[str, Any], directory: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (architecture, labels, training record)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    config = {
        "kind": "shapes_features",
        "image_size": IMAGE_SIZE,
        "widths": list(model.widths),
        "depths": list(model.depths),
        "spatial": model.spatial,
        "feature_dim": model.feature_dim,
        "labels": label_space(),
        "input": "(B, 3, 32, 32) float in [-1, 1]",
        "features": "penultimate layer after ReLU, (B, feature_dim)",
        "training": record,
    }
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return d


def load_features(directory: str | Path | None = None) -> ShapesFeatureNet:
    """Load the evaluation CNN (default: the shipped weights), eval mode, gradients off."""
    from safetensors.torch import load_file

    d = Path(directory) if directory is not None else WEIGHTS_DIR
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(
            f"no evaluation CNN in {d} (config.json + model.safetensors); "
            "train it with `python scripts/train_eval_features.py`"
        )
    cfg = json.loads((d / "config.json").read_text())
    model = ShapesFeatureNet(cfg["widths"], cfg["depths"], cfg["feature_dim"], cfg.get("spatial", 8))
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval().requires_grad_(False)


def feature_info(directory: str | Path | None = None) -> dict[str, Any]:
    """The shipped ``config.json`` (architecture and training record)."""
    d = Path(directory) if directory is not None else WEIGHTS_DIR
    return json.loads((d / "config.json").read_text())


@torch.no_grad()
def extract_features(model: ShapesFeatureNet, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """(N, 3, H, W) images in [-1, 1] -> (N, feature_dim) float64 features."""
    out = [model.features(images[i : i + batch].float()) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, model.feature_dim))
