"""Karlo's diffusion prior network (diffusers ``PriorTransformer``), without diffusers.

The same idea as our own prior (:mod:`unclip.models.prior`, paper §2.2): a causal transformer
reads, in order,

    [caption tokens (L), text_emb, timestep, noised x_t, learned "prd" query]

and the query's output predicts the (normalised) clean image embedding. The details below are
Karlo's, kept exactly so that converted weights reproduce the reference:

* Caption padding and causality are one *additive* mask of -10000 (not -inf, not a boolean
  mask): padded caption keys get -10000, keys after the query another -10000. A query whose keys
  are all masked therefore still attends (softly, by how many -10000s each key got) instead of
  producing NaNs, which is what the reference computes.
* The timestep embedding is sinusoidal (cos half first) over the full transformer width,
  followed by Linear-SiLU-Linear (:class:`unclip.nn.embeddings.TimestepMLP`).
* The diffusion runs on embeddings standardised per dimension: ``clip_mean`` and ``clip_std``
  (stored with the weights) map back to raw CLIP image embeddings (:meth:`KarloPriorNet.unnormalise`,
  diffusers' ``post_process_latents``). The caption's ``text_emb`` goes in unnormalised.

Weights convert with :data:`PRIOR_KEYS`::

    load_mapped(KarloPriorNet(config), diffusers_state_dict, PRIOR_KEYS, "prior")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from unclip.config import Config
from unclip.errors import UserError
from unclip.nn.embeddings import TimestepMLP
from unclip.nn.norms import LayerNorm32
from unclip.nn.transformer import MLP

# The reference's mask value: large enough that exp() underflows to exactly 0 in fp32 next to an
# unmasked key, small enough to stay finite in fp16.
MASK_VALUE = -10000.0

# diffusers config keys that carry no architecture (and ``dropout``, a training-only setting).
_BOOKKEEPING = {"dropout"}


@dataclasses.dataclass(frozen=True)
class KarloPriorConfig(Config):
    """Architecture of a diffusers ``PriorTransformer`` (field names and defaults are diffusers',
    which are Karlo's).

    Attributes:
        num_attention_heads: heads per attention layer.
        attention_head_dim: width of a head; the transformer width is heads * head_dim.
        num_layers: transformer blocks.
        embedding_dim: D, the width of x_t and of the caption tokens (CLIP ViT-L/14: 768).
        num_embeddings: L, caption tokens (CLIP's 77).
        additional_embeddings: tokens after the caption: text_emb, timestep, x_t and, with
            ``added_emb_type="prd"``, the query (so 4 with the query, 3 without).
        norm_in_type: "layer" for a LayerNorm on the input sequence, or None.
        embedding_proj_norm_type: "layer" for a LayerNorm on text_emb before its projection, or None.
        encoder_hid_proj_type: "linear" projects the caption tokens to the width; None feeds them
            unprojected (they must then be as wide as the transformer).
        added_emb_type: "prd" appends the learned query token whose output is the prediction;
            None predicts from x_t's own position.
        embedding_proj_dim: width of text_emb (None: embedding_dim).
        clip_embed_dim: width of the prediction and of clip_mean/clip_std (None: embedding_dim).
    """

    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768
    num_embeddings: int = 77
    additional_embeddings: int = 4
    norm_in_type: Literal["layer"] | None = None
    embedding_proj_norm_type: Literal["layer"] | None = None
    encoder_hid_proj_type: Literal["linear"] | None = "linear"
    added_emb_type: Literal["prd"] | None = "prd"
    embedding_proj_dim: int | None = None
    clip_embed_dim: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "num_attention_heads",
            "attention_head_dim",
            "num_layers",
            "embedding_dim",
            "num_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("embedding_proj_dim", "clip_embed_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # The reference pads the caption mask by additional_embeddings and sizes the positional
        # table by it; any other value than the real number of extra tokens fails (or silently
        # shifts positions) there, so it is refused here.
        extra = 4 if self.added_emb_type == "prd" else 3
        if self.additional_embeddings != extra:
            raise ValueError(
                f"additional_embeddings must be {extra} with added_emb_type={self.added_emb_type!r}, "
                f"got {self.additional_embeddings}"
            )

    @property
    def width(self) -> int:
        """The transformer width (diffusers' inner_dim)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def text_width(self) -> int:
        """W of the caption tokens the network takes."""
        return self.embedding_dim if self.encoder_hid_proj_type == "linear" else self.width

    @property
    def text_emb_dim(self) -> int:
        return self.embedding_proj_dim or self.embedding_dim

    @property
    def clip_dim(self) -> int:
        """D of the prediction and of clip_mean / clip_std."""
        return self.clip_embed_dim or self.embedding_dim

    @property
    def seq_len(self) -> int:
        return self.num_embeddings + self.additional_embeddings

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> KarloPriorConfig:
        """Read a diffusers ``prior/config.json`` dict.

        Keys starting with "_" (``_class_name``, ``_diffusers_version``, ...) and ``dropout`` are
        ignored; missing keys take diffusers' defaults.

        Raises:
            UserError: another class, an unknown key, or a value this implementation does not
                support (one line naming the field).
        """
        name = config.get("_class_name", "PriorTransformer")
        if name != "PriorTransformer":
            raise UserError(f"prior config: expected a PriorTransformer, got {name}")
        data = {k: v for k, v in config.items() if not k.startswith("_") and k not in _BOOKKEEPING}
        act = data.pop("time_embed_act_fn", "silu")
        if act not in ("silu", "swish"):
            raise UserError(f"prior config: time_embed_act_fn {act!r} is not supported (only 'silu')")
        time_dim = data.pop("time_embed_dim", None)
        cfg = cls.from_dict(data, _where="prior config")
        if time_dim not in (None, cfg.width):
            raise UserError(
                f"prior config: time_embed_dim {time_dim} is not supported (only the transformer width, {cfg.width})"
            )
        return cfg


class _Attention(nn.Module):
    """Self-attention with an additive float mask (B, 1, S, S); separate q/k/v like the reference."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, c // self.heads).transpose(1, 2)  # (B, h, S, C/h)

        out = F.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=bias.to(x.dtype)
        )
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class _Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)); x + mlp(ln(x)) with an exact-GELU MLP of 4x width."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm32(dim)
        self.attn = _Attention(dim, heads)
        self.ln_2 = LayerNorm32(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), bias)
        return x + self.mlp(self.ln_2(x))


def attention_bias(text_mask: torch.Tensor, extra: int, dtype: torch.dtype) -> torch.Tensor:
    """Karlo's additive mask: caption padding and causality, -10000 each.

    Args:
        text_mask: (B, L) bool, True at real caption tokens.
        extra: tokens after the caption (never masked as keys, except by causality).
        dtype: dtype of the mask arithmetic (the reference uses the hidden states').

    Returns:
        (B, 1, L + extra, L + extra) float mask, added to the attention logits.
    """
    if text_mask.dtype != torch.bool:
        raise TypeError(f"text_mask must be a bool tensor, got {text_mask.dtype}")
    keys = F.pad((1.0 - text_mask.to(dtype)) * MASK_VALUE, (0, extra), value=0.0)  # (B, S)
    s = keys.shape[1]
    causal = torch.full((s, s), MASK_VALUE, dtype=dtype, device=keys.device).triu(1)
    return (keys[:, None, :] + causal)[:, None]


class KarloPriorNet(nn.Module):
    """The PriorTransformer: (x_t, t, caption) -> predicted normalised image embedding.

    Args:
        config: the architecture.
    """

    def __init__(self, config: KarloPriorConfig) -> None:
        super().__init__()
        self.config = config
        c = config.width
        self.time_embed = TimestepMLP(c, c)
        self.x_proj = nn.Linear(config.embedding_dim, c)
        self.text_emb_norm = LayerNorm32(config.text_emb_dim) if config.embedding_proj_norm_type else None
        self.text_emb_proj = nn.Linear(config.text_emb_dim, c)
        self.text_tokens_proj = nn.Linear(config.embedding_dim, c) if config.encoder_hid_proj_type else None
        self.pos_emb = nn.Parameter(torch.zeros(1, config.seq_len, c))
        self.query = nn.Parameter(torch.zeros(1, 1, c)) if config.added_emb_type == "prd" else None
        self.ln_in = LayerNorm32(c) if config.norm_in_type else None
        self.blocks = nn.ModuleList(_Block(c, config.num_attention_heads) for _ in range(config.num_layers))
        self.ln_out = LayerNorm32(c)
        self.out_proj = nn.Linear(c, config.clip_dim)
        # Per-dimension statistics of the training embeddings (loaded with the weights).
        self.register_buffer("clip_mean", torch.zeros(1, config.clip_dim))
        self.register_buffer("clip_std", torch.ones(1, config.clip_dim))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the clean embedding (Karlo trains the prior on x_0).

        Args:
            x: (B, D) noisy normalised image embedding x_t.
            t: (B,) or () timesteps.
            text_emb: (B, D) projected CLIP text embedding, unnormalised.
            text_hidden: (B, L, W) CLIP text last hidden states (L = num_embeddings).
            text_mask: (B, L) bool, True at real caption tokens.

        Returns:
            (B, D) prediction, in the normalised space of x.
        """
        cfg = self.config
        b = x.shape[0]
        if tuple(text_hidden.shape[1:]) != (cfg.num_embeddings, cfg.text_width):
            raise ValueError(
                f"text_hidden must have shape (B, {cfg.num_embeddings}, {cfg.text_width}), "
                f"got {tuple(text_hidden.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(b)

        # 1. The input sequence [caption (L), text_emb, t, x_t, (query)], each token (B, *, C).
        h_x = self.x_proj(x)[:, None]
        dtype = h_x.dtype
        emb = self.text_emb_norm(text_emb) if self.text_emb_norm is not None else text_emb
        parts = [
            text_hidden if self.text_tokens_proj is None else self.text_tokens_proj(text_hidden),
            self.text_emb_proj(emb)[:, None],
            self.time_embed(t)[:, None],
            h_x,
        ]
        if self.query is not None:
            parts.append(self.query.expand(b, -1, -1))
        h = torch.cat([p.to(dtype) for p in parts], dim=1) + self.pos_emb.to(dtype)  # (B, S, C)

        # 2. Causal transformer under Karlo's additive mask.
        bias = attention_bias(text_mask, cfg.additional_embeddings, dtype)
        if self.ln_in is not None:
            h = self.ln_in(h)
        for block in self.blocks:
            h = block(h, bias)
        h = self.ln_out(h)

        # 3. Read out at the query (or, without one, at x_t's position).
        out = h[:, -1] if self.query is not None else h[:, cfg.num_embeddings + 2]
        return self.out_proj(out)

    def unnormalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised -> raw CLIP image embedding: x * clip_std + clip_mean."""
        return x * self.clip_std.to(x) + self.clip_mean.to(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) raw CLIP image embedding -> the prior's space (inverse of :meth:`unnormalise`)."""
        return (x - self.clip_mean.to(x)) / self.clip_std.to(x)


#: diffusers PriorTransformer state dict -> :class:`KarloPriorNet` (see :mod:`unclip.convert.keys`).
PRIOR_KEYS: list[tuple[str, str | None]] = [
    (r"time_embedding\.linear_1\.(weight|bias)", r"time_embed.mlp.0.\1"),
    (r"time_embedding\.linear_2\.(weight|bias)", r"time_embed.mlp.2.\1"),
    (r"proj_in\.(weight|bias)", r"x_proj.\1"),
    (r"embedding_proj_norm\.(weight|bias)", r"text_emb_norm.\1"),
    (r"embedding_proj\.(weight|bias)", r"text_emb_proj.\1"),
    (r"encoder_hidden_states_proj\.(weight|bias)", r"text_tokens_proj.\1"),
    (r"positional_embedding", "pos_emb"),
    (r"prd_embedding", "query"),
    (r"norm_in\.(weight|bias)", r"ln_in.\1"),
    (r"transformer_blocks\.(\d+)\.norm1\.(weight|bias)", r"blocks.\1.ln_1.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_q\.(weight|bias)", r"blocks.\1.attn.q.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_k\.(weight|bias)", r"blocks.\1.attn.k.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_v\.(weight|bias)", r"blocks.\1.attn.v.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.norm3\.(weight|bias)", r"blocks.\1.ln_2.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"norm_out\.(weight|bias)", r"ln_out.\1"),
    (r"proj_to_clip_embeddings\.(weight|bias)", r"out_proj.\1"),
    (r"clip_mean", "clip_mean"),
    (r"clip_std", "clip_std"),
    # A constant the reference rebuilds (non-persistent, but tolerated if a checkpoint has it).
    (r"causal_attention_mask", None),
]
