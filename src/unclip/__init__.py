"""unclip: an implementation of DALL-E 2 / unCLIP (Ramesh et al. 2022).

The library is importable without the train/serve/eval extras. Heavy submodules are imported
lazily by the names that use them.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
