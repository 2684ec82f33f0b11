"""Named presets: JSON files describing a model config and its training recipe.

A preset is a JSON object ``{"kind": "clip", "description": "...", "model": {...}, "train": {...}}``:
``model`` is the stage's config (e.g. :class:`unclip.clip.config.ClipConfig`), ``train`` the
:class:`unclip.train.config.TrainConfig` fields that differ from the defaults. The package's presets
live beside this file; :func:`add_preset_dir` adds a folder of your own (later folders win).

>>> sorted(list_presets(kind="clip"))[:1]
['clip-emoji-minilm']
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from unclip.errors import UserError

_DIRS: list[Path] = [Path(__file__).parent]
_ALLOWED_KEYS = {"kind", "description", "model", "train"}


def add_preset_dir(path: str | Path) -> None:
    """Register a folder of ``NAME.json`` presets; they shadow built-in presets of the same name."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"preset folder not found: {p}")
    if p not in _DIRS:
        _DIRS.append(p)


def _files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in _DIRS:
        for f in sorted(d.glob("*.json")):
            found[f.stem] = f
    return found


def list_presets(kind: str | None = None) -> list[str]:
    """Names of all presets, optionally only those of one ``kind`` ("clip", "prior", ...)."""
    names = sorted(_files())
    if kind is None:
        return names
    return [n for n in names if get_preset(n).get("kind") == kind]


def validate_preset(data: Any, where: str) -> dict[str, Any]:
    """Check the top-level layout of a preset/config dict (not the inner configs)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a preset must be a JSON object")
    unknown = sorted(set(data) - _ALLOWED_KEYS)
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_ALLOWED_KEYS))}"
        )
    for key in ("model", "train"):
        if key in data and not isinstance(data[key], dict):
            raise UserError(f"{where}: '{key}' must be a JSON object")
    return data


def get_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as a fresh dict (safe to modify).

    Raises:
        UserError: unknown name (the message lists the known ones) or a malformed file.
    """
    files = _files()
    if name not in files:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(sorted(files))}")
    try:
        data = json.loads(files[name].read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"preset {files[name]} is not valid JSON: {e}") from None
    return copy.deepcopy(validate_preset(data, f"preset {name}"))


def load_preset_file(path: str | Path) -> dict[str, Any]:
    """A preset-shaped JSON file given by path (``--config FILE``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"config file {p} is not valid JSON: {e}") from None
    return validate_preset(data, str(p))
