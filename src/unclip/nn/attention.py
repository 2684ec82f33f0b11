"""Spatial self-attention over a feature map, optionally also over encoder context tokens.

:class:`unclip.nn.transformer.Attention` works on token sequences and takes its keys either from
the queries or from a context. The UNet needs both at once: GLIDE / ADM's ``encoder_kv`` projects
the context tokens to each attention layer's width and *concatenates* them to the layer's own
keys and values, so every pixel attends jointly to all pixels and to the caption / CLIP tokens
[GLIDE §4.1, unCLIP §2.1]. One fused ``F.scaled_dot_product_attention`` call does the work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.embeddings import LearnedPos2d, zero_module
from unclip.nn.norms import GroupNorm32
from unclip.nn.transformer import attention_mask


class SpatialAttention(nn.Module):
    """Residual multi-head attention block for (B, C, H, W) feature maps.

    Args:
        channels: C.
        num_head_channels: width of each head (C must be divisible by it).
        context_dim: width of the context tokens, or None for pure self-attention.
        pos_size: side of a learned positional map added to the normalised features before the
            q/k/v projection (None: no positions, the ADM default).
    """

    def __init__(
        self,
        channels: int,
        num_head_channels: int,
        context_dim: int | None = None,
        pos_size: int | None = None,
    ) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels are not divisible into heads of {num_head_channels}")
        self.heads = channels // num_head_channels
        self.norm = GroupNorm32(math.gcd(32, channels), channels)
        self.pos = LearnedPos2d(channels, pos_size) if pos_size else None
        # 1x1 convolutions rather than Linear so channels_last tensors need no layout change.
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (B, C, H, W).
            context: (B, L, Cc) tokens whose keys/values join the pixels'; ignored when the block
                was built without ``context_dim``.
            context_mask: (B, L) bool, True at real tokens.

        Returns:
            (B, C, H, W): x plus the attention output.
        """
        b, c, h, w = x.shape
        nh, hc = self.heads, c // self.heads
        hn = self.norm(x)
        if self.pos is not None:
            hn = self.pos(hn)
        # (B, 3C, H, W) -> (B, HW, 3, heads, hc) -> 3 x (B, heads, HW, hc); the permute is free
        # for channels_last tensors.
        qkv = self.qkv(hn).permute(0, 2, 3, 1).reshape(b, h * w, 3, nh, hc).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        mask = None
        if self.encoder_kv is not None and context is not None:
            ekv = self.encoder_kv(context)
            ekv = ekv.reshape(b, context.shape[1], 2, nh, hc).permute(2, 0, 3, 1, 4).to(k.dtype)
            k = torch.cat([ekv[0], k], dim=2)
            v = torch.cat([ekv[1], v], dim=2)
            if context_mask is not None:
                full = torch.cat([context_mask, context_mask.new_ones(b, h * w)], dim=1)
                mask = attention_mask(full, False, h * w, full.shape[1], x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, HW, hc)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj_out(out)
