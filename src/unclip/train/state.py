"""Atomic training checkpoints: model, EMA, optimizer, step, RNG states and data position.

One file, ``state.pt`` in the run directory, written by ``torch.save`` to a temp file in the same
folder, fsynced, then renamed over the old one: a kill at any moment leaves either the previous
or the new checkpoint, never a torn one. It is read back with ``torch.load(weights_only=True)``,
so it may hold only tensors and plain containers/scalars (no pickled objects); the RNG states are
converted to tensors for that reason. Only files this program wrote are read this way; user
models are always safetensors (see :mod:`unclip.checkpoint`).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.checkpoint import CheckpointError

STATE_FILE = "state.pt"
STATE_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and python, as tensors and scalars."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically (temp file + fsync + rename; the folder is fsynced too).

    Args:
        path: the checkpoint file (usually ``RUN/state.pt``).
        state: tensors, dicts, lists and scalars only (``weights_only``-loadable).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": STATE_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_train_state` (``weights_only=True``, on CPU).

    Raises:
        CheckpointError: missing, unreadable or of a newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(f"cannot read training checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path} was written by a newer unclip (state version {state.get('version')})")
    return state


def cleanup_temp_files(folder: str | Path) -> None:
    """Remove temp files left by a kill during a save (``.NAME.*.tmp``)."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)
