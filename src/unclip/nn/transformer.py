"""Pre-norm transformer blocks shared by the CLIP towers and the diffusion prior.

One attention implementation (``F.scaled_dot_product_attention``) serves self-attention with an
optional causal mask and key padding mask, and attention over an encoder context (used by
attention pooling). Norms run in fp32 under autocast (:class:`~unclip.nn.norms.LayerNorm32`).

Mask convention everywhere in the package: a boolean ``mask`` is **True where a token is real**
(takes part in attention) and False at padding, like ``text_mask``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unclip.nn.norms import LayerNorm32


def attention_mask(
    key_mask: torch.Tensor | None,
    causal: bool,
    q_len: int,
    k_len: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Combine a key padding mask and a causal mask into one SDPA boolean mask.

    Args:
        key_mask: (B, K) bool, True at real keys; or None.
        causal: whether query i may only see keys j <= i (needs q_len == k_len).
        q_len: number of queries N.
        k_len: number of keys K.
        device: device of the mask.

    Returns:
        (B or 1, 1, N, K) bool mask (True = attend), or None when nothing is masked.
    """
    mask = None
    if causal:
        if q_len != k_len:
            raise ValueError(f"causal attention needs as many queries as keys, got {q_len} and {k_len}")
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask must be a bool tensor, got {key_mask.dtype}")
        km = key_mask[:, None, None, :]
        mask = km if mask is None else (mask & km)
    return mask


class Attention(nn.Module):
    """Multi-head attention: self-attention, or queries from ``x`` over an encoder ``context``.

    Args:
        dim: width of the queries (and of the output).
        heads: number of heads; ``dim`` must be divisible by it.
        context_dim: width of the context; defaults to ``dim``.
        bias: whether the projections have biases.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (B, N, C) queries.
            context: (B, K, Cc) keys/values; None means self-attention over ``x``.
            key_mask: (B, K) bool, True at real keys.
            causal: causal mask (self-attention only).

        Returns:
            (B, N, C).
        """
        b, n, c = x.shape
        ctx = x if context is None else context
        q = self.to_q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.to_kv(ctx).view(b, ctx.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = attention_mask(key_mask, causal, n, ctx.shape[1], x.device)
        # A fused kernel; SDPA's own is_causal flag cannot be combined with a padding mask, so the
        # causal part is folded into the boolean mask instead.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, C/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """Two-layer feed-forward network with GELU. (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)); x + mlp(ln(x)) (GPT-2 / CLIP layout)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = LayerNorm32(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = LayerNorm32(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """x: (B, N, C); key_mask: (B, N) bool. Returns (B, N, C)."""
        x = x + self.attn(self.ln_1(x), key_mask=key_mask, causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`TransformerBlock` (no embeddings, no final norm).

    Args:
        dim: width.
        layers: number of blocks.
        heads: attention heads per block.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)
        so the residual stream's variance does not grow with depth."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        scale = 0.02 / math.sqrt(2 * max(len(self.blocks), 1))
        for blk in self.blocks:
            nn.init.normal_(blk.attn.proj.weight, std=scale)
            nn.init.normal_(blk.mlp.fc2.weight, std=scale)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """x: (B, N, C); key_mask: (B, N) bool, True at real tokens. Returns (B, N, C)."""
        for blk in self.blocks:
            x = blk(x, key_mask=key_mask, causal=causal)
        return x
