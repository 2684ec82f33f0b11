"""Explicit key tables for converting other libraries' checkpoints into our modules.

A table is an ordered list of ``(source_regex, target_template)`` rules. Each source key is
renamed by the first rule whose regex matches the whole key (``re.fullmatch``; the template may
use ``\\1``-style groups). A rule whose template is ``None`` drops the key on purpose (buffers
we recompute, for instance). The result must cover the target module's state dict exactly,
with equal shapes; anything else fails with one message listing what did not match.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unclip.errors import UserError

KeyTable = Sequence[tuple[str, str | None]]

#: Weight files of a diffusers / transformers model folder, in order of preference. An ``.fp16``
#: variant is read when it is the only one; ``.bin`` files only with ``weights_only=True``.
WEIGHT_FILES = tuple(
    f"{name}{variant}.{ext}"
    for ext in ("safetensors", "bin")
    for variant in ("", ".fp16")
    for name in (
        ("diffusion_pytorch_model", "model")
        if ext == "safetensors"
        else ("diffusion_pytorch_model", "pytorch_model")
    )
)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint folder, or a one-line UserError (missing, corrupt, not an object)."""
    if not path.is_file():
        raise UserError(f"missing {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt {path}: expected a JSON object")
    return data


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers or transformers model folder (see :data:`WEIGHT_FILES`).

    Raises:
        UserError: no weights file, a corrupt one, a sharded checkpoint, or a pickle holding
            anything but tensors.
    """
    from unclip.checkpoint import CheckpointError, load_state_dict

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"missing folder {directory}")
    path = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if path is None:
        sharded = (
            " (sharded checkpoints are not supported; merge the shards first)"
            if any(directory.glob("*.index.json"))
            else ""
        )
        raise UserError(
            f"no weights in {directory} (expected one of {', '.join(WEIGHT_FILES[:4])}, or .bin){sharded}"
        )
    if path.suffix == ".safetensors":
        try:
            return load_state_dict(path)
        except CheckpointError as e:
            raise UserError(str(e)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {path} as plain tensors (weights_only): {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


def _short(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def rename_keys(source: Mapping[str, torch.Tensor], table: KeyTable, what: str) -> dict[str, torch.Tensor]:
    """Rename every key of ``source`` by ``table``.

    Raises:
        UserError: a source key no rule matches, or two source keys mapped to one target.
    """
    compiled = [(re.compile(src), dst) for src, dst in table]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    for key, value in source.items():
        for rx, dst in compiled:
            m = rx.fullmatch(key)
            if m is None:
                continue
            if dst is not None:
                new = m.expand(dst)
                if new in out:
                    raise UserError(f"{what}: keys {origin[new]!r} and {key!r} both map to {new!r}")
                out[new], origin[new] = value, key
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise UserError(
            f"{what}: {len(unmatched)} checkpoint key(s) match no conversion rule: {_short(unmatched)}"
        )
    return out


def load_mapped(
    module: nn.Module, source: Mapping[str, torch.Tensor], table: KeyTable, what: str
) -> nn.Module:
    """Rename ``source`` by ``table`` and load it into ``module`` strictly, in fp32 or the module's dtype.

    Raises:
        UserError: unmatched source keys, missing or unexpected target keys, or a shape mismatch,
            each listed.
    """
    renamed = rename_keys(source, table, what)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
    bad = [
        f"{k} {tuple(renamed[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in renamed and tuple(renamed[k].shape) != tuple(v.shape)
    ]
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es): {_short(bad, 6)}")
    if problems:
        raise UserError(f"{what}: checkpoint does not fit the converted architecture; " + "; ".join(problems))
    state = {
        k: renamed[k].to(dtype=v.dtype) if v.is_floating_point() else renamed[k] for k, v in expected.items()
    }
    module.load_state_dict(state, strict=True)
    return module
