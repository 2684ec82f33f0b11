"""The training-loop config shared by every stage (CLIP, prior, decoder, upsamplers)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from unclip.config import Config


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """How to train (not what): optimisation, precision, and checkpoint/log cadence.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this number).
        batch_size: samples per optimizer step over all processes (split into ``grad_accum``
            micro-batches per process).
        grad_accum: micro-batches per step; ``batch_size`` must be divisible by it. Note that for a
            contrastive loss, negatives come from the micro-batch only.
        lr: peak learning rate.
        warmup: linear warmup steps from 0 to ``lr``.
        min_lr_ratio: cosine decay ends at ``lr * min_lr_ratio`` at ``steps``.
        weight_decay: AdamW decay, applied to Linear/Conv weights only.
        betas, eps: AdamW moments.
        grad_clip: max global gradient norm; 0 disables clipping.
        ema_decay: EMA of the weights; 0 disables it. Exported weights are the EMA ones when on.
        precision: autocast dtype; "auto" = bf16 on CPU and bf16-capable GPUs, else fp16.
        channels_last: NHWC memory format for conv-heavy models (faster on CPU with bf16).
        save_every: steps between atomic training checkpoints (and exports).
        log_every: steps between CSV log rows.
        sample_every: steps between calls of the stage's sample/eval hook; 0 disables it.
        seed: seeds torch, numpy, python and the data stream.
        time_budget: wall-clock seconds the training loop may take over all its sessions; 0 = off.
            The schedule then ends at the step that fits: the loop measures its step rate after
            a few steps and shrinks ``steps`` (never grows it), re-aiming as the rate moves, so the
            cosine decay still finishes.
        compile: ``torch.compile`` (inductor) the model's forward in place: calls of the module
            itself (the decoder's and upsampler's denoiser, in training and in-run sampling) run
            compiled; weights, checkpoints and exports are unchanged. Compiling costs a minute or
            more per input shape; docs/benchmarks.md has the measured gain.
    """

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 3e-4
    warmup: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = False
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 0
    seed: int = 0
    time_budget: float = 0.0
    compile: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps must be >= 0, batch_size and grad_accum >= 1")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.lr <= 0 or self.warmup < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0, warmup >= 0 and min_lr_ratio in [0, 1]")
        if self.save_every < 1 or self.log_every < 1 or self.sample_every < 0:
            raise ValueError("save_every and log_every must be >= 1, sample_every >= 0")
        if not self.time_budget >= 0:
            raise ValueError(f"time_budget must be >= 0 seconds, got {self.time_budget}")

    @property
    def micro_batch_size(self) -> int:
        """Samples per forward in this process: ``batch_size / (grad_accum * world size)``.

        ``batch_size`` is the global batch of one optimizer step, so a recipe means the same
        update on one process or many (docs/scale-out.md).
        """
        from unclip.train.distributed import dist_info

        world = dist_info().world_size
        if self.batch_size % (self.grad_accum * world):
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum} "
                f"x {world} processes"
            )
        return self.batch_size // (self.grad_accum * world)
