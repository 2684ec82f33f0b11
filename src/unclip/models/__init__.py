"""Trainable generative networks: the shared UNet trunk, the decoder and the upsamplers."""

from __future__ import annotations

from unclip.models.decoder import Decoder, DecoderConfig
from unclip.models.unet import UNet, UNetConfig
from unclip.models.upsampler import Upsampler, UpsamplerConfig

__all__ = ["Decoder", "DecoderConfig", "UNet", "UNetConfig", "Upsampler", "UpsamplerConfig"]
