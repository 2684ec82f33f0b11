"""Tiny CLIP configs and captions shared by the CLIP tests."""

from __future__ import annotations

import contextlib

from unclip.clip import ClipConfig, ClipModel
from unclip.clip.tokenizer import train_bpe
from unclip.presets import get_preset

CAPTIONS = [
    f"a {size} {color} {shape} on the {side}"
    for size in ("small", "big")
    for color in ("red", "green", "blue")
    for shape in ("circle", "square")
    for side in ("left", "right")
]


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the CPU is shared:
    OpenMP threads spin-wait on each other when the machine is oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(**text) -> ClipConfig:
    cfg = ClipConfig.from_dict(get_preset("clip-tiny-test")["model"])
    if text:
        cfg = cfg.replace(text={**cfg.text.to_dict(), **text})
    return cfg


def tiny_clip(seed: int = 0) -> ClipModel:
    import torch

    torch.manual_seed(seed)
    cfg = tiny_config()
    tok = train_bpe(CAPTIONS, cfg.text.vocab_size, cfg.text.context_length)
    return ClipModel(cfg, tok)
