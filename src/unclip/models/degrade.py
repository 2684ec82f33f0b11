"""Training-time corruptions of the upsamplers' low-resolution conditioning image [paper §2.1, App. C].

The upsamplers are trained on clean high-resolution images, but at sampling time their input is
the previous stage's *generated* image, with its own artefacts. Corrupting the conditioning
image slightly during training makes them robust to that (paper §2.1):

* first stage (64->256 in the paper, 32->128 in our CPU bundles): Gaussian blur, kernel 3,
  sigma around 0.6 (SR3's recipe), randomised per sample here;
* second stage (256->1024): a BSR-like chain (Rombach et al. / Zhang et al. 2021): blur, a
  random down-and-up resize, Gaussian noise and JPEG compression (Pillow).

All functions take and return (B, 3, H, W) float images in [-1, 1] and draw their randomness
from an explicit ``torch.Generator`` so training is reproducible and resumable. Per-sample work
is batched (one grouped convolution for all blur kernels); only JPEG loops over samples, because
it must go through an encoder.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Degradation = Literal["none", "blur", "bsr"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised isotropic Gaussian kernels, one per sigma: (N,) -> (N, size, size)."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r[None] ** 2) / (2 * sigma.float()[:, None].clamp(min=1e-3) ** 2))  # (N, size)
    k = g[:, :, None] * g[:, None, :]
    return k / k.sum(dim=(1, 2), keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Blur each sample with its own Gaussian.

    Args:
        x: (B, C, H, W).
        sigma: (B,) standard deviations in pixels.
        size: odd kernel side.

    Returns:
        (B, C, H, W), reflect-padded so borders do not darken.
    """
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma, size).to(x.dtype)  # (B, k, k)
    weight = k[:, None].repeat_interleave(c, dim=0)  # (B*C, 1, k, k)
    pad = size // 2
    xp = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG round trip through Pillow, per sample. x: (B, 3, H, W) in [-1, 1]; quality: (B,) ints."""
    out = torch.empty_like(x)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=int(quality[i]))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)
        out[i] = torch.from_numpy(dec).permute(2, 0, 1).to(x.dtype) / 127.5 - 1.0
    return out


def degrade_blur(
    x: torch.Tensor, generator: torch.Generator | None = None, sigma_range: tuple[float, float] = (0.4, 0.8)
) -> torch.Tensor:
    """First-stage corruption: a 3x3 Gaussian blur with sigma ~ U(sigma_range) [paper App. C]."""
    return blur(x, _uniform(x.shape[0], *sigma_range, generator), 3)


def degrade_bsr(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Second-stage corruption, a light BSR-like chain: blur -> resize -> noise -> JPEG.

    Each step is applied with probability 0.5 per batch (resize) or per sample (the rest), with
    per-sample strengths, so the model also sees clean inputs.

    Args:
        x: (B, 3, H, W) in [-1, 1].
        generator: randomness.

    Returns:
        (B, 3, H, W) in [-1, 1].
    """
    b, _, h, w = x.shape
    on = torch.rand(4, b, generator=generator) < 0.5
    # 1. Blur, sigma up to 1.5 px with a 5x5 kernel; sigma ~0 leaves the sample unchanged.
    sigma = torch.where(on[0], _uniform(b, 0.3, 1.5, generator), torch.full((b,), 1e-3))
    x = blur(x, sigma, 5)
    # 2. Down-and-up resize with a random factor and filter, one per batch (shapes must agree).
    if torch.rand(1, generator=generator).item() < 0.5:
        f = float(_uniform(1, 0.5, 0.9, generator))
        modes = ("bilinear", "bicubic", "area")
        mode = modes[int(torch.randint(len(modes), (1,), generator=generator))]
        small = F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode=mode)
        x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # 3. Gaussian noise, std up to 0.08 (in [-1, 1] units, ~10/255).
    std = torch.where(on[2], _uniform(b, 0.01, 0.08, generator), torch.zeros(b))
    x = x + std.to(x.dtype)[:, None, None, None] * torch.randn(x.shape, generator=generator).to(x.dtype)
    # 4. JPEG at quality 30..95 for about half the samples.
    if bool(on[3].any()):
        idx = on[3].nonzero().squeeze(1)
        q = torch.randint(30, 96, (len(idx),), generator=generator)
        x = x.clone()
        x[idx] = jpeg(x[idx], q)
    return x.clamp(-1.0, 1.0)


def degrade(
    x: torch.Tensor,
    kind: Degradation,
    generator: torch.Generator | None = None,
    blur_sigma: tuple[float, float] = (0.4, 0.8),
) -> torch.Tensor:
    """Apply the named corruption: "none", "blur" (first stage, sigma ~ U(blur_sigma)) or "bsr"."""
    if kind == "none":
        return x
    if kind == "blur":
        return degrade_blur(x, generator, blur_sigma)
    if kind == "bsr":
        return degrade_bsr(x, generator)
    raise ValueError(f"unknown degradation {kind!r}; choose none, blur or bsr")
