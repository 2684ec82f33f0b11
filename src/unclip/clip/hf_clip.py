"""A converted ``transformers`` CLIP as one of our components (kind "hf_clip").

:class:`~unclip.clip.adapters.HFClipAdapter` opens a transformers checkpoint directory as it is;
this module stores such a CLIP in our own component format (``component.json`` +
``model.safetensors`` + the tokenizer's files, written by :mod:`unclip.convert.clip`), so that a
model directory can hold it next to converted priors and decoders and load it strictly like any
other component. The network is transformers' own ``CLIPModel`` (or ``CLIPTextModelWithProjection``
when only the text tower was converted), rebuilt from the stored config without downloading
anything; ``transformers`` is needed at load time (``pip install 'unclip[adapters]'``).

Converted unCLIP models (Karlo) consume *unnormalised* projected embeddings, so their CLIP is
stored with ``normalize=False``: ``encode_text(...).text_emb`` and ``encode_image`` then return
the raw projections, deliberately breaking the unit-norm contract of
:class:`~unclip.clip.interface.ClipEncoder`. Only converted unCLIP models set it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import add_kind, load_component, save_component
from unclip.clip.adapters import OPENAI_MEAN, OPENAI_STD, HFClipAdapter
from unclip.clip.preprocess import ImageInput, ImagePreprocess
from unclip.config import Config
from unclip.errors import UserError

KIND = "hf_clip"
#: Any of these in a component directory means the tokenizer was saved there.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")

# Generic keys of a transformers PretrainedConfig that say nothing about the CLIP architecture
# (output switches, labels, provenance); dropped so that the stored config is the network only.
_GENERIC_KEYS = {
    "architectures",
    "chunk_size_feed_forward",
    "dtype",
    "id2label",
    "is_encoder_decoder",
    "label2id",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
    "torch_dtype",
    "transformers_version",
}


def transformers_module() -> Any:
    """``import transformers``, or a UserError saying how to install it."""
    try:
        import transformers
    except ModuleNotFoundError as e:
        raise UserError("this model's CLIP needs transformers: pip install 'unclip[adapters]'") from e
    return transformers


def clean_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers sub-config dict (``CLIPTextConfig.to_dict()``, ...) without bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in _GENERIC_KEYS}


@dataclasses.dataclass(frozen=True)
class HFClipConfig(Config):
    """A transformers CLIP, as stored in an "hf_clip" component.

    Attributes:
        text_config: the text tower's ``CLIPTextConfig`` as a dict (bookkeeping keys dropped).
        vision_config: the image tower's ``CLIPVisionConfig`` dict, or None for a text-only CLIP
            (``encode_image`` then raises).
        projection_dim: D, the width of the projected embeddings.
        logit_scale_init_value: ``CLIPConfig``'s (the logit scale itself is a stored weight).
        image_mean, image_std: pixel normalisation of the checkpoint.
        max_text_len: L, the padded token length (Karlo: 77, the tokenizer's model_max_length).
        normalize: L2-normalise text_emb and image embeddings (the ClipEncoder contract); False
            returns raw projections, which converted unCLIP models consume.
    """

    text_config: dict[str, Any]
    vision_config: dict[str, Any] | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    image_std: tuple[float, float, float] = OPENAI_STD
    max_text_len: int = 77
    normalize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.text_config, dict) or "hidden_size" not in self.text_config:
            raise ValueError("text_config must be a transformers CLIPTextConfig dict")
        if self.vision_config is not None and (
            not isinstance(self.vision_config, dict) or "image_size" not in self.vision_config
        ):
            raise ValueError("vision_config must be a transformers CLIPVisionConfig dict or null")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}")
        positions = int(self.text_config.get("max_position_embeddings", 77))
        if not 1 <= self.max_text_len <= positions:
            raise ValueError(f"max_text_len must be in [1, {positions}], got {self.max_text_len}")


def _build_transformers_model(config: HFClipConfig) -> nn.Module:
    tf = transformers_module()
    if config.vision_config is None:
        text = tf.CLIPTextConfig.from_dict({**config.text_config, "projection_dim": config.projection_dim})
        return tf.CLIPTextModelWithProjection(text)
    return tf.CLIPModel(
        tf.CLIPConfig(
            text_config=dict(config.text_config),
            vision_config=dict(config.vision_config),
            projection_dim=config.projection_dim,
            logit_scale_init_value=config.logit_scale_init_value,
        )
    )


class HFClip(HFClipAdapter):
    """The module of an "hf_clip" component: an :class:`HFClipAdapter` built from a stored config.

    Same interface as the adapter (``encode_text``, ``encode_image``, ``tokenize``,
    ``encode_tokens``, ``embed_dim``, ``image_size``, ``preprocess``, ``device``), plus
    ``normalize`` (see the module docstring) and saving / tokenizer loading in our format.

    Args:
        config: the stored config; the weights are random until loaded.
        tokenizer: an HF tokenizer, or None (attach one with :meth:`attach_tokenizer_from`).
    """

    def __init__(self, config: HFClipConfig, tokenizer: Any = None) -> None:
        # HFClipAdapter.__init__ reads the vision config off the model, which a text-only CLIP
        # lacks; the same attributes are set here from our config instead.
        nn.Module.__init__(self)
        self.config = config
        self.model = _build_transformers_model(config).eval()
        self.normalize = config.normalize
        self.embed_dim = config.projection_dim
        self.token_width = int(config.text_config["hidden_size"])
        self.max_text_len = config.max_text_len
        self.tokenizer = tokenizer
        self.has_vision = config.vision_config is not None
        self.image_size = int(config.vision_config["image_size"]) if config.vision_config is not None else 0
        # A text-only CLIP keeps a placeholder so the attribute exists; encode_image refuses first.
        self.preprocess = ImagePreprocess(max(self.image_size, 1), config.image_mean, config.image_std)

    def finish_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        """Unit-norm, or the raw projection when the config says ``normalize: false``."""
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.no_grad()
    def encode_image(self, images: ImageInput, preprocessed: bool = False) -> torch.Tensor:
        """Images -> (B, D) float32 embeddings, raw unless ``normalize``.

        Raises:
            UserError: this CLIP was converted without its image tower, or bad pixels.
        """
        if not self.has_vision:
            raise UserError("this CLIP was converted without its image tower; it cannot encode images")
        return super().encode_image(images, preprocessed=preprocessed)

    def check_pixels(self, pixels: torch.Tensor) -> None:
        s = self.image_size
        if tuple(pixels.shape[1:]) != (3, s, s):
            raise UserError(
                f"expected preprocessed images of shape (B, 3, {s}, {s}), got {tuple(pixels.shape)}"
            )

    def save(
        self, directory: str | Path, dtype: torch.dtype | None = None, extra: dict | None = None
    ) -> Path:
        """Save as an "hf_clip" component directory plus the tokenizer's files.

        Raises:
            UserError: no HF tokenizer attached (a component without one could not encode text).
        """
        if not hasattr(self.tokenizer, "save_pretrained"):
            raise UserError("cannot save a converted CLIP without its transformers tokenizer")
        directory = save_component(self, self.config, KIND, directory, dtype=dtype, extra=extra)
        self.tokenizer.save_pretrained(str(directory))
        return directory

    def attach_tokenizer_from(self, directory: str | Path) -> HFClip:
        """Load the tokenizer saved in a component directory (offline) and use it; returns self.

        Raises:
            UserError: no tokenizer files there, or transformers cannot read them.
        """
        directory = Path(directory)
        if not any((directory / f).is_file() for f in TOKENIZER_FILES):
            raise UserError(
                f"converted CLIP component {directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)})"
            )
        tf = transformers_module()
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot load the tokenizer in {directory}: {e}") from None
        return self


def build_hf_clip(config: HFClipConfig) -> HFClip:
    """Builder registered for the "hf_clip" kind (tokenizer attached by :func:`load_hf_clip`)."""
    return HFClip(config)


def load_hf_clip(directory: str | Path, device: str | torch.device = "cpu") -> HFClip:
    """Load an "hf_clip" component directory (eval mode, fp32, tokenizer attached).

    Raises:
        UserError: not an "hf_clip" component, or its files are missing or corrupt.
    """
    directory = Path(directory)
    module, _config, header = load_component(directory, device=device)
    if header["kind"] != KIND:
        raise UserError(
            f"{directory} holds a {header['kind']!r} component, not a converted transformers CLIP"
        )
    return module.attach_tokenizer_from(directory)


add_kind(KIND, HFClipConfig, build_hf_clip)
