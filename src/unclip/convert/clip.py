"""Convert a ``transformers`` CLIP checkpoint directory into an "hf_clip" component.

Two layouts are read:

* one ``CLIPModel`` directory (:func:`convert_clip`): ``config.json`` with ``model_type: clip``;
* the separate towers diffusers' unCLIP pipelines keep (:func:`convert_clip_parts`): Karlo's
  ``text_encoder/`` (``CLIPTextModelWithProjection``) and, for image variations,
  ``image_encoder/`` (``CLIPVisionModelWithProjection``), assembled into one CLIP.

Weights come from ``model.safetensors`` or, failing that, ``pytorch_model.bin`` read with
``torch.load(weights_only=True)`` (tensors only, never arbitrary pickled objects). The network is
transformers' own, so the key table is a prefix rename, but it is still explicit and checked: every
source key must match a rule, and the result must fill the module exactly with equal shapes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from unclip.clip.adapters import OPENAI_MEAN, OPENAI_STD
from unclip.clip.hf_clip import HFClip, HFClipConfig, clean_config_dict, transformers_module
from unclip.convert.keys import load_mapped, read_json, read_weights, rename_keys
from unclip.errors import UserError

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")

# Buffers older transformers versions saved; recomputed by the model.
_DROPPED: list[tuple[str, str | None]] = [(r"(text|vision)_model\.embeddings\.position_ids", None)]
#: CLIPTextModelWithProjection -> HFClip (the module keeps transformers' names under ``model.``).
TEXT_KEYS: list[tuple[str, str | None]] = [
    *_DROPPED,
    (r"text_model\.(.+)", r"model.text_model.\1"),
    (r"text_projection\.weight", "model.text_projection.weight"),
]
#: CLIPVisionModelWithProjection -> HFClip.
VISION_KEYS: list[tuple[str, str | None]] = [
    *_DROPPED,
    (r"vision_model\.(.+)", r"model.vision_model.\1"),
    (r"visual_projection\.weight", "model.visual_projection.weight"),
]
#: CLIPModel -> HFClip.
CLIP_KEYS: list[tuple[str, str | None]] = [
    *_DROPPED,
    (r"text_model\.(.+)", r"model.text_model.\1"),
    (r"text_projection\.weight", "model.text_projection.weight"),
    (r"vision_model\.(.+)", r"model.vision_model.\1"),
    (r"visual_projection\.weight", "model.visual_projection.weight"),
    (r"logit_scale", "model.logit_scale"),
]


def _read_config(directory: Path, model_types: tuple[str, ...]) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"not a transformers checkpoint directory (no config.json): {directory}")
    config = read_json(path)
    if config.get("model_type") not in model_types:
        got = config.get("model_type")
        raise UserError(f"{path}: model_type is {got!r}, expected {' or '.join(map(repr, model_types))}")
    return config


def _tokenizer(directory: Path) -> Any:
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"no tokenizer in {directory} (expected {' or '.join(TOKENIZER_FILES)}); pass tokenizer_dir"
        )
    tf = transformers_module()
    try:
        return tf.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot load the tokenizer in {directory}: {e}") from None


def _image_stats(directory: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from a preprocessor_config.json if there is one, else OpenAI CLIP's."""
    path = None if directory is None else directory / "preprocessor_config.json"
    if path is None or not path.is_file():
        return OPENAI_MEAN, OPENAI_STD
    try:
        conf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
    return tuple(conf.get("image_mean", OPENAI_MEAN)), tuple(conf.get("image_std", OPENAI_STD))


def _text_len(tokenizer: Any, text_config: dict[str, Any]) -> int:
    # model_max_length is a huge sentinel when the tokenizer does not set it.
    return min(int(tokenizer.model_max_length), int(text_config["max_position_embeddings"]))


def _finish(
    config: HFClipConfig,
    tokenizer: Any,
    state: dict[str, torch.Tensor],
    out_dir: str | Path,
    dtype: torch.dtype | None,
) -> Path:
    module = HFClip(config, tokenizer)
    load_mapped(module, state, CLIP_KEYS, "CLIP")
    out = module.save(out_dir, dtype=dtype)
    logger.info("converted CLIP (%d tensors) written to %s", len(module.state_dict()), out)
    return out


def convert_clip(
    src_dir: str | Path,
    out_dir: str | Path,
    normalize: bool = True,
    *,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert a transformers ``CLIPModel`` directory into an "hf_clip" component directory.

    A ``CLIPTextModelWithProjection`` directory is accepted too (a text-only CLIP, see
    :func:`convert_clip_parts`).

    Args:
        src_dir: config.json + model.safetensors (or pytorch_model.bin), with the tokenizer's
            files and optionally preprocessor_config.json (image mean/std).
        out_dir: the component directory to write.
        normalize: unit-norm embeddings (ClipEncoder contract); False for unCLIP models that
            consume raw projections (Karlo).
        tokenizer_dir: where the tokenizer's files are, if not in ``src_dir``.
        dtype: storage dtype of the floating weights (default: as computed, fp32).

    Returns:
        ``out_dir``.

    Raises:
        UserError: missing or corrupt files, another model type, or weights that do not fit the
            config (unmatched, missing or misshapen tensors, listed).
    """
    src = Path(src_dir)
    raw = _read_config(src, ("clip", "clip_text_model"))
    if raw["model_type"] == "clip_text_model":
        return convert_clip_parts(src, None, out_dir, normalize, tokenizer_dir=tokenizer_dir, dtype=dtype)
    tf = transformers_module()
    hf = tf.CLIPConfig.from_dict(raw)
    tokenizer = _tokenizer(Path(tokenizer_dir) if tokenizer_dir else src)
    text = clean_config_dict(hf.text_config.to_dict())
    mean, std = _image_stats(src)
    config = HFClipConfig.from_dict(
        dict(
            text_config=text,
            vision_config=clean_config_dict(hf.vision_config.to_dict()),
            projection_dim=int(hf.projection_dim),
            logit_scale_init_value=float(hf.logit_scale_init_value),
            image_mean=mean,
            image_std=std,
            max_text_len=_text_len(tokenizer, text),
            normalize=normalize,
        ),
        _where="converted CLIP config",
    )
    return _finish(config, tokenizer, read_weights(src), out_dir, dtype)


def convert_clip_parts(
    text_dir: str | Path,
    vision_dir: str | Path | None,
    out_dir: str | Path,
    normalize: bool = True,
    *,
    tokenizer_dir: str | Path | None = None,
    preprocessor_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Assemble one "hf_clip" component from separate text and image towers (Karlo's layout).

    The towers' state dicts are merged into a ``CLIPModel``'s (``text_model.*``,
    ``text_projection``, ``vision_model.*``, ``visual_projection``; ``logit_scale`` takes
    ``CLIPConfig``'s initial value, 2.6592, as no tower stores it). Without ``vision_dir`` the
    component is text-only and its ``encode_image`` raises.

    Args:
        text_dir: a ``CLIPTextModelWithProjection`` directory (Karlo: ``text_encoder/``).
        vision_dir: a ``CLIPVisionModelWithProjection`` directory (``image_encoder/``) or None.
        out_dir: the component directory to write.
        normalize: see :func:`convert_clip` (False for Karlo).
        tokenizer_dir: the tokenizer's files (Karlo: ``tokenizer/``); default ``text_dir``.
        preprocessor_dir: where preprocessor_config.json is (Karlo: ``feature_extractor/``);
            default ``vision_dir``; OpenAI CLIP's mean/std when absent.
        dtype: storage dtype of the floating weights.

    Returns:
        ``out_dir``.

    Raises:
        UserError: as :func:`convert_clip`; also a tower of the wrong type or projection widths
            that differ.
    """
    tf = transformers_module()
    text_dir = Path(text_dir)
    text_hf = tf.CLIPTextConfig.from_dict(_read_config(text_dir, ("clip_text_model",)))
    text_state = read_weights(text_dir)
    rename_keys(text_state, TEXT_KEYS, f"CLIP text encoder {text_dir}")  # only text keys allowed
    state = dict(text_state)
    vision = None
    if vision_dir is not None:
        vision_dir = Path(vision_dir)
        vision_hf = tf.CLIPVisionConfig.from_dict(_read_config(vision_dir, ("clip_vision_model",)))
        if int(vision_hf.projection_dim) != int(text_hf.projection_dim):
            raise UserError(
                f"the image tower projects to {vision_hf.projection_dim} dims, the text tower to "
                f"{text_hf.projection_dim}; they are not one CLIP"
            )
        vision_state = read_weights(vision_dir)
        rename_keys(vision_state, VISION_KEYS, f"CLIP image encoder {vision_dir}")
        state.update(vision_state)
        vision = clean_config_dict(vision_hf.to_dict())
    tokenizer = _tokenizer(Path(tokenizer_dir) if tokenizer_dir else text_dir)
    text = clean_config_dict(text_hf.to_dict())
    mean, std = _image_stats(
        Path(preprocessor_dir) if preprocessor_dir else (Path(vision_dir) if vision_dir else None)
    )
    config = HFClipConfig.from_dict(
        dict(
            text_config=text,
            vision_config=vision,
            projection_dim=int(text_hf.projection_dim),
            image_mean=mean,
            image_std=std,
            max_text_len=_text_len(tokenizer, text),
            normalize=normalize,
        ),
        _where="converted CLIP config",
    )
    if vision is not None and "logit_scale" not in state:
        state["logit_scale"] = torch.tensor(config.logit_scale_init_value)
    return _finish(config, tokenizer, state, out_dir, dtype)
