"""Streaming webdataset tar shards: split across ranks and workers, shuffled, resumable.

(This module is ``wds.py`` rather than ``webdataset.py`` so that it can never shadow the
``webdataset`` library, e.g. when a tool puts this folder on ``sys.path``.)

A shard is a plain tar file in the webdataset layout: consecutive members sharing a key form one
sample, the text after the first dot of the file name is the field name::

    000001.jpg  000001.txt  000001.json  000002.jpg  000002.txt ...

Reading uses :mod:`tarfile` directly (streaming mode, so ``pipe:`` and remote URLs opened through the
optional ``webdataset`` library work too): the exact sample order of every worker must be known for
splitting and resuming to be correct, and owning the loop keeps that simple to verify.

**Splitting.** Every epoch has one shard order (shuffled from ``(seed, epoch)`` when
``shuffle_shards``), the same in every process. With ``G = world_size * num_workers`` global workers
and global worker id ``g = rank * num_workers + worker_id``:

- ``split="shard"`` (default): the shard at position ``i`` of the epoch's order is read by global
  worker ``i % G`` only. Use at least ``G`` shards (better: many more, in a multiple of ``G``),
  otherwise some workers idle.
- ``split="sample"``: every worker reads every shard and keeps sample ``j`` (counting over the
  epoch's whole stream) iff ``j % G == g``. Correct with any number of shards, at ``G`` times the
  reading cost: meant for a few shards.

Either way each sample is yielded by exactly one global worker per epoch. Each worker then shuffles
its own stream with a buffer seeded from ``(seed, epoch, g)``.

**Resuming.** Each sample carries ``__worker__`` (``g``), ``__workers__`` (``G``) and ``__pos__``
(how many samples worker ``g`` has taken from its shuffled stream up to and including this one,
counting skipped corrupt samples). The training loop passes every batch it consumes to
:meth:`WebDatasetShards.record`; :meth:`~WebDatasetShards.state_dict` then holds the epoch and the
position of each global worker, and after :meth:`~WebDatasetShards.load_state_dict` each worker
regenerates its (deterministic) stream and drops the first ``position`` samples without decoding
them, so exactly the samples not yet consumed follow.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from PIL import Image

from unclip.data.images import (
    DEFAULT_MAX_PIXELS,
    Color,
    ImageLoadError,
    SkipStats,
    load_image,
    to_pil,
    to_tensor,
)
from unclip.errors import UserError

logger = logging.getLogger(__name__)

SplitMode = Literal["shard", "sample"]
STATE_VERSION = 1

IMAGE_FIELD_TYPES = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "ppm"})
TEXT_FIELD_TYPES = frozenset({"txt", "text", "caption"})
INT_FIELD_TYPES = frozenset({"cls", "cls2", "index", "id"})

# webdataset's naming rule: key = directory + file name up to the first dot, field = the rest.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]+)$")
# Fixed tar header values so that the same samples always produce the same bytes.
_FIXED_MTIME = 946684800  # 2000-01-01; 0 makes some tar tools warn about implausible dates


# ---------------------------------------------------------------------------- shard lists
def _braceexpand(pattern: str) -> list[str]:
    """Expand ``{000..009}`` ranges (zero padding kept) and ``{a,b}`` lists, left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    return [head + opt + rest for opt in options for rest in _braceexpand(tail)]


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def expand_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Turn a shard specification into a list of shard paths/URLs.

    Accepts a list (each entry expanded), a directory (its ``*.tar`` files, sorted), a brace pattern
    ``"data/shard-{000000..000099}.tar"``, a glob ``"data/*.tar"`` (sorted), or a single path/URL.

    Raises:
        UserError: Nothing matched, or a local shard does not exist.
    """
    if isinstance(urls, (str, os.PathLike)):
        items = [os.fspath(urls)]
    else:
        items = [os.fspath(u) for u in urls]
    out: list[str] = []
    for item in items:
        for url in _braceexpand(item):
            if _is_remote(url):
                out.append(url)
            elif os.path.isdir(url):
                found = sorted(glob.glob(os.path.join(glob.escape(url), "*.tar")))
                if not found:
                    raise UserError(f"{url}: folder contains no .tar shards")
                out.extend(found)
            elif any(c in url for c in "*?["):
                found = sorted(glob.glob(url))
                if not found:
                    raise UserError(f"{url}: no shards match this pattern")
                out.extend(found)
            else:
                out.append(url)
    if not out:
        raise UserError("no shards given")
    missing = [u for u in out if not _is_remote(u) and not os.path.isfile(u)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: shard not found{more}")
    return out


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size.

    Order of precedence: the explicit arguments; ``torch.distributed`` when initialised; the
    ``RANK``/``WORLD_SIZE`` environment variables (set by torchrun and accelerate); else ``(0, 1)``.
    """
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            try:
                rank = int(os.environ.get("RANK", "0"))
                world_size = int(os.environ.get("WORLD_SIZE", "1"))
            except ValueError:
                raise UserError(
                    f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not integers"
                ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


# ---------------------------------------------------------------------------- reading
@dataclass
class _RawSample:
    key: str
    fields: dict[str, bytes]
    shard: str


class _FieldError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_END_ATTR = "_unclip_damage"


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Header reader that tells a proper end of archive from a damaged one.

    :mod:`tarfile` ends iteration silently when the file stops without the end-of-archive zero
    block, or at a garbage header, which would drop the rest of a truncated shard without a word.
    The reason is recorded on the TarFile so the reader can report it.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the archive ends properly
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            setattr(tarfile_, _END_ATTR, "file ends without the end-of-archive marker (truncated?)")
            raise
        except tarfile.InvalidHeaderError as e:
            setattr(tarfile_, _END_ATTR, f"invalid header ({e})")
            raise


@contextmanager
def _open_url(url: str) -> Iterator[IO[bytes]]:
    if _is_remote(url):
        try:
            import webdataset  # the [train] extra; only needed for pipe:/http(s):/s3: shards
        except ModuleNotFoundError:
            raise UserError(
                f"{url}: reading remote shards needs the webdataset package (pip install 'unclip[train]')"
            ) from None
        stream = webdataset.gopen(url, "rb")
        try:
            yield stream
        finally:
            try:
                stream.close()
            except Exception as e:  # a pipe stopped early exits non-zero; the data read is still good
                logger.debug("closing %s: %s", url, e)
    else:
        with open(url, "rb") as f:
            yield f


def decode_field(
    field: str,
    data: bytes,
    *,
    name: str = "<field>",
    size: int | Sequence[int] | None = None,
    image_transform: Callable[[Image.Image], Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Color = (255, 255, 255),
) -> Any:
    """Decode one field of a sample by the last part of its name.

    Images (png/jpg/jpeg/webp/...) go through :func:`~unclip.data.images.load_image` and become a
    ``(3, H, W)`` float tensor in ``[-1, 1]`` when ``size`` is given, ``image_transform(pil)`` when
    that is given, else an RGB PIL image. ``txt``/``text``/``caption`` become ``str`` (stripped),
    ``json`` the parsed object, ``cls``/``cls2``/``index``/``id`` an ``int``, ``npy`` a tensor
    (``allow_pickle=False``: shards are untrusted input), ``safetensors`` a ``dict[str, Tensor]``.
    Anything else stays ``bytes``.

    Raises:
        ImageLoadError: An unusable image.
        ValueError: Any other field that does not decode (the loader counts it as ``"bad_field"``).
    """
    kind = field.rsplit(".", 1)[-1].lower()
    if kind in IMAGE_FIELD_TYPES:
        img = load_image(data, max_pixels=max_pixels, background=background, name=name)
        if image_transform is not None:
            return image_transform(img)
        return to_tensor(img, size) if size is not None else img
    try:
        if kind in TEXT_FIELD_TYPES:
            return data.decode("utf-8").strip()
        if kind == "json":
            return json.loads(data)
        if kind in INT_FIELD_TYPES:
            return int(data.decode("ascii").strip())
        if kind == "npy":
            return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
        if kind == "safetensors":
            from safetensors.torch import load as load_safetensors

            return load_safetensors(data)
    except Exception as e:
        raise ValueError(f"{name}: cannot decode {kind} field ({e})") from None
    return data


class WebDatasetShards(torch.utils.data.IterableDataset):
    """Iterable dataset over webdataset tar shards; see the module docstring for the exact rules.

    Each yielded sample is a dict with the decoded fields (named by extension, or renamed through
    ``fields``), plus ``"__key__"`` (str), ``"__shard__"`` (str), ``"__worker__"``, ``"__workers__"``
    and ``"__pos__"`` (ints, used by :meth:`record`). With ``size`` set, image fields are
    ``(3, H, W)`` float tensors in ``[-1, 1]``, so the default collate gives ``(B, 3, H, W)``.

    Typical loop::

        ds = WebDatasetShards("shards/{000000..000127}.tar", size=64,
                              fields={"image": "jpg;png;webp", "caption": "txt"})
        ds.load_state_dict(ckpt["data"])            # when resuming
        for epoch in range(ds.epoch, num_epochs):
            ds.set_epoch(epoch)                     # no-op for the epoch being resumed
            for batch in DataLoader(ds, batch_size=32, num_workers=4):
                ds.record(batch)                    # this batch is consumed
                ...                                 # train; checkpoints save ds.state_dict()

    Create a new DataLoader iterator each epoch (``persistent_workers=False``, the default): workers
    copy the dataset when the iterator starts, so that is when ``set_epoch`` and a loaded state
    reach them.

    Args:
        urls: Shards; see :func:`expand_urls`.
        size: Image side length or ``(height, width)``: images become resized, centre-cropped
            tensors. ``None`` keeps PIL images (unless ``image_transform`` is given).
        fields: Which fields to keep. ``None`` keeps all; a sequence keeps those names; a mapping
            ``{"image": "jpg;png", "caption": "txt"}`` renames and allows alternatives (the first
            present wins). A sample lacking a requested field is skipped (``"missing_field"``).
        shuffle_buffer: Samples held by each worker's shuffle buffer; ``<= 1`` disables shuffling.
        shuffle_shards: Shuffle the shard order each epoch (from ``(seed, epoch)``).
        seed: Base seed for every shuffle.
        split: ``"shard"`` or ``"sample"``; see the module docstring.
        rank: This process's rank; with ``world_size``, overrides :func:`dist_rank_world`.
        world_size: Number of processes.
        image_transform: Callable applied to each RGB PIL image instead of the tensor conversion.
        max_pixels: Decompression-bomb limit for images.
        background: Colour transparent pixels are composited onto.

    Attributes:
        stats: :class:`~unclip.data.images.SkipStats` of skipped samples (``"bad_shard"``,
            ``"bad_field"``, ``"missing_field"`` and the image reasons). Per process.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        size: int | Sequence[int] | None = None,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        seed: int = 0,
        split: SplitMode = "shard",
        rank: int | None = None,
        world_size: int | None = None,
        image_transform: Callable[[Image.Image], Any] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: Color = (255, 255, 255),
    ) -> None:
        super().__init__()
        if split not in ("shard", "sample"):
            raise ValueError(f"split must be 'shard' or 'sample', got {split!r}")
        if size is not None and image_transform is not None:
            raise ValueError("pass either size or image_transform, not both")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.urls = expand_urls(urls)
        self.rank, self.world_size = dist_rank_world(rank, world_size)
        self.size = size
        self.image_transform = image_transform
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_shards = shuffle_shards
        self.seed = int(seed)
        self.split: SplitMode = split
        self.max_pixels = max_pixels
        self.background = background
        if fields is None:
            self._fields: dict[str, list[str]] | None = None
        elif isinstance(fields, Mapping):
            self._fields = {out: alts.split(";") for out, alts in fields.items()}
        else:
            self._fields = {f: [f] for f in fields}
        self.stats = SkipStats()
        self.epoch = 0
        self._consumed: dict[int, int] = {}
        self._num_global_workers: int | None = None
        self._resume: tuple[int, int, dict[int, int]] | None = None  # (epoch, G, positions)

    # ------------------------------------------------------------------ epochs and state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffles the next iterator uses. Changing it clears positions."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._consumed = {}
            self._num_global_workers = None
            self._resume = None
        self.epoch = epoch

    def record(self, batch: Mapping[str, Any]) -> None:
        """Mark a sample or a collated batch as consumed (call once per batch the loop uses).

        Args:
            batch: A sample or batch from this dataset; only ``__worker__``, ``__workers__`` and
                ``__pos__`` are read (ints, lists or ``(B,)`` tensors).
        """
        try:
            workers, totals, positions = batch["__worker__"], batch["__workers__"], batch["__pos__"]
        except KeyError as e:
            raise ValueError(
                f"record() needs the {e} entry that WebDatasetShards adds to each sample"
            ) from None

        def as_list(v: Any) -> list[int]:
            if isinstance(v, torch.Tensor):
                return [int(x) for x in v.reshape(-1).tolist()]
            if isinstance(v, (list, tuple)):
                return [int(x) for x in v]
            return [int(v)]

        for g, total, pos in zip(as_list(workers), as_list(totals), as_list(positions), strict=True):
            if self._num_global_workers is None:
                self._num_global_workers = total
            elif total != self._num_global_workers:
                raise ValueError(
                    f"batch comes from {total} global workers but earlier batches came from "
                    f"{self._num_global_workers}; record() batches of one epoch and one loader setup only"
                )
            if pos > self._consumed.get(g, 0):
                self._consumed[g] = pos

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: epoch and samples consumed per global worker (this rank's workers).

        Under DDP each rank records only its own workers: save one state per rank, or gather them
        and combine with :func:`merge_state_dicts`; either loads on every rank.
        """
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "split": self.split,
            "num_shards": len(self.urls),
            "num_global_workers": self._num_global_workers,
            "consumed": {str(g): n for g, n in sorted(self._consumed.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iterator continues that epoch where it stopped.

        Raises:
            UserError: The state is from another format version, seed, split mode or shard count.
        """
        if state.get("version") != STATE_VERSION:
            raise UserError(
                f"data state has version {state.get('version')!r}; this version reads {STATE_VERSION}"
            )
        for name, mine in (("seed", self.seed), ("split", self.split), ("num_shards", len(self.urls))):
            if state.get(name) != mine:
                raise UserError(
                    f"cannot resume the data stream: saved {name}={state.get(name)!r}, now {mine!r} "
                    "(resume needs the same shards, seed and split mode)"
                )
        self.epoch = int(state["epoch"])
        self._consumed = {int(g): int(n) for g, n in state.get("consumed", {}).items()}
        total = state.get("num_global_workers")
        self._num_global_workers = None if total is None else int(total)
        self._resume = (self.epoch, -1 if total is None else int(total), dict(self._consumed))

    # ------------------------------------------------------------------ iteration
    def epoch_shards(self, epoch: int | None = None) -> list[str]:
        """The shard order of an epoch (identical in every process)."""
        epoch = self.epoch if epoch is None else epoch
        shards = list(self.urls)
        if self.shuffle_shards:
            _rng(self.seed, epoch, 0).shuffle(shards)
        return shards

    def _read_shard(self, url: str) -> Iterator[_RawSample]:
        key: str | None = None
        fields: dict[str, bytes] = {}
        try:
            with _open_url(url) as f, tarfile.open(fileobj=f, mode="r|*", tarinfo=_EndCheckingTarInfo) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    m = _MEMBER_RE.match(member.name.removeprefix("./"))
                    if m is None:
                        continue  # no field extension: not part of any sample (webdataset ignores these too)
                    member_key, field = m.group(1), m.group(2)
                    if member_key != key:
                        if fields and key is not None:
                            yield _RawSample(key, fields, url)
                        key, fields = member_key, {}
                    extracted = tar.extractfile(member)
                    data = extracted.read() if extracted is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"{member.name} is cut short")
                    fields[field] = data
                damage = getattr(tar, _END_ATTR, None)
                if damage is not None:
                    raise tarfile.ReadError(damage)
        except (tarfile.TarError, OSError, EOFError) as e:
            # A truncated or damaged shard loses the sample being read (it may be incomplete) and
            # everything after it; the error is the same in every process, so splits stay consistent.
            self.stats.add("bad_shard", url, f"{url}: damaged tar ({e}); rest of the shard skipped")
            return
        if fields and key is not None:
            yield _RawSample(key, fields, url)

    def _worker_stream(self, g: int, total: int) -> Iterator[_RawSample]:
        shards = self.epoch_shards()
        if self.split == "shard":
            mine = shards[g::total]
            if not mine:
                logger.warning(
                    "global worker %d of %d gets no shards this epoch: there are only %d shards "
                    "(use at least world_size * num_workers shards, or split='sample')",
                    g,
                    total,
                    len(shards),
                )
            for url in mine:
                yield from self._read_shard(url)
        else:
            j = 0
            for url in shards:
                for raw in self._read_shard(url):
                    if j % total == g:
                        yield raw
                    j += 1

    def _shuffled(self, stream: Iterable[_RawSample], rng: random.Random) -> Iterator[_RawSample]:
        if self.shuffle_buffer <= 1:
            yield from stream
            return
        buf: list[_RawSample] = []
        for raw in stream:
            if len(buf) < self.shuffle_buffer:
                buf.append(raw)
                continue
            k = rng.randrange(len(buf))
            yield buf[k]
            buf[k] = raw
        rng.shuffle(buf)
        yield from buf

    def _decode(self, raw: _RawSample) -> dict[str, Any]:
        chosen: list[tuple[str, str]]  # (output name, field in the shard)
        if self._fields is None:
            chosen = [(field, field) for field in raw.fields]
        else:
            chosen = []
            for out, alternatives in self._fields.items():
                found = next((a for a in alternatives if a in raw.fields), None)
                if found is None:
                    raise _FieldError(
                        "missing_field",
                        f"{raw.shard}:{raw.key} has no {'/'.join(alternatives)} field (has {sorted(raw.fields)})",
                    )
                chosen.append((out, found))
        sample: dict[str, Any] = {"__key__": raw.key, "__shard__": raw.shard}
        for out, field in chosen:
            name = f"{raw.shard}:{raw.key}.{field}"
            try:
                # Decoded by the real extension, whatever the output is renamed to.
                sample[out] = decode_field(
                    field,
                    raw.fields[field],
                    name=name,
                    size=self.size,
                    image_transform=self.image_transform,
                    max_pixels=self.max_pixels,
                    background=self.background,
                )
            except ImageLoadError as e:
                raise _FieldError(e.reason, str(e)) from None
            except ValueError as e:
                raise _FieldError("bad_field", str(e)) from None
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        total = self.world_size * num_workers
        g = self.rank * num_workers + worker_id
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            saved_total, positions = self._resume[1], self._resume[2]
            if positions and saved_total != total:
                raise UserError(
                    f"cannot resume the data stream with world_size*num_workers={total}: it was saved with "
                    f"{saved_total}; resume with the same number of ranks and DataLoader workers"
                )
            skip = positions.get(g, 0)
        rng = _rng(self.seed, self.epoch, 1 + g)
        pos = 0
        for raw in self._shuffled(self._worker_stream(g, total), rng):
            pos += 1
            if pos <= skip:
                continue  # consumed before the interruption: regenerated for the order, never decoded
            try:
                sample = self._decode(raw)
            except _FieldError as e:
                self.stats.add(e.reason, f"{raw.shard}:{raw.key}", str(e))
                continue
            sample["__worker__"] = g
            sample["__workers__"] = total
            sample["__pos__"] = pos
            yield sample
        if self.stats.total:
            logger.warning(
                "global worker %d, epoch %d: skipped so far %s", g, self.epoch, self.stats.as_dict()
            )


def merge_state_dicts(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the per-rank states of one step (e.g. from ``all_gather_object``) into one.

    Raises:
        ValueError: The states disagree on anything but the consumed positions.
    """
    if not states:
        raise ValueError("no states to merge")
    merged = dict(states[0])
    consumed: dict[str, int] = {}
    for s in states:
        for name in ("version", "epoch", "seed", "split", "num_shards"):
            if s.get(name) != merged.get(name):
                raise ValueError(f"data states disagree on {name}: {s.get(name)!r} vs {merged.get(name)!r}")
        if s.get("num_global_workers") is not None:
            if merged.get("num_global_workers") not in (None, s["num_global_workers"]):
                raise ValueError("data states disagree on num_global_workers")
            merged["num_global_workers"] = s["num_global_workers"]
        for g, n in s.get("consumed", {}).items():
            consumed[g] = max(consumed.get(g, 0), int(n))
    merged["consumed"] = dict(sorted(consumed.items(), key=lambda kv: int(kv[0])))
    return merged


def _rng(seed: int, epoch: int, stream: int) -> random.Random:
    """A Python RNG seeded from ``(seed, epoch, stream)``, identical in every process."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(4)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


# ---------------------------------------------------------------------------- writing
def _encode_image(value: Any, kind: str) -> bytes:
    if isinstance(value, torch.Tensor):
        value = to_pil(value)
    elif isinstance(value, np.ndarray):
        value = Image.fromarray(value)
    if not isinstance(value, Image.Image):
        raise TypeError(f"cannot write {type(value).__name__} as {kind}")
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(kind, kind.upper())
    if fmt == "JPEG":
        value.convert("RGB").save(buf, format=fmt, quality=95)
    elif fmt == "WEBP":
        value.save(buf, format=fmt, lossless=True)
    else:
        value.save(buf, format=fmt)
    return buf.getvalue()


def encode_field(field: str, value: Any) -> bytes:
    """Encode one value for a shard, by the last part of the field name (inverse of decode_field).

    Bytes are written as they are; str as UTF-8; PIL images, ``(3, H, W)`` tensors in ``[-1, 1]``
    and ``(H, W, 3)`` uint8 arrays as the image format the name says; dicts and lists as JSON
    (sorted keys) or, for ``safetensors``, a dict of tensors; ints as text; arrays/tensors as npy.
    """
    kind = field.rsplit(".", 1)[-1].lower()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if kind in IMAGE_FIELD_TYPES:
        return _encode_image(value, kind)
    if kind == "safetensors" and isinstance(value, Mapping):
        from safetensors.torch import save as save_safetensors

        return save_safetensors({k: v.contiguous() for k, v in value.items()})
    if kind == "npy" and isinstance(value, (np.ndarray, torch.Tensor)):
        buf = io.BytesIO()
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    if kind == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    raise TypeError(f"cannot write a {type(value).__name__} into field {field!r}")


def _write_shard(samples: Sequence[Mapping[str, Any]], first_index: int, path: Path) -> None:
    """Write one tar in memory, then to ``path`` atomically (tmp file, fsync, rename)."""
    buf = io.BytesIO()
    keys: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for index, sample in enumerate(samples, first_index):
            key = str(sample.get("__key__", f"{index:09d}"))
            base = key.rsplit("/", 1)[-1]
            if not base or "." in base or key.startswith("/"):
                raise ValueError(
                    f"sample key {key!r} must be non-empty, relative and contain no dot in its name"
                )
            if key in keys:
                # Members of a sample must be adjacent; a repeated key would merge or split samples.
                raise ValueError(f"duplicate sample key {key!r} in {path.name}")
            keys.add(key)
            fields = sorted(
                ((f, v) for f, v in sample.items() if not f.startswith("__")), key=lambda fv: fv[0]
            )
            if not fields:
                raise ValueError(f"sample {key!r} has no fields")
            for field, value in fields:
                data = encode_field(field, value)
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                info.mtime = _FIXED_MTIME
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    prefix: str = "shard",
    shard_size: int = 1000,
) -> list[Path]:
    """Write samples into reproducible webdataset tar shards ``{prefix}-000000.tar``, ...

    Tar headers carry a fixed mtime, uid/gid 0 and empty owner names, and fields are written in
    sorted order, so the same samples always give byte-identical shards. Each shard is written to a
    temporary file, fsynced and renamed into place.

    Args:
        samples: Dicts of ``field -> value`` (see :func:`encode_field`), with an optional
            ``"__key__"`` (default: the running sample number, 9 digits). Keys must be unique and
            contain no dot in their last path component.
        out_dir: Output folder (created).
        prefix: Shard file name prefix.
        shard_size: Samples per shard.

    Returns:
        Paths of the shards written.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    it = iter(samples)
    index = 0
    while chunk := list(itertools.islice(it, shard_size)):
        path = out / f"{prefix}-{len(paths):06d}.tar"
        _write_shard(chunk, index, path)
        paths.append(path)
        index += len(chunk)
    logger.info("wrote %d samples in %d shards to %s", index, len(paths), out)
    return paths
