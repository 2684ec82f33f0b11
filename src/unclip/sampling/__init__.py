"""Sampling: samplers with one signature and classifier-free guidance written once.

Depends on :mod:`unclip.diffusion` only. See docs/diffusion.md.
"""

from __future__ import annotations

from unclip.sampling.guidance import guided_model_fn
from unclip.sampling.samplers import SamplerLoop, ddim_invert, list_samplers, sample

__all__ = ["SamplerLoop", "ddim_invert", "guided_model_fn", "list_samplers", "sample"]
