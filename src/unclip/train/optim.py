"""AdamW with decay on matrices only, and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from unclip.train.config import TrainConfig

# Modules whose ``weight`` is a projection that weight decay should shrink. Everything else
# (biases, norms, embeddings, position/class tokens, the CLIP temperature) is not decayed:
# decaying them pulls norms towards zero gain and embeddings towards collapse for no benefit.
DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Returns:
        ``[{"params": [...], "weight_decay": wd}, {"params": [...], "weight_decay": 0.0}]``
        (empty groups dropped), in a deterministic order.
    """
    decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, DECAYED) and getattr(module, "weight", None) is not None:
            decay_ids.add(id(module.weight))
    decay, no_decay, seen = [], [], set()
    for _name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if id(p) in decay_ids else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(params: Iterable[dict] | nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (or explicit groups) with the config's hyper-parameters."""
    groups = param_groups(params, config.weight_decay) if isinstance(params, nn.Module) else list(params)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


class WarmupCosine:
    """lr(step): linear warmup 0 -> peak over ``warmup`` steps, then cosine to ``peak * min_ratio``.

    A pure function of the step, so resuming needs only the step (no scheduler state to drift).
    """

    def __init__(self, peak: float, warmup: int, total: int, min_ratio: float = 0.0) -> None:
        self.peak, self.warmup, self.total, self.min_ratio = peak, warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        floor = self.peak * self.min_ratio
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step`` (times the group's optional ``lr_scale``)."""
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    @classmethod
    def from_config(cls, config: TrainConfig) -> WarmupCosine:
        return cls(config.lr, config.warmup, config.steps, config.min_lr_ratio)

    def state_dict(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total, "min_ratio": self.min_ratio}
