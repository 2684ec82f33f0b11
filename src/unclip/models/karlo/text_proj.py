"""Karlo's text projection (diffusers ``UnCLIPTextProjModel``), free of diffusers [paper §2.1].

It turns the CLIP image embedding, the pooled CLIP text embedding and the CLIP text tokens into
the decoder's additive time embedding (projected image + projected text embedding) and its
context: four tokens made from the image embedding followed by the projected, LayerNorm'd text
tokens. The learned null image embedding of classifier-free guidance lives here too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.config import Config
from unclip.errors import UserError
from unclip.nn.norms import LayerNorm32


@dataclasses.dataclass(frozen=True)
class KarloTextProjConfig(Config):
    """Karlo's text projection (diffusers ``UnCLIPTextProjModel``); defaults are Karlo's.

    Attributes:
        clip_embeddings_dim: D, width of the CLIP image / text embeddings and text tokens.
        clip_extra_context_tokens: number of context tokens made from the image embedding.
        time_embed_dim: E, the decoder's time-embedding width.
        cross_attention_dim: X, the decoder's context width.
    """

    clip_embeddings_dim: int = 768
    clip_extra_context_tokens: int = 4
    time_embed_dim: int = 1280
    cross_attention_dim: int = 1536

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> KarloTextProjConfig:
        """Read a diffusers ``UnCLIPTextProjModel`` ``config.json`` dict.

        Raises:
            UserError: a missing required field or an unknown one.
        """
        src = {k: v for k, v in config.items() if not k.startswith("_")}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(src) - fields)
        if unknown:
            raise UserError(f"diffusers UnCLIPTextProjModel config field {unknown[0]!r} is unknown")
        for name in ("time_embed_dim", "cross_attention_dim"):
            if name not in src:
                raise UserError(f"diffusers UnCLIPTextProjModel config lacks the required field {name!r}")
        return cls.from_dict(src)


class KarloTextProj(nn.Module):
    """Karlo's conditioning for the decoder [unCLIP §2.1].

    "We project and add CLIP embeddings to the existing timestep embedding, and project CLIP
    embeddings into four extra tokens of context that are concatenated to the sequence of outputs
    from the GLIDE text encoder." Karlo adds the projected pooled text embedding to the timestep
    embedding too, and uses CLIP's text tokens (projected, LayerNorm-ed) as the text sequence.

    ``null_image_emb`` is the learned image embedding of the unconditional branch of
    classifier-free guidance; the caller substitutes it for ``image_emb`` (no batching here).

    Args:
        config: the widths.
    """

    def __init__(self, config: KarloTextProjConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d, x = cfg.clip_embeddings_dim, cfg.cross_attention_dim
        self.null_image_emb = nn.Parameter(torch.zeros(d))
        self.text_emb_to_time = nn.Linear(d, cfg.time_embed_dim)
        self.image_emb_to_time = nn.Linear(d, cfg.time_embed_dim)
        self.image_emb_to_tokens = nn.Linear(d, cfg.clip_extra_context_tokens * x)
        self.text_tokens_proj = nn.Linear(d, x)
        self.text_tokens_norm = LayerNorm32(x)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, text_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the decoder's conditioning.

        Args:
            image_emb: (B, D) CLIP image embedding (or ``null_image_emb`` expanded).
            text_emb: (B, D) pooled CLIP text embedding.
            text_tokens: (B, L, D) CLIP text-encoder hidden states.

        Returns:
            context: (B, N + L, X), the N image tokens then the text tokens.
            additive_emb: (B, E), to add to the decoder's time embedding.
        """
        b, n = image_emb.shape[0], self.config.clip_extra_context_tokens
        additive = self.image_emb_to_time(image_emb) + self.text_emb_to_time(text_emb)
        # The N tokens are interleaved channel-major in the projection's output: (B, X, N).
        image_tokens = self.image_emb_to_tokens(image_emb).reshape(b, -1, n).transpose(1, 2)
        text = self.text_tokens_norm(self.text_tokens_proj(text_tokens))
        return torch.cat([image_tokens, text.to(image_tokens.dtype)], dim=1), additive

    def context_mask(self, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) bool text mask -> (B, N + L) mask for :meth:`forward`'s context (image tokens kept)."""
        return F.pad(text_mask.to(torch.bool), (self.config.clip_extra_context_tokens, 0), value=True)


TEXT_PROJ_KEYS: list[tuple[str, str | None]] = [
    (r"learned_classifier_free_guidance_embeddings", "null_image_emb"),
    (r"embedding_proj\.(weight|bias)", r"text_emb_to_time.\1"),
    (r"clip_image_embeddings_project_to_time_embeddings\.(weight|bias)", r"image_emb_to_time.\1"),
    (r"clip_extra_context_tokens_proj\.(weight|bias)", r"image_emb_to_tokens.\1"),
    (r"encoder_hidden_states_proj\.(weight|bias)", r"text_tokens_proj.\1"),
    (r"text_encoder_hidden_states_norm\.(weight|bias)", r"text_tokens_norm.\1"),
]
"""diffusers ``UnCLIPTextProjModel`` keys -> :class:`KarloTextProj` keys."""
