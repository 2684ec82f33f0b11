"""Configs of the two unCLIP priors (paper §2.2): the diffusion prior and the autoregressive prior.

A config holds what changes weights or architecture, plus the training-time facts a checkpoint
must remember (condition drop rate, embedding scaling scheme). Sampling knobs (guidance scale,
steps, best-of-N, temperature) are arguments of ``sample`` and never config fields.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from unclip.config import Config

EmbeddingScaling = Literal["center_scale", "sqrt_dim", "standardize"]


def _check_common(cfg: DiffusionPriorConfig | ARPriorConfig) -> None:
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not divisible by {cfg.heads} heads")
    if not 0.0 <= cfg.cond_drop_prob < 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1), got {cfg.cond_drop_prob}")
    for name in ("embed_dim", "text_width", "max_text_len", "width", "layers", "heads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")


@dataclasses.dataclass(frozen=True)
class DiffusionPriorConfig(Config):
    """Diffusion prior: causal transformer over [caption tokens, text_emb, t, x_t, query].

    Attributes:
        embed_dim: D, the CLIP joint embedding width.
        text_width: W, the width of the CLIP text encoder's token outputs (``text_tokens``).
        max_text_len: most caption tokens the positional table covers (the CLIP context length).
        width: transformer width (paper: 2048).
        layers: transformer blocks (paper: 24).
        heads: attention heads (paper: 32).
        mlp_ratio: MLP hidden width / width.
        schedule: beta schedule name (paper: cosine).
        num_timesteps: training diffusion steps (paper: 1000).
        cond_drop_prob: probability a training sample's text conditioning (caption tokens AND
            text_emb) is replaced by the learned null, for classifier-free guidance (paper: 10%).
        scaling: how image embeddings are mapped to the diffusion's space, see
            :class:`unclip.models.prior.EmbeddingScaler` ("center_scale": subtract the data mean,
            divide by one global scale; "sqrt_dim": multiply by sqrt(D), the paper's 17.2 rule;
            "standardize": per-dimension mean/std, as Karlo does).
        target_std: per-dimension RMS of the scaled embeddings (1.0: unit variance inputs;
            the paper's 17.2 for D = 1024 corresponds to 0.54).
    """

    embed_dim: int = 128
    text_width: int = 192
    max_text_len: int = 32
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    schedule: str = "cosine"
    num_timesteps: int = 1000
    cond_drop_prob: float = 0.1
    scaling: EmbeddingScaling = "center_scale"
    target_std: float = 1.0

    def __post_init__(self) -> None:
        _check_common(self)
        if self.target_std <= 0:
            raise ValueError(f"target_std must be positive, got {self.target_std}")
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {self.num_timesteps}")


@dataclasses.dataclass(frozen=True)
class ARPriorConfig(Config):
    """Autoregressive prior: PCA tokens predicted by a causal transformer.

    Sequence: [caption tokens, text_emb, dot-product token, c_1 .. c_K]; the output at the
    dot-product token predicts c_1, the output at c_k predicts c_{k+1}.

    Attributes:
        embed_dim: D, the CLIP joint embedding width.
        text_width: W, the width of ``text_tokens``.
        max_text_len: most caption tokens the positional table covers.
        num_components: K, kept principal components (paper: 319 of 1024); chosen at training
            time from the retained variance and then fixed here.
        num_buckets: tokens per component (paper: 1024).
        num_dot_buckets: buckets of the text_emb . image_emb token (quantile buckets, so bucket
            b covers the b/num_dot_buckets quantile of the training dot products).
        bucket_scheme: "quantile" or "uniform" component buckets (see :mod:`unclip.models.pca`).
        width, layers, heads, mlp_ratio: transformer shape (paper: 1664 wide, 24 blocks, 26 heads).
        cond_drop_prob: text-conditioning drop rate for classifier-free guidance (paper: 10%).
    """

    embed_dim: int = 128
    text_width: int = 192
    max_text_len: int = 32
    num_components: int = 32
    num_buckets: int = 1024
    num_dot_buckets: int = 32
    bucket_scheme: Literal["quantile", "uniform"] = "quantile"
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        _check_common(self)
        if not 1 <= self.num_components <= self.embed_dim:
            raise ValueError(f"num_components must be in [1, embed_dim], got {self.num_components}")
        if self.num_buckets < 2 or self.num_dot_buckets < 2:
            raise ValueError("num_buckets and num_dot_buckets must be at least 2")
