"""Byte-reproducible webdataset tar shards, and a small in-memory loader for them.

The writer uses the standard library's ``tarfile`` with every header field fixed (mtime 0, uid 0,
no user names), so the same samples in the same order give byte-identical shards on any machine.
The shards follow webdataset's convention (``<key>.png`` + ``<key>.json`` members, consecutive),
so ``webdataset.WebDataset("train-{00000..00003}.tar")`` reads them too.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unclip.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "unclip-emoji/1"


def shard_name(split: str, index: int) -> str:
    """``train-00000.tar``: brace-expandable names, one prefix per split."""
    return f"{split}-{index:05d}.tar"


class ShardWriter:
    """Writes samples of one split into numbered tar shards of at most ``shard_size`` samples."""

    def __init__(self, out_dir: Path, split: str, shard_size: int) -> None:
        self.out_dir = out_dir
        self.split = split
        self.shard_size = shard_size
        self.names: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample.

        Args:
            key: Sample key, without dots (webdataset splits member names at the first dot).
            files: Extension (``"png"``, ``"json"``) to member bytes, written in sorted order.
        """
        assert "." not in key, key
        if self._tar is None or self._count == self.shard_size:
            self._open_next()
        assert self._tar is not None
        for ext in sorted(files):
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # fixed header fields: the bytes depend on the samples only
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def _open_next(self) -> None:
        self.close()
        name = shard_name(self.split, len(self.names))
        self.names.append(name)
        # Open across write() calls on purpose; close() (called in a finally by the builder) ends it.
        self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self._count = 0

    def close(self) -> None:
        """Finish the current shard (safe to call twice)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None


@dataclass(frozen=True)
class EmojiSample:
    """One image of a built emoji split.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        captions: Caption strings (without the style first, then with it).
        meta: Everything else in the sample's JSON: ``label``, ``tags``, ``style``, ``hexcode``,
            ``base_hexcode``, ``group``, ``subgroup``, ``skin_tone``, ``split``, ``bg``, ...
    """

    image: np.ndarray
    captions: tuple[str, ...]
    meta: dict[str, Any]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a build directory.

    Raises:
        UserError: If the directory holds no emoji build.
    """
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(
            f"no emoji build in {directory} (missing or bad {MANIFEST}); run: unclip data emoji"
        ) from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an emoji build manifest ({FORMAT})")
    return manifest


def iter_emoji_split(directory: str | Path, split: str) -> Iterator[EmojiSample]:
    """Samples of one split, in shard order.

    Args:
        directory: A directory written by :func:`~unclip.data.emoji.build.build_emoji`.
        split: ``"train"``, ``"val"``, ``"heldout_concept"`` or ``"heldout_style"``.

    Raises:
        UserError: If the directory holds no build or the split name is unknown.
    """
    directory = Path(directory)
    shards = read_manifest(directory)["shards"]
    if split not in shards:
        raise UserError(f"unknown split {split!r}; this build has {', '.join(shards)}")
    for name in shards[split]:
        with tarfile.open(directory / name, "r") as tar:
            pending: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                f = tar.extractfile(member)
                if f is None:
                    continue
                sample = pending.setdefault(key, {})
                sample[ext] = f.read()
                if "png" in sample and "json" in sample:
                    del pending[key]
                    yield _decode(sample)


def _decode(files: dict[str, bytes]) -> EmojiSample:
    meta = json.loads(files["json"])
    with Image.open(io.BytesIO(files["png"])) as im:
        image = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return EmojiSample(image, tuple(meta.pop("captions")), meta)


def load_emoji_split(directory: str | Path, split: str, limit: int | None = None) -> list[EmojiSample]:
    """All samples of one split in memory (64 px: about 12 KB each as arrays).

    Args:
        directory: A build directory.
        split: Split name.
        limit: Stop after this many samples.

    Returns:
        The samples, in shard order (already shuffled at build time).
    """
    out: list[EmojiSample] = []
    for sample in iter_emoji_split(directory, split):
        if limit is not None and len(out) >= limit:
            break
        out.append(sample)
    return out
