"""Likelihood helpers for the variational bound (iDDPM §2, ADM ``losses.py`` vocabulary).

All functions are elementwise and broadcast their arguments; callers average over dims.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normal_kl(
    mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float
) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats, elementwise.

    At least one argument must be a tensor; floats are promoted to its dtype and device.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (logvar1, logvar2))
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Continuous Gaussian log density log N(x; means, exp(log_scales)^2) in nats, elementwise."""
    return -0.5 * (
        math.log(2.0 * math.pi) + 2.0 * log_scales + (x - means) ** 2 * torch.exp(-2.0 * log_scales)
    )


def discretized_gaussian_log_likelihood(
    x: Tensor, means: Tensor, log_scales: Tensor, num_bins: int = 256
) -> Tensor:
    """Log probability of 8-bit data under a Gaussian discretised into ``num_bins`` bins on [-1, 1].

    The decoder term L_0 of the VLB [DDPM §3.3]: each pixel value owns a bin of width
    2 / (num_bins - 1); the two edge bins extend to -inf and +inf.

    Args:
        x: (B, ...) data in [-1, 1], on the 8-bit grid.
        means: Gaussian means, broadcastable to x.
        log_scales: log standard deviations, broadcastable to x.
        num_bins: number of discrete levels.

    Returns:
        Log probabilities in nats, shaped like x.
    """
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + half_bin))
    cdf_min = torch.special.ndtr(inv_std * (centered - half_bin))
    # log_ndtr is accurate in the far tails, where 1 - cdf would round to 0.
    log_cdf_plus = torch.special.log_ndtr(inv_std * (centered + half_bin))
    log_one_minus_cdf_min = torch.special.log_ndtr(-inv_std * (centered - half_bin))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    edge = 1.0 - half_bin  # half way between the last two levels
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_delta))
