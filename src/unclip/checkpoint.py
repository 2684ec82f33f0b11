"""Self-describing model checkpoints: safetensors weights + config JSON + format version.

A *component* (a CLIP, a prior, a decoder, an upsampler, ...) is saved as a directory::

    DIR/component.json      {"kind": ..., "format_version": 1, "config": {...}, "weights": "model.safetensors"}
    DIR/model.safetensors   weights; the same JSON is embedded in the safetensors metadata

and loads with nothing else: the kind names a registered builder, the config is validated
strictly (unknown keys are an error), and a newer format version is refused. Pickles are never
loaded. A whole *model* (several components) is a directory of component directories plus an
index; see :mod:`unclip.pipeline` for that level.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unclip.config import Config
from unclip.errors import UserError

FORMAT_VERSION = 1
COMPONENT_FILE = "component.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, of an unknown kind or of a newer format."""


@dataclass(frozen=True)
class ComponentKind:
    """How to rebuild a module of one kind from its config."""

    config_cls: type[Config]
    build: Callable[[Any], nn.Module]


_KINDS: dict[str, ComponentKind] = {}


def add_kind(name: str, config_cls: type[Config], build: Callable[[Any], nn.Module]) -> None:
    """Register a component kind (called by the modules that define models)."""
    _KINDS[name] = ComponentKind(config_cls, build)


def list_kinds() -> list[str]:
    return sorted(_KINDS)


def get_kind(name: str) -> ComponentKind:
    _import_builtin_kinds()
    if name not in _KINDS:
        raise CheckpointError(f"unknown component kind {name!r}; known kinds: {', '.join(list_kinds())}")
    return _KINDS[name]


def _import_builtin_kinds() -> None:
    # Model modules register their kinds on import; import the known ones lazily so that
    # loading a checkpoint needs no prior import by the caller.
    import importlib

    for mod in (
        "unclip.clip.model",
        "unclip.clip.hf_clip",
        "unclip.models.prior",
        "unclip.models.ar_prior",
        "unclip.models.decoder",
        "unclip.models.upsampler",
        "unclip.models.karlo.stages",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("unclip"):
                raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` made atomic (temp + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_component(
    module: nn.Module,
    config: Config,
    kind: str,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``module`` (built from ``config``) as a component directory.

    Args:
        module: the model; its ``state_dict`` is saved (shared tensors are cloned).
        config: the config the module was built from.
        kind: registered kind name, e.g. "clip", "diffusion_prior".
        directory: output directory (created).
        dtype: optional storage dtype for floating tensors (e.g. ``torch.bfloat16`` for bundles).
        extra: JSON-able extra fields stored in component.json (e.g. training provenance).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "weights": WEIGHTS_FILE,
    }
    if extra:
        header["extra"] = extra
    tensors = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.clone()
    atomic_save_tensors(tensors, directory / WEIGHTS_FILE, metadata={"unclip": json.dumps(header)})
    atomic_write_bytes(
        directory / COMPONENT_FILE, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode()
    )
    return directory


def read_component_header(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``component.json`` (kind and format version)."""
    directory = Path(directory)
    path = directory / COMPONENT_FILE
    if not path.is_file():
        raise CheckpointError(f"not a component directory (no {COMPONENT_FILE}): {directory}")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None
    if not isinstance(header, dict) or "kind" not in header or "config" not in header:
        raise CheckpointError(f"corrupt {path}: missing 'kind' or 'config'")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this unclip understands ({FORMAT_VERSION}); "
            "upgrade unclip"
        )
    return header


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with a clear error for missing, corrupt or pickle files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then the JSON header ("{"). Anything else
    # that starts like a pickle (0x80) or a zip (torch.save) is refused as such.
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; only safetensors are loaded")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt safetensors file {path}: {e}") from None


def load_component(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a component from its directory. Returns (module in eval mode, config, header)."""
    directory = Path(directory)
    header = read_component_header(directory)
    kind = get_kind(header["kind"])
    config = kind.config_cls.from_dict(header["config"])
    module = kind.build(config)
    state = load_state_dict(directory / header.get("weights", WEIGHTS_FILE))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not match the config (missing: {sorted(missing)[:5]}, "
            f"unexpected: {sorted(unexpected)[:5]})"
        )
    module.to(device).eval()
    return module, config, header
