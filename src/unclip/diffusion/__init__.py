"""Diffusion math shared by every stage: schedules, the Gaussian chain, respacing, losses.

Imports nothing else from the package and holds no learned weights. See docs/diffusion.md.
"""

from __future__ import annotations

from unclip.diffusion.gaussian import (
    Clip,
    DynamicThreshold,
    GaussianDiffusion,
    MeanVariance,
    Prediction,
    Variance,
    clip_xstart,
    mean_flat,
)
from unclip.diffusion.losses import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from unclip.diffusion.respace import respace, space_timesteps
from unclip.diffusion.schedules import betas_for_alpha_bar, get_betas, list_schedules

__all__ = [
    "Clip",
    "DynamicThreshold",
    "GaussianDiffusion",
    "MeanVariance",
    "Prediction",
    "Variance",
    "betas_for_alpha_bar",
    "clip_xstart",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "get_betas",
    "list_schedules",
    "mean_flat",
    "normal_kl",
    "respace",
    "space_timesteps",
]
