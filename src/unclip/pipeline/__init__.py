"""Inference pipeline and whole-model directories (design.md §4, §6).

>>> from unclip.pipeline import UnCLIPPipeline
>>> pipe = UnCLIPPipeline.from_pretrained("path/to/model")   # or a bundle name
>>> out = pipe("a red circle", num_images_per_prompt=2, seed=0)

See docs/pipeline.md.
"""

from __future__ import annotations

from unclip.pipeline.model_dir import (
    COMPONENTS,
    PipelineDefaults,
    list_bundles,
    load_model,
    read_index,
    register_bundle,
    resolve_model,
    save_model,
)
from unclip.pipeline.pipeline import UnCLIPOutput, UnCLIPPipeline

__all__ = [
    "COMPONENTS",
    "PipelineDefaults",
    "UnCLIPOutput",
    "UnCLIPPipeline",
    "list_bundles",
    "load_model",
    "read_index",
    "register_bundle",
    "resolve_model",
    "save_model",
]
