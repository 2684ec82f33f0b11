"""Trainable generative networks: the shared UNet trunk, the decoder and the upsamplers."""

from __future__ import annotations

from unclip.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
