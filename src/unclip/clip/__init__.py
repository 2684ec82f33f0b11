"""CLIP encoders: one interface (:class:`ClipEncoder`), our trainable CLIP, and adapters.

>>> from unclip.clip import load_encoder
>>> clip = load_encoder("runs/clip-shapes")          # ours, or a transformers CLIP directory
>>> enc = clip.encode_text(["a red circle"])          # TextEncoding(text_emb, text_tokens, text_mask)
>>> z_i = clip.encode_image(pil_images)               # (B, D), unit norm
"""

from __future__ import annotations

from pathlib import Path

from unclip.clip.config import ClipConfig, TextConfig, VisionConfig
from unclip.clip.interface import ClipEncoder, TextEncoding
from unclip.clip.model import ClipModel, load_clip
from unclip.errors import UserError

__all__ = [
    "ClipConfig",
    "ClipEncoder",
    "ClipModel",
    "TextConfig",
    "TextEncoding",
    "VisionConfig",
    "load_clip",
    "load_encoder",
]


def load_encoder(path: str | Path, device: str = "cpu") -> ClipEncoder:
    """Open any supported CLIP directory as a :class:`ClipEncoder`.

    * our "clip" component directory (or a model directory containing ``clip/``);
    * an "hf_clip" component (``unclip convert clip``, or a converted Karlo model's ``clip/``);
    * a ``transformers`` CLIPModel directory (config.json with ``model_type: clip``), through
      :class:`unclip.clip.adapters.HFClipAdapter`.

    Raises:
        UserError: the directory is missing or of an unknown kind.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"CLIP model not found: {p}")
    comp = p if (p / "component.json").is_file() else p / "clip"
    if (comp / "component.json").is_file():
        from unclip.checkpoint import read_component_header

        if read_component_header(comp)["kind"] == "hf_clip":
            from unclip.clip.hf_clip import load_hf_clip

            return load_hf_clip(comp, device=device)
        return load_clip(p, device=device)
    if (p / "config.json").is_file():
        from unclip.clip.adapters import HFClipAdapter

        return HFClipAdapter.from_pretrained(p, device=device)
    raise UserError(f"{p} is neither an unclip CLIP component nor a transformers CLIP directory")
