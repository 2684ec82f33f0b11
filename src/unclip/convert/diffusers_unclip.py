"""Convert a diffusers ``UnCLIPPipeline`` / ``UnCLIPImageVariationPipeline`` directory (Karlo).

Layout read (what ``save_pretrained`` writes and what the Karlo repository holds)::

    SRC/model_index.json                  {"_class_name": "UnCLIPPipeline", ...}
    SRC/prior/                            PriorTransformer (text -> image embedding)
    SRC/text_proj/, SRC/decoder/          UnCLIPTextProjModel, UNet2DConditionModel
    SRC/super_res_first/, super_res_last/ UNet2DModel x 2
    SRC/text_encoder/, SRC/tokenizer/     CLIPTextModelWithProjection and its tokenizer
    SRC/image_encoder/                    CLIPVisionModelWithProjection (variation pipelines)
    SRC/{prior,decoder,super_res}_scheduler/scheduler_config.json

Each folder's weights are ``diffusion_pytorch_model.safetensors`` / ``model.safetensors`` (an
``.fp16`` variant is taken when it is the only one), or ``.bin`` files read with
``torch.load(weights_only=True)``. Every network is renamed by its explicit key table and loaded
strictly (:mod:`unclip.convert.keys`), so a checkpoint that does not fit fails with the list of
keys that did not match. The output is one of our model directories (design.md §4) that
:meth:`unclip.UnCLIPPipeline.from_pretrained` loads without diffusers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from unclip.convert.keys import load_mapped, read_json, read_weights
from unclip.errors import UserError

logger = logging.getLogger(__name__)

PIPELINES = ("UnCLIPPipeline", "UnCLIPImageVariationPipeline")

#: Karlo's reference sampling settings (diffusers' UnCLIPPipeline defaults), stored as the
#: converted model's pipeline defaults.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "prior": "diffusion",
    "prior_steps": 25,
    "prior_guidance_scale": 4.0,
    "prior_best_of": 1,
    "decoder_steps": 25,
    "decoder_guidance_scale": 8.0,
    "upsampler_steps": [7],
    "decoder_sampler": "ddpm",
    "upsampler_sampler": "ddpm",
}


def _fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _empty_caption(clip: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CLIP encoding of "" (diffusers' unconditional prompt): (1, D), (1, L, W), (1, L)."""
    tok = clip.tokenizer
    if tok is None:
        raise UserError("the pipeline has no tokenizer; the empty caption cannot be encoded")
    out = tok([""], padding="max_length", truncation=True, max_length=clip.max_text_len, return_tensors="pt")
    enc = clip.encode_tokens(out["input_ids"], out["attention_mask"].bool())
    return enc.text_emb, enc.text_tokens, enc.text_mask


def convert_diffusers_unclip(
    src: str | Path,
    out: str | Path,
    dtype: torch.dtype | None = None,
    image_encoder: str | Path | None = None,
) -> Path:
    """Convert a diffusers unCLIP pipeline directory into an unclip model directory.

    Args:
        src: the pipeline directory (``model_index.json`` and the component folders).
        out: the model directory to write.
        dtype: storage dtype of the weights (None: fp32; ``torch.float16``/``bfloat16`` halve it).
        image_encoder: a ``CLIPVisionModelWithProjection`` folder to use as the CLIP's image
            tower when ``src`` has none (Karlo's text-to-image repository ships only the text
            encoder; the image-variation repository's ``image_encoder`` is the matching ViT-L/14).
            Images (variations, edits, the evaluation suites) need one.

    Returns:
        ``out``.

    Raises:
        UserError: not an unCLIP pipeline, a missing folder or file, or weights that do not fit.
    """
    from unclip.convert.clip import convert_clip_parts
    from unclip.models.karlo.prior import PRIOR_KEYS, KarloPriorConfig
    from unclip.models.karlo.stages import (
        KarloDecoder,
        KarloDecoderConfig,
        KarloPrior,
        KarloPriorStageConfig,
        KarloSchedule,
        KarloUpsampler,
        KarloUpsamplerConfig,
        set_null_text,
    )
    from unclip.models.karlo.text_proj import TEXT_PROJ_KEYS, KarloTextProjConfig
    from unclip.models.karlo.unet import UNET_KEYS, KarloUNetConfig
    from unclip.pipeline.model_dir import PipelineDefaults, save_model

    src, out = Path(src), Path(out)
    index = read_json(src / "model_index.json")
    kind = index.get("_class_name")
    if kind not in PIPELINES:
        raise UserError(f"{src} holds a {kind!r}, not a diffusers unCLIP pipeline ({' or '.join(PIPELINES)})")

    def schedule(name: str) -> KarloSchedule:
        return KarloSchedule.from_diffusers(read_json(src / name / "scheduler_config.json"), where=name)

    logger.info(
        "converting the CLIP text encoder%s", " and image encoder" if (src / "image_encoder").is_dir() else ""
    )
    vision = src / "image_encoder" if (src / "image_encoder").is_dir() else None
    if image_encoder is not None:
        if vision is not None:
            raise UserError(f"{src} has its own image_encoder; --image-encoder is for pipelines without one")
        vision = Path(image_encoder)
    logger.info("converting the CLIP text encoder%s", "" if vision is None else " and image encoder")
    clip_dir = out / "clip"
    extractor = src / "feature_extractor"
    convert_clip_parts(
        src / "text_encoder",
        vision,
        clip_dir,
        normalize=False,
        tokenizer_dir=src / "tokenizer",
        preprocessor_dir=extractor if extractor.is_dir() else None,
    )
    from unclip.clip.hf_clip import load_hf_clip

    clip = load_hf_clip(clip_dir)
    null = _empty_caption(clip)
    text_len, text_width = null[1].shape[1], null[1].shape[2]
    components: dict[str, torch.nn.Module] = {"clip": clip}

    if kind == "UnCLIPPipeline":
        logger.info("converting the prior")
        net_cfg = KarloPriorConfig.from_diffusers(read_json(src / "prior" / "config.json"))
        prior = KarloPrior(
            KarloPriorStageConfig(
                net=net_cfg, schedule=schedule("prior_scheduler"), text_len=text_len, text_width=text_width
            )
        )
        load_mapped(prior.net, _fp32(read_weights(src / "prior")), PRIOR_KEYS, "prior")
        set_null_text(prior, *null)
        components["prior"] = prior

    logger.info("converting the text projection and the decoder")
    unet_cfg = KarloUNetConfig.from_diffusers(read_json(src / "decoder" / "config.json"))
    proj_cfg = KarloTextProjConfig.from_diffusers(read_json(src / "text_proj" / "config.json"))
    decoder = KarloDecoder(
        KarloDecoderConfig(
            unet=unet_cfg,
            text_proj=proj_cfg,
            schedule=schedule("decoder_scheduler"),
            text_len=text_len,
            text_dim=text_width,
        )
    )
    load_mapped(decoder.unet, _fp32(read_weights(src / "decoder")), UNET_KEYS, "decoder")
    load_mapped(decoder.text_proj, _fp32(read_weights(src / "text_proj")), TEXT_PROJ_KEYS, "text_proj")
    set_null_text(decoder, *null)
    components["decoder"] = decoder

    logger.info("converting the super-resolution UNets")
    sr_cfg = KarloUNetConfig.from_diffusers(read_json(src / "super_res_first" / "config.json"))
    last_cfg = KarloUNetConfig.from_diffusers(read_json(src / "super_res_last" / "config.json"))
    if last_cfg != sr_cfg:
        raise UserError("super_res_first and super_res_last have different architectures")
    if sr_cfg.sample_size % unet_cfg.sample_size:
        raise UserError(
            f"super-res size {sr_cfg.sample_size} is not a multiple of the decoder size {unet_cfg.sample_size}"
        )
    up = KarloUpsampler(
        KarloUpsamplerConfig(
            unet=sr_cfg,
            schedule=schedule("super_res_scheduler"),
            scale=sr_cfg.sample_size // unet_cfg.sample_size,
        )
    )
    load_mapped(up.first, _fp32(read_weights(src / "super_res_first")), UNET_KEYS, "super_res_first")
    load_mapped(up.last, _fp32(read_weights(src / "super_res_last")), UNET_KEYS, "super_res_last")
    components["upsampler1"] = up

    defaults = dict(REFERENCE_DEFAULTS)
    info = {
        "converted_from": kind,
        "source": str(src.resolve()),
        "diffusers_version": index.get("_diffusers_version"),
        "note": "unnormalised CLIP embeddings (Karlo convention); see docs/karlo.md",
    }
    save_model(out, components, defaults=PipelineDefaults.from_dict(defaults), info=info, dtype=dtype)
    logger.info("wrote %s", out)
    return out
