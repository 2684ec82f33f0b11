"""The shapes world: captioned synthetic scenes with exact ground truth, and a pixel oracle.

Quick tour::

    import numpy as np
    from unclip.data.shapes import sample_scene, render, caption, parse_caption, read_scene, score

    rng = np.random.default_rng(0)
    spec = sample_scene(rng)                 # SceneSpec: 1-3 objects, never a held-out combination
    image = render(spec, size=64)            # PIL RGB; the same spec renders at any size
    text = caption(spec, rng)                # e.g. "a red star to the left of something blue"
    score(image, text)["all_correct"]        # True: the oracle reads the scene back from pixels

See docs/data-shapes.md for the vocabulary, templates, held-out list and measured accuracy.
``ShapesStream``/``write_shards`` (which import torch) load on first use.
"""

from __future__ import annotations

from typing import Any

from unclip.data.shapes.captions import (
    CAPTION_MODES,
    CaptionMode,
    CaptionSpec,
    Mention,
    caption,
    describe,
    parse_caption,
)
from unclip.data.shapes.oracle import ObjectReading, read_background, read_scene, score
from unclip.data.shapes.render import render, render_array
from unclip.data.shapes.scene import ObjectSpec, SceneSpec, held_out_rules, is_held_out, sample_scene
from unclip.data.shapes.vocab import (
    BACKGROUNDS,
    COLORS,
    FILLS,
    HELD_OUT,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    VOCAB_VERSION,
    HeldOutRule,
    position_name,
    relation_holds,
)

_LAZY = {
    "ShapesStream": "unclip.data.shapes.stream",
    "collate_shapes": "unclip.data.shapes.stream",
    "image_tensor": "unclip.data.shapes.stream",
    "make_sample": "unclip.data.shapes.stream",
    "write_shards": "unclip.data.shapes.stream",
    "make_grid": "unclip.data.shapes.grid",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKGROUNDS",
    "CAPTION_MODES",
    "COLORS",
    "FILLS",
    "HELD_OUT",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "VOCAB_VERSION",
    "CaptionMode",
    "CaptionSpec",
    "HeldOutRule",
    "Mention",
    "ObjectReading",
    "ObjectSpec",
    "SceneSpec",
    "ShapesStream",
    "caption",
    "collate_shapes",
    "describe",
    "held_out_rules",
    "image_tensor",
    "is_held_out",
    "make_grid",
    "make_sample",
    "parse_caption",
    "position_name",
    "read_background",
    "read_scene",
    "relation_holds",
    "render",
    "render_array",
    "sample_scene",
    "score",
    "write_shards",
]
