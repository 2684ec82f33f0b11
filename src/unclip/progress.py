"""Progress bars that respect `--quiet` (the UNCLIP_QUIET environment variable)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet() -> bool:
    """True when progress output is switched off (`unclip --quiet` or UNCLIP_QUIET=1)."""
    return os.environ.get("UNCLIP_QUIET", "") not in ("", "0")


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when quiet. Accepts tqdm's keyword arguments."""
    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
