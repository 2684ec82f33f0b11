"""Precomputed CLIP embedding shards: written once by an embed job, read by prior/decoder training.

CLIP is frozen while the prior and decoder train (design §2), so its outputs can be computed once
and streamed from disk. A folder of shards looks like::

    embeddings/
      index.json               fields, dtypes, shapes, per-shard counts; the source of truth
      emb-000000.safetensors   one tensor per field, first dimension = samples in the shard
      emb-000001.safetensors   string fields (caption, key) as JSON in the safetensors metadata

Every file is written atomically (temporary file, fsync, rename, directory fsync) and the index is
updated only after a shard is safely in place, so a job killed at any moment leaves a consistent
folder: shards not in the index and ``*.tmp`` files are leftovers that a resumed writer deletes.
Samples are written in order, so "how many samples exist" (:attr:`EmbeddingShardWriter.num_existing`)
is all an embed job needs to continue where it stopped.

Float fields may be stored as float16/bfloat16 to halve the disk and page-cache footprint; the
reader memory-maps each shard and returns float32 (configurable).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import mmap
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from unclip.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_NAME = "unclip-embeddings"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
_STRINGS_KEY = "unclip.strings"  # safetensors metadata entry holding the string fields as JSON

StorageDtype = Literal["float32", "float16", "bfloat16"]
FieldValue = torch.Tensor | np.ndarray | Sequence[str]

# torch dtype name <-> (safetensors code, numpy dtype used to view the bytes). bfloat16 has no
# numpy dtype: it is viewed as int16 and reinterpreted by torch.
_DTYPES: dict[str, tuple[str, np.dtype[Any], torch.dtype]] = {
    "float64": ("F64", np.dtype("<f8"), torch.float64),
    "float32": ("F32", np.dtype("<f4"), torch.float32),
    "float16": ("F16", np.dtype("<f2"), torch.float16),
    "bfloat16": ("BF16", np.dtype("<i2"), torch.bfloat16),
    "int64": ("I64", np.dtype("<i8"), torch.int64),
    "int32": ("I32", np.dtype("<i4"), torch.int32),
    "int16": ("I16", np.dtype("<i2"), torch.int16),
    "int8": ("I8", np.dtype("i1"), torch.int8),
    "uint8": ("U8", np.dtype("u1"), torch.uint8),
    "bool": ("BOOL", np.dtype("?"), torch.bool),
}
_TORCH_TO_NAME = {v[2]: k for k, v in _DTYPES.items()}


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"emb-{index:06d}.safetensors"


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk too, or a power cut can undo it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform / file system
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_index(root: Path) -> dict[str, Any]:
    path = root / INDEX_NAME
    if not root.is_dir():
        raise UserError(f"{root}: embeddings folder not found")
    if not path.is_file():
        raise UserError(
            f"{root}: no {INDEX_NAME}; not an embeddings folder (write one with EmbeddingShardWriter)"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not an unclip embeddings index")
    version = index.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {version!r} is newer than this unclip reads ({FORMAT_VERSION}); upgrade unclip"
        )
    try:
        fields, shards = index["fields"], index["shards"]
        for name, spec in fields.items():
            if spec["dtype"] != "str" and (
                spec["dtype"] not in _DTYPES or not isinstance(spec["shape"], list)
            ):
                raise ValueError(f"field {name}: bad dtype/shape {spec}")
        for shard in shards:
            if not isinstance(shard["file"], str) or int(shard["num_samples"]) < 1 or int(shard["bytes"]) < 8:
                raise ValueError(f"bad shard entry {shard}")
        if sum(int(s["num_samples"]) for s in shards) != int(index["num_samples"]):
            raise ValueError("num_samples does not match the shard counts")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: corrupt index ({e})") from None
    return index


def _check_shard_file(root: Path, shard: Mapping[str, Any], checksum: bool) -> str | None:
    """Why a listed shard is unusable, or None when its size (and checksum) match the index."""
    path = root / shard["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != shard["bytes"]:
        return f"truncated or overwritten ({size} bytes, index says {shard['bytes']})"
    if checksum and shard.get("sha256"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != shard["sha256"]:
            return "checksum mismatch"
    return None


class EmbeddingShardWriter:
    """Append batches of embeddings to a folder of safetensors shards (see the module docstring).

    Usage::

        with EmbeddingShardWriter("emb/", shard_size=10_000, resume=True, float_dtype="float16") as w:
            for batch in batches_of_my_dataset(start=w.num_existing):
                w.write({"image_emb": image_emb, "text_emb": text_emb, "text_tokens": tokens,
                         "text_mask": mask, "caption": captions, "key": keys})

    Args:
        out_dir: The folder (created if needed).
        shard_size: Samples per shard (the last shard of a run may be smaller).
        resume: Continue a folder that already has an index. Leftovers of an interrupted run
            (``*.tmp`` files, shards written but not yet indexed) are deleted; a listed shard that is
            missing or damaged is dropped together with every later shard, so the samples from there
            on are simply written again. Without ``resume`` an existing index is an error.
        float_dtype: Storage dtype of floating-point fields; ``None`` stores them as given.

    Attributes:
        num_existing: Samples already in the folder when the writer was opened.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        shard_size: int = 10_000,
        *,
        resume: bool = False,
        float_dtype: StorageDtype | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if float_dtype is not None and float_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"float_dtype must be float32, float16, bfloat16 or None, got {float_dtype!r}")
        self.root = Path(out_dir)
        self.shard_size = shard_size
        self.float_dtype = float_dtype
        self.root.mkdir(parents=True, exist_ok=True)
        self._buffer: dict[str, list[Any]] = {}
        self._buffered = 0
        self._closed = False
        index_path = self.root / INDEX_NAME
        strays = sorted(self.root.glob("emb-*.safetensors"))
        if index_path.exists():
            if not resume:
                raise UserError(
                    f"{self.root} already holds embeddings; pass resume=True to continue them, or use an empty folder"
                )
            self._index = _read_index(self.root)
            self._repair()
        else:
            if strays and not resume:
                raise UserError(
                    f"{self.root} has embedding shards but no {INDEX_NAME} (an interrupted first shard?); "
                    "pass resume=True to discard them, or use an empty folder"
                )
            self._index = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "num_samples": 0,
                "fields": {},
                "shards": [],
            }
        self._remove_leftovers()
        self.num_existing: int = int(self._index["num_samples"])
        if resume:
            logger.info("%s: resuming after %d existing samples", self.root, self.num_existing)

    # ------------------------------------------------------------------ resume support
    def _repair(self) -> None:
        shards = self._index["shards"]
        for i, shard in enumerate(shards):
            problem = _check_shard_file(self.root, shard, checksum=False)
            if problem is not None:
                dropped = shards[i:]
                lost = sum(s["num_samples"] for s in dropped)
                logger.warning(
                    "%s is %s; dropping it and %d later shards (%d samples will be written again)",
                    self.root / shard["file"],
                    problem,
                    len(dropped) - 1,
                    lost,
                )
                del shards[i:]
                self._index["num_samples"] -= lost
                self._write_index()
                break

    def _remove_leftovers(self) -> None:
        listed = {s["file"] for s in self._index["shards"]}
        leftovers = [p for p in self.root.glob("emb-*.safetensors") if p.name not in listed]
        leftovers += list(self.root.glob("emb-*.safetensors.tmp")) + list(self.root.glob(INDEX_NAME + ".tmp"))
        for path in sorted(leftovers):
            logger.info("removing %s left by an interrupted run", path)
            path.unlink()

    # ------------------------------------------------------------------ writing
    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """Field specs: ``{"name": {"dtype": "float16", "shape": [D]}}``; ``dtype "str"`` for text."""
        return self._index["fields"]

    @property
    def num_written(self) -> int:
        """Samples in the folder plus samples buffered for the next shard."""
        return int(self._index["num_samples"]) + self._buffered

    def _normalise(self, batch: Mapping[str, FieldValue]) -> tuple[dict[str, Any], int]:
        if not batch:
            raise ValueError("empty batch")
        out: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for name, value in batch.items():
            if not isinstance(name, str) or not name or name.startswith("__"):
                raise ValueError(f"bad field name {name!r}")
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if isinstance(value, torch.Tensor):
                if value.dim() == 0:
                    raise ValueError(f"field {name}: expected a batch (B, ...), got a scalar")
                value = value.detach().cpu()
                if value.is_floating_point() and self.float_dtype is not None:
                    value = value.to(_DTYPES[self.float_dtype][2])
                if value.dtype not in _TORCH_TO_NAME:
                    raise ValueError(f"field {name}: dtype {value.dtype} cannot be stored")
                spec = {"dtype": _TORCH_TO_NAME[value.dtype], "shape": list(value.shape[1:])}
                sizes[name] = value.shape[0]
            elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                value = list(value)
                spec = {"dtype": "str"}
                sizes[name] = len(value)
            else:
                raise ValueError(
                    f"field {name}: expected a tensor, an array or a list of strings, got {type(value).__name__}"
                )
            expected = self.fields.get(name)
            if self.fields and expected != spec:
                raise UserError(f"field {name}: got {spec}, but this folder stores {expected}")
            out[name] = (spec, value)
        if self.fields and set(out) != set(self.fields):
            raise UserError(f"batch has fields {sorted(out)}, but this folder stores {sorted(self.fields)}")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"fields disagree on the batch size: {sizes}")
        return out, next(iter(sizes.values()))

    def write(self, batch: Mapping[str, FieldValue]) -> None:
        """Append a batch; full shards are written as soon as they fill.

        Args:
            batch: ``field -> value`` with the same batch size ``B`` everywhere: tensors or arrays
                ``(B, ...)`` (e.g. ``image_emb (B, D)``, ``text_emb (B, D)``, ``text_tokens
                (B, L, W)``, ``text_mask (B, L)``) or lists of ``B`` strings (``caption``, ``key``).
                The first batch ever written fixes the fields, dtypes and trailing shapes.
        """
        if self._closed:
            raise ValueError("writer is closed")
        normalised, size = self._normalise(batch)
        if size == 0:
            return
        if not self.fields:
            self._index["fields"] = {name: spec for name, (spec, _) in normalised.items()}
        for name, (_, value) in normalised.items():
            self._buffer.setdefault(name, []).append(value)
        self._buffered += size
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _take(self, n: int) -> dict[str, Any]:
        taken: dict[str, Any] = {}
        for name, chunks in self._buffer.items():
            if self.fields[name]["dtype"] == "str":
                joined: Any = [s for chunk in chunks for s in chunk]
            else:
                joined = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            taken[name] = joined[:n]
            self._buffer[name] = [joined[n:]] if len(joined) > n else []
        self._buffered -= n
        return taken

    def _flush(self, n: int) -> None:
        data = self._take(n)
        tensors = {k: v.contiguous() for k, v in data.items() if isinstance(v, torch.Tensor)}
        strings = {k: v for k, v in data.items() if not isinstance(v, torch.Tensor)}
        metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "num_samples": str(n)}
        if strings:
            metadata[_STRINGS_KEY] = json.dumps(strings, ensure_ascii=False)
        if not tensors:
            # safetensors needs at least one tensor to be a valid file with a data section.
            tensors = {"__count__": torch.zeros(n, dtype=torch.uint8)}
        blob = save_safetensors(tensors, metadata=metadata)
        name = shard_name(len(self._index["shards"]))
        _atomic_write(self.root / name, blob)
        self._index["shards"].append(
            {"file": name, "num_samples": n, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        )
        self._index["num_samples"] += n
        self._write_index()
        logger.debug("wrote %s (%d samples)", name, n)

    def _write_index(self) -> None:
        self._index["shard_size"] = self.shard_size
        text = json.dumps(self._index, indent=1, sort_keys=True)
        _atomic_write(self.root / INDEX_NAME, text.encode("utf-8"))

    def close(self) -> None:
        """Write the buffered samples as a last (possibly smaller) shard. Idempotent."""
        if self._closed:
            return
        if self._buffered:
            self._flush(self._buffered)
        elif not (self.root / INDEX_NAME).exists():
            self._write_index()  # an empty but valid folder
        self._closed = True

    def __enter__(self) -> EmbeddingShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # On an error, buffered samples are dropped rather than written: the folder stays exactly
        # "the first num_samples samples", and a resumed job recomputes the rest.
        if exc_type is None:
            self.close()
        else:
            self._closed = True


class _OpenShard:
    """A memory-mapped shard: one read-only numpy view per tensor field, and the string fields."""

    def __init__(self, path: Path, num_samples: int, fields: Mapping[str, Mapping[str, Any]]) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise UserError(
                f"{path}: embedding shard missing; re-run the embed job with resume=True"
            ) from None
        except (OSError, ValueError) as e:
            raise self._corrupt(str(e)) from None
        self.arrays: dict[str, np.ndarray] = {}
        self.strings: dict[str, list[str]] = {}
        try:
            self._parse(num_samples, fields)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, struct.error) as e:
            # A header that is valid JSON but not the structure safetensors writes.
            raise self._corrupt(f"malformed header: {e}") from None

    def _corrupt(self, why: str) -> UserError:
        return UserError(
            f"{self.path}: corrupt embedding shard ({why}); re-run the embed job with resume=True"
        )

    def _parse(self, num_samples: int, fields: Mapping[str, Mapping[str, Any]]) -> None:
        # safetensors layout: u64 little-endian header length, JSON header, then the raw data;
        # parsed here so rows can be read from the memory map without loading whole tensors.
        size = len(self._mmap)
        if size < 8:
            raise self._corrupt("file too short")
        (header_len,) = struct.unpack("<Q", self._mmap[:8])
        if header_len > size - 8:
            raise self._corrupt("header length beyond the end of the file")
        try:
            header = json.loads(bytes(self._mmap[8 : 8 + header_len]))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._corrupt(f"unreadable header: {e}") from None
        if not isinstance(header, dict):
            raise self._corrupt("header is not an object")
        metadata = header.pop("__metadata__", None) or {}
        start = 8 + header_len
        try:
            strings = json.loads(metadata.get(_STRINGS_KEY, "{}"))
        except json.JSONDecodeError as e:
            raise self._corrupt(f"unreadable string fields: {e}") from None
        for name, spec in fields.items():
            if spec["dtype"] == "str":
                values = strings.get(name)
                if not isinstance(values, list) or len(values) != num_samples:
                    raise self._corrupt(f"string field {name} missing or of the wrong length")
                self.strings[name] = values
                continue
            entry = header.get(name)
            code, np_dtype, _ = _DTYPES[spec["dtype"]]
            shape = [num_samples, *spec["shape"]]
            if not isinstance(entry, dict) or entry.get("dtype") != code or entry.get("shape") != shape:
                raise self._corrupt(f"tensor {name} is not {spec['dtype']} of shape {shape}")
            begin, end = (int(v) for v in entry["data_offsets"])
            count = int(np.prod(shape))
            if begin < 0 or end - begin != count * np_dtype.itemsize or start + end > size:
                raise self._corrupt(f"tensor {name} data out of bounds")
            self.arrays[name] = np.frombuffer(
                self._mmap, dtype=np_dtype, count=count, offset=start + begin
            ).reshape(shape)


class EmbeddingShards(torch.utils.data.Dataset):
    """Map-style dataset over a folder written by :class:`EmbeddingShardWriter`.

    ``ds[i]`` is a dict with one entry per field: tensors without the batch dimension (e.g.
    ``image_emb (D,)``, ``text_tokens (L, W)``) and strings. ``ds[list_of_indices]`` and
    :meth:`get_batch` return batched tensors ``(B, ...)`` and lists of strings; use them with
    ``DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), B, drop_last=True), batch_size=None)``
    to read each shard's rows in one vectorised step instead of B single reads.

    Shards are memory-mapped lazily, at most ``max_open_shards`` at a time, so opening a folder is
    cheap and worker processes map only what they read.

    Args:
        root: The embeddings folder.
        fields: Fields to return; ``None`` returns all.
        float_dtype: Dtype floating-point fields are returned in, whatever they are stored in.
        verify: ``"size"`` checks every shard's size against the index on opening (cheap);
            ``"checksum"`` also checks its SHA-256 (reads everything).
        max_open_shards: How many shards stay mapped.

    Raises:
        UserError: No index, a corrupt index, a missing or damaged shard, an unknown field.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fields: Sequence[str] | None = None,
        float_dtype: torch.dtype = torch.float32,
        verify: Literal["size", "checksum"] = "size",
        max_open_shards: int = 16,
    ) -> None:
        if verify not in ("size", "checksum"):
            raise ValueError(f"verify must be 'size' or 'checksum', got {verify!r}")
        self.root = Path(root)
        index = _read_index(self.root)
        available: dict[str, dict[str, Any]] = index["fields"]
        if fields is not None:
            unknown = [f for f in fields if f not in available]
            if unknown:
                raise UserError(
                    f"{self.root}: no field(s) {', '.join(unknown)}; it has {', '.join(sorted(available))}"
                )
            available = {f: available[f] for f in fields}
        self.fields: dict[str, dict[str, Any]] = available
        self.float_dtype = float_dtype
        self.max_open_shards = max(1, max_open_shards)
        self._shards: list[dict[str, Any]] = index["shards"]
        for shard in self._shards:
            problem = _check_shard_file(self.root, shard, checksum=verify == "checksum")
            if problem is not None:
                raise UserError(
                    f"{self.root / shard['file']}: embedding shard {problem}; "
                    "re-run the embed job with resume=True to rewrite it"
                )
        counts = [int(s["num_samples"]) for s in self._shards]
        self._offsets: list[int] = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps must not be pickled into DataLoader workers (they would be copied in full);
        # each worker maps the shards it reads.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _shard(self, s: int) -> _OpenShard:
        shard = self._open.get(s)
        if shard is None:
            info = self._shards[s]
            shard = _OpenShard(self.root / info["file"], int(info["num_samples"]), self.fields)
            self._open[s] = shard
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(s)
        return shard

    def _to_tensor(self, name: str, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(rows)
        if self.fields[name]["dtype"] == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.to(self.float_dtype) if t.is_floating_point() else t

    def __getitem__(self, index: int | Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            i = int(index)
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} samples")
            i %= n
            s = bisect.bisect_right(self._offsets, i) - 1
            shard, local = self._shard(s), i - self._offsets[s]
            sample: dict[str, Any] = {}
            for name in self.fields:
                if name in shard.strings:
                    sample[name] = shard.strings[name][local]
                else:
                    # Slicing a list of one index copies the row out of the read-only memory map.
                    sample[name] = self._to_tensor(name, shard.arrays[name][[local]])[0]
            return sample
        return self.get_batch(index)

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Read many samples at once, grouped by shard.

        Args:
            indices: ``B`` sample indices (any order, repeats allowed, negatives count from the end).

        Returns:
            Dict of ``(B, ...)`` tensors (float fields in ``float_dtype``) and lists of ``B``
            strings, in the order of ``indices``.
        """
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} samples")
        idx = np.where(idx < 0, idx + n, idx)
        offsets = np.asarray(self._offsets, dtype=np.int64)
        shard_of = np.searchsorted(offsets, idx, side="right") - 1
        batch: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if spec["dtype"] == "str":
                batch[name] = [""] * len(idx)
            else:
                dtype = _DTYPES[spec["dtype"]][2]
                dtype = self.float_dtype if dtype.is_floating_point else dtype
                batch[name] = torch.empty((len(idx), *spec["shape"]), dtype=dtype)
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            local = idx[where] - offsets[s]
            shard = self._shard(int(s))
            for name in self.fields:
                if name in shard.strings:
                    values = shard.strings[name]
                    for w, j in zip(where.tolist(), local.tolist()):
                        batch[name][w] = values[j]
                else:
                    batch[name][torch.from_numpy(where)] = self._to_tensor(name, shard.arrays[name][local])
        return batch

    def __repr__(self) -> str:
        return f"EmbeddingShards(root={str(self.root)!r}, samples={len(self)}, shards={self.num_shards}, fields={list(self.fields)})"
