"""The one interface every CLIP backend offers to the prior, the decoder and the pipeline.

Paper §2 / Fig. 2: CLIP gives the text embedding z_t (and the caption's token sequence) that the
prior conditions on, and the image embedding z_i that the decoder inverts. CLIP stays frozen while
the later stages train, so ``encode_text`` / ``encode_image`` run without gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from unclip.clip.preprocess import ImageInput


@dataclasses.dataclass
class TextEncoding:
    """What a CLIP text encoder gives the later stages.

    Attributes:
        text_emb: (B, D) pooled text embedding, L2-normalised (z_t in the paper).
        text_tokens: (B, L, W) per-token outputs of the text tower (zero at padding); what the
            prior and decoder attend to.
        text_mask: (B, L) bool, True at real tokens.
    """

    text_emb: torch.Tensor
    text_tokens: torch.Tensor
    text_mask: torch.Tensor

    def __len__(self) -> int:
        return self.text_emb.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> TextEncoding:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextEncoding(self.text_emb[index], self.text_tokens[index], self.text_mask[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoding:
        """Move to a device; ``dtype`` applies to the float tensors only (the mask stays bool)."""
        return TextEncoding(
            self.text_emb.to(device=device, dtype=dtype),
            self.text_tokens.to(device=device, dtype=dtype),
            self.text_mask.to(device=device),
        )

    def repeat_interleave(self, n: int) -> TextEncoding:
        """Each prompt repeated ``n`` times in place (B -> B * n), for several samples per prompt."""
        return TextEncoding(
            self.text_emb.repeat_interleave(n, 0),
            self.text_tokens.repeat_interleave(n, 0),
            self.text_mask.repeat_interleave(n, 0),
        )

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        return TextEncoding(
            torch.cat([p.text_emb for p in parts]),
            torch.cat([p.text_tokens for p in parts]),
            torch.cat([p.text_mask for p in parts]),
        )


@runtime_checkable
class ClipEncoder(Protocol):
    """A frozen CLIP as the rest of the package sees it.

    Implemented by :class:`unclip.clip.model.ClipModel` (ours) and the adapters in
    :mod:`unclip.clip.adapters` (``transformers`` CLIPModel, ``open_clip``).

    Attributes:
        embed_dim: D, the width of ``text_emb`` and ``image_emb``.
        image_size: side of the square input of the image tower, in pixels.
        token_width: W, the width of ``text_tokens``.
        max_text_len: L, the fixed token length (longer prompts are truncated with a warning).
        tokenizer: ``tokenizer(texts) -> (ids (B, L) int64, mask (B, L) bool)``.
        preprocess: ``preprocess(images) -> (B, 3, S, S)`` normalised pixels: resize the shorter
            side, centre crop, normalise; PIL images of any mode or [-1, 1] tensors.
    """

    embed_dim: int
    image_size: int
    token_width: int
    max_text_len: int
    tokenizer: Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
    preprocess: Callable[[ImageInput], torch.Tensor]

    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        """Prompts -> :class:`TextEncoding` (float32, on the encoder's device).

        Raises:
            UserError: an empty prompt. Prompts over ``max_text_len`` tokens are truncated and
                a warning is logged.
        """
        ...

    def encode_image(self, images: ImageInput, preprocessed: bool = False) -> torch.Tensor:
        """Images -> (B, D) L2-normalised float32 image embeddings (z_i).

        Args:
            images: PIL images (any mode and size) or tensors ``(B, 3, H, W)`` / ``(3, H, W)`` in
                [-1, 1] (resized and centre-cropped as needed); with ``preprocessed=True``, a tensor
                that is already the output of ``preprocess`` (normalised, ``image_size`` square).
            preprocessed: skip preprocessing.
        """
        ...
