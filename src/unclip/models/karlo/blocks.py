"""Building blocks of the Karlo UNets, written to compute what diffusers' unCLIP networks compute.

Kakao Brain's Karlo decoder and super-resolution networks are ADM UNets [ADM §3] with BigGAN-style
residual resampling and, in the decoder, GLIDE's attention that also attends to projected text /
CLIP tokens [GLIDE §4.1, unCLIP §2.1]. The diffusers port (``UNet2DConditionModel`` with the
``SimpleCrossAttn*`` blocks, and ``UNet2DModel`` with ``Resnet*sample*`` blocks) fixes the
numerics we must reproduce; the structure here mirrors its nesting (levels of residual blocks,
optional attention, one resampling residual block) so that the key table stays one rule per
family, but the modules and names are ours.

Everything is channels_last friendly: convolutions act on (B, C, H, W) and attention flattens the
feature map to tokens with a transpose, which is a plain view for channels_last tensors. Norms run
in fp32 under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.norms import GroupNorm32


def sinusoidal_features(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal timestep features in diffusers' ``Timesteps`` parameterisation.

    Frequencies are ``10000 ** (-i / (dim // 2 - freq_shift))``; with ``flip_sin_to_cos`` and
    ``freq_shift == 0`` this is ADM's embedding (cos half first).

    Args:
        t: (B,) timesteps, integer or fractional.
        dim: output width.
        flip_sin_to_cos: cos half first (True) or sin half first.
        freq_shift: shift of the frequency denominator.

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """Pre-norm residual block conditioned on the timestep embedding, optionally resampling.

    ``h = conv1(resample(silu(norm1(x))))``, then the embedding enters either as an added bias
    before ``norm2`` ("default") or as a FiLM scale/shift after it ("scale_shift", ADM's
    ``use_scale_shift_norm``); ``out = skip(resample(x)) + conv2(dropout(silu(h)))``.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        emb_dim: E, width of the embedding.
        groups: GroupNorm groups.
        eps: GroupNorm epsilon.
        scale_shift: FiLM conditioning (True) or additive (False).
        dropout: dropout before ``conv2``.
        resample: "down" (2x2 average pooling) or "up" (nearest x2) applied to both paths after
            the first activation, or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        groups: int,
        eps: float,
        scale_shift: bool,
        dropout: float = 0.0,
        resample: Literal["down", "up"] | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = resample
        self.norm1 = GroupNorm32(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = GroupNorm32(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W); emb: (B, E) already passed through SiLU. Returns (B, C_out, H', W')."""
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        x = self._resample(x)
        e = self.emb_proj(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class KarloAttention(nn.Module):
    """Residual multi-head attention over a feature map, optionally also over context tokens.

    With ``context_dim`` set this is GLIDE's ``encoder_kv`` attention (diffusers'
    ``AttnAddedKVProcessor``): the context tokens get their own key/value projections and are
    put in front of the pixels' keys/values, so each pixel attends jointly to the caption / CLIP
    tokens and to every pixel. Without it, plain self-attention (the super-resolution mid block).

    Args:
        channels: C (queries, keys and values all have width C).
        head_dim: channels per head; C must be divisible by it.
        norm_groups: groups of the GroupNorm on the input, or None for no norm.
        norm_eps: that GroupNorm's epsilon.
        context_dim: width of the context tokens, or None.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        norm_groups: int | None,
        norm_eps: float,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"{channels} channels are not divisible into heads of {head_dim}")
        self.heads = channels // head_dim
        self.norm = GroupNorm32(norm_groups, channels, eps=norm_eps) if norm_groups else None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.context_k = nn.Linear(context_dim, channels) if context_dim else None
        self.context_v = nn.Linear(context_dim, channels) if context_dim else None
        self.to_out = nn.Linear(channels, channels)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (B, C, H, W).
            context: (B, L, context_dim); required when built with ``context_dim``.
            context_mask: (B, L) bool, True at tokens to attend to; pixels are always attended to.

        Returns:
            (B, C, H, W): x plus the attention output.
        """
        b, c, height, width = x.shape
        h = self.norm(x) if self.norm is not None else x
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        mask = None
        if self.context_k is not None:
            if context is None:
                raise ValueError("this attention layer needs context tokens")
            # Context keys/values first, then the pixels' (GLIDE / Karlo order).
            k = torch.cat([self.context_k(context).to(k.dtype), k], dim=1)  # (B, L + HW, C)
            v = torch.cat([self.context_v(context).to(v.dtype), v], dim=1)
            if context_mask is not None:
                pixels = torch.ones(b, height * width, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.to(torch.bool), pixels], dim=1)[:, None, None, :]
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))  # (B, nh, S, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, HW, d)
        out = self.to_out(out.transpose(1, 2).flatten(2))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, height, width)


ResFactory = Callable[..., ResBlock]
AttnFactory = Callable[[int], KarloAttention]


class DownLevel(nn.Module):
    """One encoder resolution: residual blocks (each optionally followed by attention), then an
    optional down-sampling residual block. Every output is kept for a skip connection.

    Args:
        in_channels: C_in.
        channels: C, the level's width.
        num_blocks: residual blocks.
        res: builds a ResBlock from ``(in, out, resample=...)``.
        attn: builds an attention layer for a width, or None for a convolution-only level.
        downsample: end with a down-sampling residual block.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_blocks: int,
        res: ResFactory,
        attn: AttnFactory | None,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            res(in_channels if i == 0 else channels, channels) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(attn(channels) for _ in range(num_blocks)) if attn else None
        self.downsample = res(channels, channels, resample="down") if downsample else None

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        skips: list[torch.Tensor],
    ) -> torch.Tensor:
        """h: (B, C_in, H, W) -> (B, C, H', W'); appends every intermediate output to ``skips``."""
        for i, block in enumerate(self.res):
            h = block(h, emb)
            if self.attn is not None:
                h = self.attn[i](h, context, context_mask)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h, emb)
            skips.append(h)
        return h


class MidLevel(nn.Module):
    """The bottleneck: residual block, optional attention, residual block."""

    def __init__(self, channels: int, res: ResFactory, attn: AttnFactory | None) -> None:
        super().__init__()
        self.res = nn.ModuleList([res(channels, channels), res(channels, channels)])
        self.attn = attn(channels) if attn else None

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """h: (B, C, H, W) -> (B, C, H, W)."""
        h = self.res[0](h, emb)
        if self.attn is not None:
            h = self.attn(h, context, context_mask)
        return self.res[1](h, emb)


class UpLevel(nn.Module):
    """One decoder resolution: residual blocks that each first concatenate one skip (the last one
    pushed comes first), each optionally followed by attention, then an optional up-sampling
    residual block.

    Args:
        in_channels: C_in, the width arriving from below.
        skip_channels: widths of the skips this level consumes, in consumption order.
        channels: C, the level's width.
        res: builds a ResBlock from ``(in, out, resample=...)``.
        attn: builds an attention layer for a width, or None.
        upsample: end with an up-sampling residual block.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: list[int],
        channels: int,
        res: ResFactory,
        attn: AttnFactory | None,
        upsample: bool,
    ) -> None:
        super().__init__()
        widths = [in_channels] + [channels] * (len(skip_channels) - 1)
        self.res = nn.ModuleList(res(w + s, channels) for w, s in zip(widths, skip_channels))
        self.attn = nn.ModuleList(attn(channels) for _ in skip_channels) if attn else None
        self.upsample = res(channels, channels, resample="up") if upsample else None

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        skips: list[torch.Tensor],
    ) -> torch.Tensor:
        """h: (B, C_in, H, W) -> (B, C, H', W'); pops one skip per residual block."""
        for i, block in enumerate(self.res):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if self.attn is not None:
                h = self.attn[i](h, context, context_mask)
        if self.upsample is not None:
            h = self.upsample(h, emb)
        return h
