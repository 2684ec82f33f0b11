"""A small ResNet image tower with CLIP's attention pooling.

CLIP (Radford et al. 2021) trains ResNet and ViT image encoders; unCLIP (paper App. C) uses a ViT.
At the shapes world's scale a from-scratch ViT learns position and shape far more slowly than a
small convolutional network (measured in docs/clip.md: supervised shape/position probes of the
same width and budget), so the shapes presets use this tower.

Layout for an S px input::

    (B,3,S,S) -> conv3x3 stem (width channels)
              -> stage 1..3: conv3x3 -> 2x2 max-pool -> residual blocks   (channels w, 2w, 4w)
              -> (B, 4w, S/8, S/8) tokens + learned positions
              -> attention pooling (the query is the mean token, as in CLIP's AttentionPool2d)
              -> LayerNorm -> Linear -> (B, D)

Norms are fp32 GroupNorm / LayerNorm so bf16 autocast leaves the statistics in fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from unclip.nn.norms import GroupNorm32, LayerNorm32
from unclip.nn.transformer import Attention

if TYPE_CHECKING:
    from unclip.clip.config import VisionConfig


def _norm(channels: int) -> nn.Module:
    return GroupNorm32(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    """conv3x3 -> GN -> GELU -> conv3x3 -> GN, plus the input; GELU after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(channels),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _down(cin: int, cout: int) -> nn.Module:
    """conv3x3 -> GN -> GELU -> 2x2 max-pool. Max-pooling learned the shapes world's small-object
    shapes about twice as fast as a stride-2 convolution in the supervised probe (docs/clip.md)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.GELU(), nn.MaxPool2d(2)
    )


class ResNetTower(nn.Module):
    """Convolutional image tower: stem, three downsampling stages, attention pooling, projection.

    Args:
        cfg: the tower's config (``arch="resnet"``; ``width`` is the first stage's channels,
            ``layers`` the residual blocks per stage, ``heads`` the pooling heads).
        embed_dim: D of the joint space.
    """

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [w, 2 * w, 4 * w]
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), _norm(w), nn.GELU())
        stages: list[nn.Module] = []
        cin = w
        for c in chans:
            stages.append(nn.Sequential(_down(cin, c), *[ResBlock(c) for _ in range(cfg.layers)]))
            cin = c
        self.stages = nn.Sequential(*stages)
        grid = cfg.image_size // 8
        c = chans[-1]
        self.pos_emb = nn.Parameter(torch.randn(1, grid * grid + 1, c) * c**-0.5)
        self.pool_attn = Attention(c, cfg.heads)
        self.ln_post = LayerNorm32(c)
        self.proj = nn.Linear(c, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=c**-0.5)
        # Per-channel pixel mean and std -> pooled features; zero at init, so a tower fine-tuned
        # with it (``--init-from`` a run without it) starts exactly where that run ended.
        # (A plain None, not a registered empty module: that would silently swallow its keys.)
        self.global_color: nn.Linear | None = None
        if cfg.global_color:
            self.global_color = nn.Linear(6, c)
            nn.init.zeros_(self.global_color.weight)
            nn.init.zeros_(self.global_color.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.body[-1].weight)  # each block starts as the identity

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, S, S) normalised. Returns unnormalised image features (B, D)."""
        x = self.stages(self.stem(pixels))  # (B, 4w, S/8, S/8)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1) + self.pos_emb.to(x.dtype)
        pooled = self.pool_attn(x[:, :1], context=x)[:, 0]
        if self.global_color is not None:
            stats = torch.cat([pixels.mean(dim=(2, 3)), pixels.std(dim=(2, 3))], dim=1)  # (B, 6)
            pooled = pooled + self.global_color(stats.to(pooled.dtype))
        return self.proj(self.ln_post(pooled))

    def new_zero_init_keys(self) -> list[str]:
        """Parameters that start at zero and may be absent from an ``--init-from`` checkpoint."""
        return ["global_color.weight", "global_color.bias"] if self.global_color is not None else []
