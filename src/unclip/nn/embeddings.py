"""Embeddings shared by the diffusion networks: sinusoidal timesteps, 2-D positions, zero init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in ADM / the Transformer.

    Args:
        t: (B,) timesteps (int or float).
        dim: output width.
        max_period: the longest wavelength.

    Returns:
        (B, dim) float32 embedding, cos half then sin half.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it.

    Used on the last layer of each residual branch and on the network's output so that a freshly
    built network is the identity on its residual stream and outputs zeros (ADM / GLIDE).
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepMLP(nn.Module):
    """Sinusoidal features followed by a two-layer MLP: (B,) -> (B, out_dim).

    Args:
        freq_dim: width of the sinusoidal features.
        out_dim: width of the output (the network's embedding width).
    """

    def __init__(self, freq_dim: int, out_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        w = self.mlp[0].weight
        return self.mlp(timestep_embedding(t, self.freq_dim).to(w.dtype))


class LearnedPos2d(nn.Module):
    """A learned 2-D positional map added to a feature map, resized for other resolutions.

    A spatially uniform conditioning signal (scale-shift from a global embedding) cannot say
    *where* something goes, and attention without positions is permutation-invariant over pixels;
    giving every pixel a learned position code lets the attention layers route "top left" from the
    context tokens to the right place (design.md §10). The map is stored at the resolution the
    network was configured for and bilinearly resized when run at another size (the upsampler-style
    fully convolutional use), so positions stay relative to the image frame.

    Args:
        channels: C, the feature width.
        size: S, the side of the stored (C, S, S) map.
    """

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        # Small init so an untrained map barely perturbs the features.
        self.pos = nn.Parameter(torch.randn(1, channels, size, size) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> x + pos resized to (H, W)."""
        pos = self.pos
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + pos.to(x.dtype)
