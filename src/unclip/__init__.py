"""unclip: an implementation of DALL-E 2 / unCLIP (Ramesh et al. 2022).

The library is importable without the train/serve/eval extras. Heavy submodules are imported
lazily by the names that use them: ``unclip.UnCLIPPipeline`` imports torch and the models on
first access only.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"

__all__ = ["UnCLIPPipeline", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "UnCLIPPipeline":
        from unclip.pipeline import UnCLIPPipeline

        return UnCLIPPipeline
    raise AttributeError(f"module 'unclip' has no attribute {name!r}")
