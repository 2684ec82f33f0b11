"""Kakao Brain's Karlo networks (diffusers ``UnCLIPPipeline`` weights) re-implemented without diffusers."""

from __future__ import annotations
