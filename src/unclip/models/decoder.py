"""The unCLIP decoder: a GLIDE-style UNet that inverts CLIP image embeddings [paper §2.1].

Two conditioning paths carry the CLIP image embedding z_i into the UNet (paper §2.1):

1. z_i is projected and **added to the timestep embedding** (so it scales and shifts every
   residual block's normalised features);
2. z_i is projected into **4 extra context tokens**, concatenated to the (projected,
   LayerNorm'd) caption tokens; every attention layer attends to this context through its own
   key/value projection (GLIDE ``encoder_kv``).

The caption path is kept as in GLIDE: caption tokens in the context, and their masked mean added
to the timestep embedding (GLIDE adds the final token's embedding). For classifier-free guidance
both conditions can be replaced by **learned null embeddings**, independently per sample: in
training the CLIP embedding is dropped 10% and the caption 50% of the time (paper §2.1, App. C;
independent drops resolve the paper's 10% vs 5% wording, spec §9.1). One model therefore serves
guided sampling, image-embedding-only sampling and caption-only sampling (the GLIDE-like baseline).

Null semantics of :meth:`Decoder.forward`: ``image_emb=None`` (or ``text_tokens=None``) means
"dropped for every sample"; a bool mask ``drop_image`` / ``drop_text`` of shape (B,) drops the
samples where it is True. A dropped image embedding is replaced by the learned ``null_image``
vector; a dropped caption has all its tokens masked out of attention and a single learned
``null_text`` token takes their place (and the pooled caption becomes that token). Dropped
inputs therefore cannot influence the output at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import add_kind
from unclip.config import Config
from unclip.diffusion import GaussianDiffusion
from unclip.diffusion.gaussian import Clip, Prediction, Variance
from unclip.models.unet import UNet, UNetConfig
from unclip.nn.norms import LayerNorm32
from unclip.nn.precision import Precision, autocast, default_precision

LossWeighting = Literal["none", "min_snr"]


@dataclasses.dataclass(frozen=True)
class DecoderConfig(Config):
    """Everything that fixes a decoder's weights and training objective.

    Sampling options (steps, sampler, guidance scale) are arguments of :meth:`Decoder.sample`,
    not config fields.

    Attributes:
        unet: the trunk; ``unet.image_size`` is the decoder's output resolution.
        clip_dim: D, width of the CLIP image embedding.
        text_dim: W, width of the caption tokens; 0 builds an image-embedding-only decoder.
        context_dim: width of the context tokens (projected CLIP and caption tokens).
        num_clip_tokens: context tokens made from the image embedding (paper §2.1: 4).
        schedule: beta schedule name (see :func:`unclip.diffusion.get_betas`).
        num_timesteps: T.
        prediction: "eps", "x0" or "v" (v measured best on CPU budgets, design.md §10).
        variance: "fixed_small", "fixed_large" or "learned_range" (paper: learned sigma; the
            UNet then outputs 6 channels).
        loss_weighting: "none" or "min_snr".
        min_snr_gamma: gamma of min-SNR weighting.
        drop_image_prob: probability of replacing z_i by the null embedding in training.
        drop_text_prob: probability of dropping the caption in training (independent).
    """

    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    clip_dim: int = 512
    text_dim: int = 0
    context_dim: int = 256
    num_clip_tokens: int = 4
    schedule: str = "cosine"
    num_timesteps: int = 1000
    prediction: Prediction = "v"
    variance: Variance = "fixed_small"
    loss_weighting: LossWeighting = "min_snr"
    min_snr_gamma: float = 5.0
    drop_image_prob: float = 0.1
    drop_text_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.clip_dim < 1 or self.text_dim < 0 or self.context_dim < 1 or self.num_clip_tokens < 1:
            raise ValueError("clip_dim, context_dim and num_clip_tokens must be >= 1, text_dim >= 0")
        for name in ("drop_image_prob", "drop_text_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.num_timesteps < 2:
            raise ValueError("num_timesteps must be >= 2")

    @property
    def image_size(self) -> int:
        return self.unet.image_size


class UnCLIPConditioning(nn.Module):
    """Turns (z_i, caption tokens, drop masks) into the UNet's extra embedding and context [paper §2.1].

    Args:
        config: the decoder config.
        emb_dim: width of the UNet's timestep embedding.
    """

    def __init__(self, config: DecoderConfig, emb_dim: int) -> None:
        super().__init__()
        d, c = config.clip_dim, config.context_dim
        self.clip_dim, self.context_dim, self.num_clip_tokens = d, c, config.num_clip_tokens
        # z_i is fed as a unit vector scaled to per-dimension std ~1 (see _image), so the learned
        # null lives at the same scale.
        self.null_image = nn.Parameter(torch.randn(d))
        self.image_to_emb = nn.Linear(d, emb_dim)
        self.image_to_tokens = nn.Linear(d, config.num_clip_tokens * c)
        self.text_dim = config.text_dim
        if config.text_dim:
            self.text_proj = nn.Linear(config.text_dim, c)
            self.text_norm = LayerNorm32(c)
            self.null_text = nn.Parameter(torch.randn(c) * 0.02)
            self.text_to_emb = nn.Linear(c, emb_dim)

    def _image(self, image_emb: torch.Tensor | None, drop: torch.Tensor | None, batch: int) -> torch.Tensor:
        null = self.null_image[None].expand(batch, -1)
        if image_emb is None:
            return null
        if image_emb.shape != (batch, self.clip_dim):
            raise ValueError(
                f"image_emb must have shape ({batch}, {self.clip_dim}), got {tuple(image_emb.shape)}"
            )
        # CLIP embeddings are compared by cosine; normalising makes the decoder indifferent to the
        # norm of whatever produced z_i (CLIP itself or a prior's sample).
        z = F.normalize(image_emb.float(), dim=-1) * math.sqrt(self.clip_dim)
        return z if drop is None else torch.where(drop[:, None], null, z)

    def forward(
        self,
        batch: int,
        image_emb: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conditioning for a batch of B samples (see the module docstring for null semantics).

        Returns:
            extra_emb (B, E), context (B, 4 [+ L + 1], context_dim), context_mask (B, 4 [+ L + 1]) bool.
        """
        for name, m in (("drop_image", drop_image), ("drop_text", drop_text)):
            if m is not None and (m.dtype != torch.bool or m.shape != (batch,)):
                raise ValueError(f"{name} must be a bool tensor of shape ({batch},)")
        z = self._image(image_emb, drop_image, batch)
        extra = self.image_to_emb(z)
        tokens = [self.image_to_tokens(z).view(batch, self.num_clip_tokens, self.context_dim)]
        device = tokens[0].device
        masks = [torch.ones(batch, self.num_clip_tokens, dtype=torch.bool, device=device)]
        if not self.text_dim:
            return extra, tokens[0], masks[0]

        dropped = torch.ones(batch, dtype=torch.bool, device=device)
        pooled = self.null_text[None].expand(batch, -1)
        if text_tokens is not None:
            if (
                text_tokens.ndim != 3
                or text_tokens.shape[0] != batch
                or text_tokens.shape[2] != self.text_dim
            ):
                raise ValueError(
                    f"text_tokens must have shape ({batch}, L, {self.text_dim}), got {tuple(text_tokens.shape)}"
                )
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=device)
            if text_mask.shape != text_tokens.shape[:2] or text_mask.dtype != torch.bool:
                raise ValueError("text_mask must be a bool tensor of shape (B, L)")
            dropped = drop_text if drop_text is not None else torch.zeros_like(dropped)
            tt = self.text_norm(self.text_proj(text_tokens))  # (B, L, C)
            keep = text_mask & ~dropped[:, None]
            w = keep.to(tt.dtype)[..., None]
            mean = (tt * w).sum(1) / w.sum(1).clamp(min=1.0)
            pooled = torch.where(dropped[:, None], pooled, mean)
            tokens.append(tt)
            masks.append(keep)
        # The null token takes part in attention only for samples whose caption was dropped.
        tokens.append(self.null_text[None, None].expand(batch, 1, -1))
        masks.append(dropped[:, None])
        extra = extra + self.text_to_emb(pooled)
        return extra, torch.cat(tokens, dim=1), torch.cat(masks, dim=1)


class Decoder(nn.Module):
    """CLIP image embedding (+ caption) -> image at ``config.image_size`` [paper §2.1].

    Args:
        config: the decoder config.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        out_ch = 6 if config.variance == "learned_range" else 3
        self.unet = UNet(config.unet, 3, out_ch, context_dim=config.context_dim)
        self.cond = UnCLIPConditioning(config, config.unet.emb_dim)
        self.diffusion = GaussianDiffusion.from_schedule(
            config.schedule, config.num_timesteps, config.prediction, config.variance
        )

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        image_emb: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target.

        Args:
            x_t: (B, 3, S, S) noisy images.
            t: (B,) original-scale timesteps.
            image_emb: (B, D) CLIP image embeddings, or None (null for every sample).
            text_tokens: (B, L, W) caption tokens from CLIP's text tower, or None (null caption).
            text_mask: (B, L) bool, True at real tokens (all True when omitted).
            drop_image: (B,) bool, True -> the learned null image embedding for that sample.
            drop_text: (B,) bool, True -> the learned null caption for that sample.

        Returns:
            (B, 3, S, S) float32 prediction, or (B, 6, S, S) with learned variance.
        """
        extra, context, mask = self.cond(
            x_t.shape[0], image_emb, text_tokens, text_mask, drop_image, drop_text
        )
        return self.unet(x_t, t, extra, context, mask)

    def sample_drop_masks(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Independent training drops [paper §2.1]: (drop_image (B,), drop_text (B,)) bool."""
        u = torch.rand(2, batch, generator=generator, device=device)
        return u[0] < self.config.drop_image_prob, u[1] < self.config.drop_text_prob

    def guided_fn(
        self,
        image_emb: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        *,
        batch: int,
        guidance_scale: float = 3.0,
        precision: Precision | None = None,
        text_emb: torch.Tensor | None = None,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided ``model_fn(x_t, t)`` that :meth:`sample` runs, for other samplers to reuse.

        DDIM inversion (:func:`unclip.sampling.ddim_invert`, paper §3) must evaluate exactly the
        function that the reconstruction samples with, so both get it from here.

        Args:
            image_emb: (B, D) CLIP image embeddings, or None.
            text_tokens: (B, L, W) caption tokens, or None.
            text_mask: (B, L) bool.
            batch: B.
            guidance_scale: s; 1 skips the unconditional branch.
            precision: "bf16" / "fp32" (default: bf16 where supported).
            text_emb: the pooled caption embedding; accepted so every decoder kind shares one
                signature, and unused here (this decoder pools the caption tokens itself;
                converted Karlo decoders use it).

        Returns:
            ``model_fn(x_t (B, 3, S, S), t (B,)) -> output`` through the one CFG wrapper.
        """
        from unclip.sampling import guided_model_fn

        device = next(self.parameters()).device
        precision = precision or default_precision(device)
        if text_tokens is not None and text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
        zeros = torch.zeros(batch, dtype=torch.bool, device=device)
        base = {"image_emb": image_emb, "text_tokens": text_tokens, "text_mask": text_mask}
        cond = {**base, "drop_image": zeros, "drop_text": zeros}
        uncond = {**base, "drop_image": ~zeros, "drop_text": ~zeros}

        def net(x: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor | None) -> torch.Tensor:
            with autocast(device, precision):
                return self(x, t, **kw)

        return guided_model_fn(
            net,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
            prediction_channels=3 if self.diffusion.learned_variance else None,
        )

    @torch.no_grad()
    def sample(
        self,
        image_emb: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        *,
        text_emb: torch.Tensor | None = None,
        num_images: int | None = None,
        guidance_scale: float = 3.0,
        steps: int | str = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        clip: Clip = "static",
        precision: Precision | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Decode images with classifier-free guidance (the package's one CFG wrapper).

        Which inputs are given selects the mode: both -> guided by z_i and caption; only
        ``image_emb`` -> image-embedding-only; only ``text_tokens`` -> caption-only (GLIDE-like).
        The unconditional branch uses both nulls. Runs under bf16 autocast on CPU by default.

        Args:
            image_emb: (B, D) CLIP image embeddings, or None.
            text_tokens: (B, L, W) caption tokens, or None.
            text_mask: (B, L) bool.
            text_emb: (B, D) pooled caption embedding; unused here (see :meth:`guided_fn`).
            num_images: B when neither conditioning is given (unconditional samples).
            guidance_scale: s; 1 skips the unconditional branch.
            steps: timestep spec (see :func:`unclip.diffusion.space_timesteps`).
            sampler: one of :func:`unclip.sampling.list_samplers`.
            eta: DDIM eta.
            generator: source of all noise.
            x_T: (B, 3, S, S) starting noise (drawn from ``generator`` when None).
            clip: x_0 clipping ("static" keeps pixels in [-1, 1]).
            precision: "bf16" / "fp32" (default: bf16 where supported).
            callback: per-step callback (see :func:`unclip.sampling.sample`).
            show_progress: draw a progress bar.

        Returns:
            (B, 3, S, S) float32 images in [-1, 1].
        """
        from unclip.sampling import sample as run_sampler

        device = next(self.parameters()).device
        batch = next((v.shape[0] for v in (image_emb, text_tokens, x_T) if v is not None), num_images)
        if batch is None:
            raise ValueError("give image_emb, text_tokens, x_T or num_images")
        fn = self.guided_fn(
            image_emb, text_tokens, text_mask, batch=batch, guidance_scale=guidance_scale, precision=precision
        )
        s = self.config.image_size
        return run_sampler(
            fn,
            x_T if x_T is not None else (batch, 3, s, s),
            diffusion=self.diffusion,
            sampler=sampler,
            steps=steps,
            generator=generator,
            eta=eta,
            clip=clip,
            callback=callback,
            device=device,
            show_progress=show_progress,
        )


add_kind("decoder", DecoderConfig, Decoder)
