"""Pretrained CLIPs from other libraries behind :class:`~unclip.clip.interface.ClipEncoder`.

* :class:`HFClipAdapter` wraps a ``transformers`` ``CLIPModel`` (any local checkpoint directory).
* :class:`OpenClipAdapter` wraps an ``open_clip`` model.

Both are optional: the libraries are imported only when an adapter is built. The outputs are the
library's own: ``text_emb``/``image_emb`` equal its normalised ``text_embeds``/``image_embeds``
and ``text_tokens`` its final (layer-normed) text hidden states, zeroed at padding like ours
(tested for exact agreement). Images go through our preprocessing (resize shorter side, centre
crop, normalise with the checkpoint's mean/std), which follows CLIP's but is not pixel-identical
to the libraries' PIL pipelines; pass ``preprocessed=True`` to feed their pixels unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.clip.interface import TextEncoding
from unclip.clip.preprocess import ImageInput, ImagePreprocess
from unclip.errors import UserError

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_prompts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise UserError("no prompts given")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise UserError("empty prompt: give some text to encode")
    return list(texts)


class _AdapterBase(nn.Module):
    """Shared encode_image plumbing; subclasses implement the two feature functions."""

    preprocess: ImagePreprocess
    image_size: int
    embed_dim: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def encode_image(self, images: ImageInput, preprocessed: bool = False) -> torch.Tensor:
        """See :meth:`unclip.clip.interface.ClipEncoder.encode_image`."""
        if preprocessed:
            if not isinstance(images, torch.Tensor) or images.ndim != 4:
                raise UserError("preprocessed images must be a (B, 3, S, S) tensor")
            pixels = images
        else:
            pixels = self.preprocess(images)
        self.check_pixels(pixels)
        pixels = pixels.to(self.device, next(self.parameters()).dtype)
        return self.finish_embedding(self.image_features(pixels).float())

    def check_pixels(self, pixels: torch.Tensor) -> None:
        """Hook for subclasses to validate preprocessed pixels (B, 3, S, S); accepts anything here."""

    def finish_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) projected features -> the returned embedding: unit-norm (the ClipEncoder contract)."""
        return F.normalize(emb, dim=-1)


class HFClipAdapter(_AdapterBase):
    """A ``transformers`` ``CLIPModel`` as a :class:`~unclip.clip.interface.ClipEncoder`.

    Args:
        model: the CLIPModel.
        tokenizer: an HF tokenizer (``tok(texts, padding=..., return_tensors="pt")``) or a callable
            ``texts -> (ids, mask)``; None makes ``encode_text`` unavailable (``encode_tokens`` still
            works).
        image_mean, image_std: normalisation of the checkpoint (OpenAI's by default).
        max_text_len: L; defaults to the text model's position embeddings (77 for OpenAI CLIP).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        image_mean: Sequence[float] = OPENAI_MEAN,
        image_std: Sequence[float] = OPENAI_STD,
        max_text_len: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        cfg = model.config
        self.embed_dim = int(cfg.projection_dim)
        self.image_size = int(cfg.vision_config.image_size)
        self.token_width = int(cfg.text_config.hidden_size)
        self.max_text_len = int(max_text_len or cfg.text_config.max_position_embeddings)
        self.tokenizer = tokenizer
        self.preprocess = ImagePreprocess(self.image_size, image_mean, image_std)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> HFClipAdapter:
        """Load a local transformers CLIP directory (config.json + weights [+ tokenizer, preprocessor])."""
        try:
            import transformers
        except ModuleNotFoundError as e:
            raise UserError("this CLIP needs the transformers package: pip install transformers") from e
        path = Path(path)
        try:
            model = transformers.CLIPModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a transformers CLIP from {path}: {e}") from None
        tokenizer = None
        if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        mean, std = OPENAI_MEAN, OPENAI_STD
        pp = path / "preprocessor_config.json"
        if pp.is_file():
            conf = json.loads(pp.read_text())
            mean, std = conf.get("image_mean", mean), conf.get("image_std", std)
        return cls(model, tokenizer, mean, std).to(device)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (ids (B, L), mask (B, L) bool), padded to L, truncated with a warning."""
        texts = _check_prompts(texts)
        if self.tokenizer is None:
            raise UserError("this CLIP has no tokenizer; use encode_tokens(ids, mask)")
        L = self.max_text_len
        if hasattr(self.tokenizer, "model_max_length") or hasattr(self.tokenizer, "pad_token_id"):
            full = self.tokenizer(texts)["input_ids"]
            for t, ids in zip(texts, full):
                if len(ids) > L:
                    logger.warning("prompt truncated from %d to %d tokens: %r", len(ids), L, t[:80])
            out = self.tokenizer(
                texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt"
            )
            return out["input_ids"].to(self.device), out["attention_mask"].bool().to(self.device)
        ids, mask = self.tokenizer(texts)
        return ids.to(self.device), mask.to(self.device)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected pooled (B, D), last hidden states (B, L, W)) exactly as CLIPModel computes them."""
        out = self.model.text_model(input_ids=ids, attention_mask=mask.long(), return_dict=True)
        return self.model.text_projection(out.pooler_output), out.last_hidden_state

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels, return_dict=True)
        return self.model.visual_projection(out.pooler_output)

    @torch.no_grad()
    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        """Already tokenized prompts -> :class:`TextEncoding`."""
        pooled, tokens = self.text_features(ids, mask)
        tokens = tokens.float() * mask[..., None].float()
        return TextEncoding(self.finish_embedding(pooled.float()), tokens, mask.bool())

    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        """See :meth:`unclip.clip.interface.ClipEncoder.encode_text`."""
        return self.encode_tokens(*self.tokenize(texts))


class OpenClipAdapter(_AdapterBase):
    """An ``open_clip`` CLIP as a :class:`~unclip.clip.interface.ClipEncoder`.

    ``text_tokens`` are the output of the model's ``ln_final`` (captured with a forward hook, since
    ``encode_text`` returns only the pooled embedding); models without it (e.g. HF text towers)
    are refused.

    Args:
        model: an ``open_clip.CLIP``.
        tokenizer: ``open_clip.get_tokenizer(name)`` (``tok(texts) -> (B, L) ids``).
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        super().__init__()
        if not hasattr(model, "ln_final"):
            raise UserError("this open_clip model has no ln_final (custom text tower); not supported")
        self.model = model.eval()
        self.tokenizer = tokenizer
        visual = model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        proj = model.text_projection  # a (W, D) parameter, or a Linear in some variants
        self.embed_dim = int(proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features)
        self.token_width = int(model.ln_final.normalized_shape[0])
        self.max_text_len = int(getattr(model, "context_length", 77))
        mean = getattr(visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_STD
        self.preprocess = ImagePreprocess(self.image_size, mean, std)
        self._captured: list[torch.Tensor] = []
        model.ln_final.register_forward_hook(lambda _m, _i, out: self._captured.append(out))

    @classmethod
    def create(
        cls, name: str, pretrained: str | None = None, device: str | torch.device = "cpu"
    ) -> OpenClipAdapter:
        """``open_clip.create_model(name, pretrained=<local file>)`` + its tokenizer."""
        try:
            import open_clip
        except Exception as e:  # ImportError, or torchvision failing to load its ops
            raise UserError(f"this CLIP needs open_clip (pip install open_clip_torch): {e}") from None
        model = open_clip.create_model(name, pretrained=pretrained)
        return cls(model, open_clip.get_tokenizer(name)).to(device)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip ids (B, L) and a mask of the real tokens (up to and including the end token)."""
        texts = _check_prompts(texts)
        ids = self.tokenizer(texts)
        if ids.shape[1] != self.max_text_len:
            raise UserError(f"tokenizer gives {ids.shape[1]} tokens, the model expects {self.max_text_len}")
        # open_clip pads with 0 after the end token (the largest id in its vocabulary); with a causal
        # mask padding never influences real tokens, so the mask only marks what is real.
        eot = ids.argmax(dim=-1)
        mask = torch.arange(ids.shape[1])[None] <= eot[:, None]
        return ids.to(self.device), mask.to(self.device)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._captured.clear()
        pooled = self.model.encode_text(ids, normalize=False)
        tokens = self._captured[-1]
        self._captured.clear()
        return pooled, tokens

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)

    @torch.no_grad()
    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        pooled, tokens = self.text_features(ids, mask)
        tokens = tokens.float() * mask[..., None].float()
        return TextEncoding(self.finish_embedding(pooled.float()), tokens, mask.bool())

    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        """See :meth:`unclip.clip.interface.ClipEncoder.encode_text`."""
        return self.encode_tokens(*self.tokenize(texts))
