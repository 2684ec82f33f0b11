"""A tiny random-weight unCLIP model directory for pipeline, manipulation and CLI tests.

Every component comes from its ``*-tiny-test`` preset; zero-initialised output layers get random
weights so that every stage's output depends on its input (a zero decoder would make many
checks pass trivially). The model is untrained: tests check plumbing, formats and invariants,
never image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unclip.clip import ClipConfig, ClipModel
from unclip.clip.tokenizer import train_bpe
from unclip.models.ar_prior import ARPrior, ARPriorConfig
from unclip.models.decoder import Decoder, DecoderConfig
from unclip.models.prior import DiffusionPrior, DiffusionPriorConfig
from unclip.models.upsampler import Upsampler, UpsamplerConfig
from unclip.pipeline import PipelineDefaults, save_model
from unclip.presets import get_preset

CAPTIONS = [
    f"a {size} {color} {shape}"
    for size in ("small", "big")
    for color in ("red", "green", "blue")
    for shape in ("circle", "square", "triangle")
]

#: Few steps everywhere: the tests check plumbing, not quality.
TINY_DEFAULTS = PipelineDefaults(prior_steps=4, decoder_steps=4, upsampler_steps=(3,), prior_best_of=2)


def randomize(module: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Random weights everywhere (norm gains near 1), including zero-initialised layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    return module


def tiny_components(with_ar: bool = True, with_upsampler: bool = True, seed: int = 0) -> dict[str, nn.Module]:
    """The modules of a tiny model, by component name (see :data:`unclip.pipeline.COMPONENTS`)."""
    torch.manual_seed(seed)
    clip_cfg = ClipConfig.from_dict(get_preset("clip-tiny-test")["model"])
    tok = train_bpe(CAPTIONS, clip_cfg.text.vocab_size, clip_cfg.text.context_length)
    clip = ClipModel(clip_cfg, tok).eval()
    widths = {"embed_dim": clip.embed_dim, "text_width": clip.token_width, "max_text_len": clip.max_text_len}

    prior = DiffusionPrior(
        DiffusionPriorConfig.from_dict({**get_preset("prior-diffusion-tiny-test")["model"], **widths})
    )
    out: dict[str, nn.Module] = {"clip": clip, "prior": randomize(prior, seed + 1).eval()}
    if with_ar:
        ar = randomize(
            ARPrior(ARPriorConfig.from_dict({**get_preset("prior-ar-tiny-test")["model"], **widths})),
            seed + 2,
        )
        g = torch.Generator().manual_seed(seed + 2)
        image_emb = F.normalize(torch.randn(256, clip.embed_dim, generator=g), dim=-1)
        text_emb = F.normalize(image_emb + 0.5 * torch.randn(256, clip.embed_dim, generator=g), dim=-1)
        ar.fit_statistics(image_emb, text_emb)
        out["prior_ar"] = ar.eval()
    dec_cfg = {
        **get_preset("decoder-tiny-test")["model"],
        "clip_dim": clip.embed_dim,
        "text_dim": clip.token_width,
    }
    out["decoder"] = randomize(Decoder(DecoderConfig.from_dict(dec_cfg)), seed + 3).eval()
    if with_upsampler:
        up_cfg = get_preset("upsampler-tiny-test")["model"]
        side = out["decoder"].config.image_size
        up_cfg = {**up_cfg, "low_res_size": side, "unet": {**up_cfg["unet"], "image_size": side}}
        out["upsampler1"] = randomize(Upsampler(UpsamplerConfig.from_dict(up_cfg)), seed + 4).eval()
    return out


def make_tiny_model(directory: str | Path, with_ar: bool = True, with_upsampler: bool = True) -> Path:
    """Build and save a tiny model directory (16 px decoder, optional 16 -> 64 px upsampler).

    Args:
        directory: output folder (created).
        with_ar: include the autoregressive prior ("prior_ar").
        with_upsampler: include one upsampler ("upsampler1").

    Returns:
        The model directory, loadable with ``UnCLIPPipeline.from_pretrained``.
    """
    comps = tiny_components(with_ar=with_ar, with_upsampler=with_upsampler)
    return save_model(directory, comps, defaults=TINY_DEFAULTS, info={"made_by": "tests/pipeline_helpers.py"})
