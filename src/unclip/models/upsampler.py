"""Diffusion upsamplers: low-resolution image -> image ``scale`` times larger [paper §2.1, App. C].

Each stage is a convolution-only UNet (no attention, no caption: paper §2.1 found captions gave no
benefit) conditioned on the low-resolution image, resized to the output size and concatenated to
x_t along the channels. Because it is fully convolutional it is trained on random crops a quarter
of the target side (Tab. 3 "crop fraction 0.25") and run on the whole image at sampling time.

Robustness to the previous stage's artefacts comes from two training-time corruptions of the
conditioning image: a fixed kind of degradation (:mod:`unclip.models.degrade`: blur for the
first stage, BSR-like for the second, paper App. C) and *noise augmentation*: the resized
conditioning image is noised with the forward process at a level drawn in training, and the
level is given to the network through its own embedding (added to the timestep embedding). At
sampling time the level is a free argument: 0 for clean inputs, higher for noisy ones.
Sampling defaults to few-step DDIM (paper: 27 steps for 64->256, 15 for 256->1024).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import add_kind
from unclip.config import Config
from unclip.diffusion import GaussianDiffusion
from unclip.diffusion.gaussian import Clip, Prediction, Variance
from unclip.models.degrade import Degradation
from unclip.models.unet import UNet, UNetConfig
from unclip.nn.embeddings import TimestepMLP
from unclip.nn.precision import Precision, autocast, default_precision
from unclip.sampling.samplers import Generators, randn

Resize = Literal["bicubic", "bilinear"]


@dataclasses.dataclass(frozen=True)
class UpsamplerConfig(Config):
    """Everything that fixes an upsampler's weights and training objective.

    Attributes:
        unet: the trunk; must have no attention (``attention_resolutions=()``, ``pos_emb="none"``)
            so it runs at any size. ``unet.image_size`` is the training crop side.
        low_res_size: side of the input image the stage is trained for.
        scale: output side / input side.
        crop_fraction: training crop side as a fraction of the target side (paper: 0.25).
        resize: filter that brings the low-res image to the output size.
        degradation: training corruption of the low-res image ("blur", "bsr" or "none").
        blur_sigma: with "blur": the per-sample Gaussian sigma range in low-res pixels (SR3 and the
            paper: about 0.6). A range from 0 also shows the model clean inputs, which keeps it
            from sharpening inputs that are already sharp (docs/decoder.md, "Upsampler").
        noise_aug_max: largest training noise-augmentation level, as a fraction of T.
        residual_scale: None diffuses the image itself (the paper); a number s diffuses
            (image - resized low-res) / s instead, so the network only has to add the missing
            detail and the colours of the low-res image are kept exactly (measured much faster to
            train on a CPU budget, docs/decoder.md). s should bring the residual to roughly unit
            scale (shapes at 32 -> 128: residual std 0.07, s = 0.25).
        schedule: beta schedule (paper: cosine for the first stage, linear for the second).
        num_timesteps: T.
        prediction: "eps", "x0" or "v".
        variance: "fixed_small", "fixed_large" or "learned_range".
        loss_weighting: "none" or "min_snr".
        min_snr_gamma: gamma of min-SNR weighting.
    """

    unet: UNetConfig = dataclasses.field(
        default_factory=lambda: UNetConfig(attention_resolutions=(), channel_mult=(1, 2, 2), image_size=32)
    )
    low_res_size: int = 32
    scale: int = 4
    crop_fraction: float = 0.25
    resize: Resize = "bicubic"
    degradation: Degradation = "blur"
    blur_sigma: tuple[float, float] = (0.4, 0.8)
    noise_aug_max: float = 0.3
    residual_scale: float | None = None
    schedule: str = "cosine"
    num_timesteps: int = 1000
    prediction: Prediction = "v"
    variance: Variance = "fixed_small"
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.unet.attention_resolutions or self.unet.pos_emb != "none":
            raise ValueError(
                "upsamplers are convolution-only: set unet.attention_resolutions=[] and pos_emb='none'"
            )
        if self.low_res_size < 1 or self.scale < 2:
            raise ValueError("low_res_size must be >= 1 and scale >= 2")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError("crop_fraction must be in (0, 1]")
        if self.crop_size % self.unet.downsample_factor or self.target_size % self.unet.downsample_factor:
            raise ValueError(
                f"crop side {self.crop_size} and target side {self.target_size} must be multiples of "
                f"{self.unet.downsample_factor} (2^(levels-1))"
            )
        if len(self.blur_sigma) != 2 or not 0.0 <= self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError("blur_sigma must be [low, high] with 0 <= low <= high")
        if not 0.0 <= self.noise_aug_max < 1.0:
            raise ValueError("noise_aug_max must be in [0, 1)")
        if self.residual_scale is not None and self.residual_scale <= 0:
            raise ValueError("residual_scale must be positive (or null for plain image diffusion)")
        if self.num_timesteps < 2:
            raise ValueError("num_timesteps must be >= 2")

    @property
    def target_size(self) -> int:
        return self.low_res_size * self.scale

    @property
    def crop_size(self) -> int:
        return round(self.target_size * self.crop_fraction)

    @property
    def max_noise_level(self) -> int:
        """Largest training noise-augmentation level (levels are 0 .. this, 0 = clean)."""
        return round(self.noise_aug_max * (self.num_timesteps - 1))


class Upsampler(nn.Module):
    """Super-resolution diffusion stage [paper §2.1].

    Args:
        config: the upsampler config.
    """

    def __init__(self, config: UpsamplerConfig) -> None:
        super().__init__()
        self.config = config
        out_ch = 6 if config.variance == "learned_range" else 3
        self.unet = UNet(config.unet, 6, out_ch)
        self.noise_level_embed = TimestepMLP(config.unet.model_channels, config.unet.emb_dim)
        self.diffusion = GaussianDiffusion.from_schedule(
            config.schedule, config.num_timesteps, config.prediction, config.variance
        )

    def resize(self, low_res: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
        """Resize (B, 3, h, w) to ``size`` with the configured filter, clamped to [-1, 1]."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(low_res.shape[-2:]) == size:
            return low_res
        mode = self.config.resize
        return F.interpolate(low_res.float(), size=size, mode=mode, align_corners=False).clamp(-1.0, 1.0)

    def to_target(self, image: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """What the diffusion runs on: the image, or (image - base) / residual_scale. (B, 3, H, W)."""
        s = self.config.residual_scale
        return image if s is None else (image - base) / s

    def from_target(self, sample: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_target`, clamped to [-1, 1]."""
        s = self.config.residual_scale
        return (sample if s is None else base + s * sample).clamp(-1.0, 1.0)

    def augment(
        self, cond: torch.Tensor, noise_level: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """Noise the resized conditioning image with q(x_s | x_0) at level s (s = 0: unchanged).

        Args:
            cond: (B, 3, H, W) resized low-res image.
            noise_level: (B,) ints in [0, T); level s > 0 uses the forward process at step s - 1.
            generator: source of the noise (one, or one per row).
        """
        if not bool((noise_level > 0).any()):
            return cond
        noise = randn(cond.shape, generator, torch.float32, cond.device).to(cond.dtype)
        noised = self.diffusion.q_sample(cond, (noise_level - 1).clamp(min=0), noise)
        return torch.where((noise_level > 0)[:, None, None, None], noised, cond)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        low_res: torch.Tensor,
        noise_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target.

        Args:
            x_t: (B, 3, H, W) noisy high-resolution images (or crops).
            t: (B,) original-scale timesteps.
            low_res: (B, 3, h, w) conditioning image, already noise-augmented; resized to (H, W)
                here if it is not that size yet.
            noise_level: (B,) noise-augmentation level of ``low_res`` (None: 0, clean).

        Returns:
            (B, 3, H, W) float32 prediction, or (B, 6, H, W) with learned variance.
        """
        cond = self.resize(low_res, tuple(x_t.shape[-2:])).to(x_t.dtype)
        if noise_level is None:
            noise_level = torch.zeros(x_t.shape[0], dtype=torch.long, device=x_t.device)
        return self.unet(torch.cat([x_t, cond], dim=1), t, self.noise_level_embed(noise_level))

    @torch.no_grad()
    def sample(
        self,
        low_res: torch.Tensor,
        *,
        noise_level: int = 0,
        steps: int | str = 27,
        sampler: str = "ddim",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        clip: Clip | None = None,
        precision: Precision | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Upsample images; runs fully convolutionally at the full output size.

        Args:
            low_res: (B, 3, h, w) images in [-1, 1] (any h, w whose ``scale`` multiple the UNet
                accepts; the stage's training size is ``config.low_res_size``).
            noise_level: noise augmentation applied to the conditioning image (0 = none).
            steps: timestep spec (paper: 27 DDIM steps for the first stage, 15 for the second).
            sampler: one of :func:`unclip.sampling.list_samplers`.
            eta: DDIM eta.
            generator: source of all noise.
            x_T: starting noise (B, 3, h*scale, w*scale).
            clip: x_0 clipping (default: "static" for image diffusion, none for residuals).
            precision: "bf16" / "fp32" (default: bf16 where supported).
            callback: per-step callback (see :func:`unclip.sampling.sample`).
            show_progress: draw a progress bar.

        Returns:
            (B, 3, h*scale, w*scale) float32 images in [-1, 1].
        """
        from unclip.sampling import sample as run_sampler

        if low_res.ndim != 4 or low_res.shape[1] != 3:
            raise ValueError(f"low_res must have shape (B, 3, h, w), got {tuple(low_res.shape)}")
        if not 0 <= noise_level < self.config.num_timesteps:
            raise ValueError(f"noise_level must be in [0, {self.config.num_timesteps})")
        device = next(self.parameters()).device
        precision = precision or default_precision(device)
        b, _, h, w = low_res.shape
        size = (h * self.config.scale, w * self.config.scale)
        level = torch.full((b,), noise_level, dtype=torch.long, device=device)
        base = self.resize(low_res.to(device), size)
        cond = self.augment(base, level, generator)
        if clip is None:
            clip = "static" if self.config.residual_scale is None else None

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(device, precision):
                return self(x, t, cond, level)

        out = run_sampler(
            fn,
            x_T if x_T is not None else (b, 3, *size),
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
        return self.from_target(out, base)


add_kind("upsampler", UpsamplerConfig, Upsampler)
