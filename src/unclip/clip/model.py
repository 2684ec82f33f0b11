"""Our own trainable CLIP: a small ViT image tower and a text tower (transformer or frozen MiniLM).

Paper App. C: unCLIP's CLIP is a ViT image encoder and a causal text transformer trained with the
contrastive (InfoNCE) objective of Radford et al. 2021; its embeddings are unit-norm. This is the
same design at a size that trains on a laptop CPU (see docs/clip.md for the measured presets).

Save with :meth:`ClipModel.save` and load with :func:`load_clip` (or
``unclip.checkpoint.load_component`` followed by :func:`attach_tokenizer_from`): the component
directory holds component.json, model.safetensors and, for our own text tower, tokenizer.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import add_kind, load_component, save_component
from unclip.clip.config import ClipConfig, TextConfig, VisionConfig
from unclip.clip.interface import TextEncoding
from unclip.clip.preprocess import ImageInput, ImagePreprocess
from unclip.clip.tokenizer import ClipTokenizer, load_bpe, load_wordpiece
from unclip.errors import UserError
from unclip.nn.norms import LayerNorm32
from unclip.nn.transformer import Attention, Transformer

TOKENIZER_FILE = "tokenizer.json"


class VisionTower(nn.Module):
    """ViT: patchify -> [CLS] + position embeddings -> pre-norm transformer -> pool -> project.

    Args:
        cfg: the tower's config.
        embed_dim: D of the joint space.
    """

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.stem == "conv":
            c = cfg.stem_channels
            self.stem = nn.Sequential(
                nn.Conv2d(3, c // 2, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(c // 2, c, 3, stride=2, padding=1),
                nn.GELU(),
            )
            k, fan_in = cfg.patch_size // 4, c * (cfg.patch_size // 4) ** 2
            self.patch_embed = nn.Conv2d(c, w, k, stride=k, bias=False)
        else:
            self.stem = nn.Identity()
            fan_in = 3 * cfg.patch_size**2
            self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size, bias=False)
        n_extra = 1 if cfg.pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w)) if cfg.pool == "cls" else None
        self.pos_emb = nn.Parameter(torch.randn(1, cfg.num_patches + n_extra, w) * 0.02)
        self.ln_pre = LayerNorm32(w)
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio)
        if cfg.pool == "attn":
            # One learned query attending over all patch tokens (attention pooling).
            self.pool_query = nn.Parameter(torch.randn(1, 1, w) * 0.02)
            self.pool_attn = Attention(w, cfg.heads)
        self.ln_post = LayerNorm32(w)
        self.proj = nn.Linear(w, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=w**-0.5)
        nn.init.normal_(self.patch_embed.weight, std=fan_in**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, S, S) normalised. Returns unnormalised image features (B, D)."""
        x = self.patch_embed(self.stem(pixels))  # (B, W, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, W)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.ln_pre(x + self.pos_emb.to(x.dtype))
        x = self.transformer(x)  # (B, N[+1], W)
        if self.cls_token is not None:
            pooled = x[:, 0]
        else:
            q = self.pool_query.expand(x.shape[0], -1, -1).to(x.dtype)
            pooled = self.pool_attn(q, context=x)[:, 0]
        return self.proj(self.ln_post(pooled))


class TransformerTextTower(nn.Module):
    """Our text transformer: token + position embeddings -> causal pre-norm transformer.

    Pooled at the end token when causal (CLIP), by masked mean otherwise.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Parameter(torch.randn(1, cfg.context_length, cfg.width) * 0.01)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = LayerNorm32(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=cfg.width**-0.5)

    @property
    def token_width(self) -> int:
        return self.cfg.width

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask: (B, L). Returns (pooled features (B, D), tokens (B, L, W), zero at padding)."""
        x = self.token_emb(ids) + self.pos_emb[:, : ids.shape[1]]
        # Under a causal mask, padding (always after the end token) is never seen by a real token,
        # so no key padding mask is needed; it would only cost a per-sample mask.
        x = self.transformer(x, key_mask=None if self.cfg.causal else mask, causal=self.cfg.causal)
        x = self.ln_final(x)
        x = x * mask[..., None].to(x.dtype)
        if self.cfg.causal:
            last = mask.sum(1) - 1  # end-token position
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        else:
            pooled = x.sum(1) / mask.sum(1, keepdim=True).to(x.dtype)
        return self.proj(pooled), x


class MiniLMTextTower(nn.Module):
    """Locked text (LiT): frozen MiniLM sentence embedding -> trainable projection.

    The MiniLM module is deliberately *not* a registered submodule: its 22.7M weights stay out of
    ``state_dict`` (and so out of our checkpoints and optimizers) and are reloaded from the
    installed package by sha256. ``_apply`` forwards device/dtype moves to it.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        from unclip.clip.minilm import load_minilm

        self.cfg = cfg
        bert, folder = load_minilm(cfg.package, cfg.weights_sha256)
        self._frozen = [bert]
        self.model_dir = folder
        d = bert.dim
        if cfg.proj_hidden:
            self.proj = nn.Sequential(
                nn.Linear(d, cfg.proj_hidden), nn.GELU(), nn.Linear(cfg.proj_hidden, embed_dim, bias=False)
            )
        else:
            self.proj = nn.Linear(d, embed_dim, bias=False)
            nn.init.normal_(self.proj.weight, std=d**-0.5)

    @property
    def bert(self) -> nn.Module:
        return self._frozen[0]

    @property
    def token_width(self) -> int:
        return self.bert.dim

    def _apply(self, fn: Any, recurse: bool = True) -> MiniLMTextTower:
        super()._apply(fn, recurse)
        self._frozen[0] = self._frozen[0]._apply(fn)
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask: (B, L). Returns (pooled features (B, D), MiniLM last hidden states (B, L, 384))."""
        with torch.no_grad():
            hidden = self.bert(ids, mask)
            hidden = hidden * mask[..., None].to(hidden.dtype)
            sent = F.normalize(
                self.bert.mean_pool(hidden, mask), dim=-1
            )  # the sentence-transformers embedding
        return self.proj(sent.to(next(self.proj.parameters()).dtype)), hidden


class ClipModel(nn.Module):
    """Our CLIP; implements :class:`unclip.clip.interface.ClipEncoder`.

    Args:
        config: the model's config.
        tokenizer: the tokenizer for our own text tower (trained with
            :func:`unclip.clip.tokenizer.train_bpe`); the MiniLM tower brings its own. May be
            attached later with :meth:`attach_tokenizer`.
    """

    def __init__(self, config: ClipConfig, tokenizer: ClipTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        if config.vision.arch == "resnet":
            from unclip.clip.resnet import ResNetTower

            self.visual: nn.Module = ResNetTower(config.vision, config.embed_dim)
        else:
            self.visual = VisionTower(config.vision, config.embed_dim)
        if config.text.tower == "transformer":
            self.text = TransformerTextTower(config.text, config.embed_dim)
        else:
            self.text = MiniLMTextTower(config.text, config.embed_dim)
            if tokenizer is None:
                tokenizer = load_wordpiece(self.text.model_dir / TOKENIZER_FILE, config.text.context_length)
        # CLIP's learned temperature, stored as log(1/T) (Radford et al. 2021).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.tokenizer: ClipTokenizer | None = None
        if tokenizer is not None:
            self.attach_tokenizer(tokenizer)
        self.preprocess = ImagePreprocess(
            config.vision.image_size, config.image_mean, config.image_std, config.background
        )

    # --- ClipEncoder attributes -------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def token_width(self) -> int:
        return self.text.token_width

    @property
    def max_text_len(self) -> int:
        return self.config.text.context_length

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def attach_tokenizer(self, tokenizer: ClipTokenizer) -> None:
        """Use ``tokenizer`` (its context length is set to the model's)."""
        if self.config.text.tower == "transformer" and tokenizer.vocab_size > self.config.text.vocab_size:
            raise UserError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {self.config.text.vocab_size}"
            )
        tokenizer.context_length = self.config.text.context_length
        self.tokenizer = tokenizer

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (ids (B, L), mask (B, L)) on the model's device."""
        if self.tokenizer is None:
            raise UserError("this CLIP has no tokenizer attached; load it with unclip.clip.load_clip(DIR)")
        ids, mask = self.tokenizer(texts)
        return ids.to(self.device), mask.to(self.device)

    # --- features ----------------------------------------------------------------------------
    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped to ``max_logit_scale`` (scalar, fp32)."""
        return self.logit_scale.float().exp().clamp(max=self.config.max_logit_scale)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels (B, 3, S, S) -> unnormalised image features (B, D)."""
        return self.visual(pixels)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids/mask (B, L) -> (unnormalised pooled (B, D), tokens (B, L, W)).

        Columns that are padding in every prompt of the batch are cut before the tower runs and
        the tokens are zero-padded back to L afterwards: the result is the same (padding is
        masked or, under the causal mask, after the end token), at a fraction of the cost, since
        most captions are far shorter than the context.
        """
        n = int(mask.sum(1).max()) if mask.numel() else 0
        if 0 < n < ids.shape[1]:
            pooled, tokens = self.text(ids[:, :n], mask[:, :n])
            return pooled, F.pad(tokens, (0, 0, 0, ids.shape[1] - n))
        return self.text(ids, mask)

    def forward(
        self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward.

        Args:
            pixels: (B, 3, S, S) preprocessed images.
            ids, mask: (B', L) tokens of B' captions.

        Returns:
            (image_emb (B, D), text_emb (B', D), logit scale ()), embeddings unit-norm in fp32.
        """
        img = F.normalize(self.image_features(pixels).float(), dim=-1)
        txt = F.normalize(self.text_features(ids, mask)[0].float(), dim=-1)
        return img, txt, self.logit_scale_value()

    # --- ClipEncoder methods -----------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> TextEncoding:
        """See :meth:`unclip.clip.interface.ClipEncoder.encode_text`."""
        ids, mask = self.tokenize(texts)
        pooled, tokens = self.text_features(ids, mask)
        return TextEncoding(F.normalize(pooled.float(), dim=-1), tokens.float(), mask)

    @torch.no_grad()
    def encode_image(self, images: ImageInput, preprocessed: bool = False) -> torch.Tensor:
        """See :meth:`unclip.clip.interface.ClipEncoder.encode_image`."""
        if preprocessed:
            if not isinstance(images, torch.Tensor) or images.ndim != 4:
                raise UserError("preprocessed images must be a (B, 3, S, S) tensor")
            pixels = images
        else:
            pixels = self.preprocess(images)
        s = self.image_size
        if tuple(pixels.shape[1:]) != (3, s, s):
            raise UserError(
                f"expected preprocessed images of shape (B, 3, {s}, {s}), got {tuple(pixels.shape)}"
            )
        pixels = pixels.to(self.device, self.logit_scale.dtype)
        return F.normalize(self.image_features(pixels).float(), dim=-1)

    # --- saving ------------------------------------------------------------------------------
    def save(
        self, directory: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None
    ) -> Path:
        """Save as a "clip" component directory (+ tokenizer.json for our own text tower)."""
        directory = save_component(self, self.config, "clip", directory, dtype=dtype, extra=extra)
        if self.config.text.tower == "transformer":
            if self.tokenizer is None:
                raise UserError("cannot save a CLIP with our own text tower but no tokenizer")
            self.tokenizer.save(Path(directory) / TOKENIZER_FILE)
        return directory


def build_clip(config: ClipConfig) -> ClipModel:
    """Builder registered for the "clip" component kind (tokenizer attached by :func:`load_clip`)."""
    return ClipModel(config)


def attach_tokenizer_from(model: ClipModel, directory: str | Path) -> ClipModel:
    """Attach the tokenizer saved in a component directory (no-op for the MiniLM tower)."""
    if model.config.text.tower == "transformer":
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(f"CLIP component {directory} has no {TOKENIZER_FILE}")
        model.attach_tokenizer(load_bpe(path, model.config.text.context_length))
    return model


def load_clip(directory: str | Path, device: str | torch.device = "cpu") -> ClipModel:
    """Load our CLIP from a component directory (eval mode, fp32, tokenizer attached).

    Args:
        directory: a "clip" component directory, or a model directory with a ``clip/`` inside.
        device: where to put it.
    """
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"CLIP model not found: {directory}")
    if not (directory / "component.json").is_file() and (directory / "clip" / "component.json").is_file():
        directory = directory / "clip"
    module, _config, header = load_component(directory, device=device)
    if header["kind"] != "clip":
        raise UserError(f"{directory} holds a {header['kind']!r} component, not a CLIP")
    return attach_tokenizer_from(module, directory)


add_kind("clip", ClipConfig, build_clip)
