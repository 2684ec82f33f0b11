"""A folder of images with captions: the simplest way to train on your own pictures.

Layout (any mix of the three caption sources; subfolders are searched recursively)::

    my_data/
      cat.png            cat.txt          <- sidecar: same name, .txt, the whole file is the caption
      dogs/a.jpg         dogs/a.txt
      more/captions.jsonl                 <- {"file": "b.webp", "caption": "..."} or "captions": [...]
      more/b.webp
      captions.csv                        <- header "file,caption"; one row per caption

Paths inside ``captions.jsonl``/``captions.csv`` are relative to the folder holding that file and may
not leave the dataset root. A sidecar ``.txt`` takes precedence over index entries for the same
image. An image listed several times (several rows, or a ``captions`` list) has several captions;
one is picked per access.

Images are decoded lazily in ``__getitem__``; one that turns out corrupt is skipped (warning, counted
in :attr:`ImageCaptionFolder.stats`) and the next index is returned instead, so a long job never
stops for a bad file. See docs/data-loaders.md.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from unclip.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Color,
    ImageLoadError,
    SkipStats,
    load_image,
    to_tensor,
)
from unclip.errors import UserError

logger = logging.getLogger(__name__)

CAPTION_INDEX_NAMES: tuple[str, ...] = ("captions.jsonl", "captions.csv")


def _join_inside(root: Path, base_rel: str, file: str, where: str) -> str:
    """Relative posix path of ``file`` (relative to ``base_rel``), refusing paths that leave root."""
    if not file or file.startswith("/") or os.path.isabs(file):
        raise UserError(f"{where}: file {file!r} must be a path relative to the folder of the captions file")
    rel = posixpath.normpath(posixpath.join(base_rel, file.replace("\\", "/")))
    if rel == ".." or rel.startswith("../"):
        raise UserError(f"{where}: file {file!r} points outside the dataset root {root}")
    return rel


def _read_jsonl(path: Path, root: Path, base_rel: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise UserError(f'{where}: expected an object with a "file" string')
            captions: list[Any] = []
            if "caption" in entry:
                captions.append(entry["caption"])
            if "captions" in entry:
                if not isinstance(entry["captions"], list):
                    raise UserError(f'{where}: "captions" must be a list of strings')
                captions.extend(entry["captions"])
            if not captions:
                raise UserError(f'{where}: expected "caption" (a string) or "captions" (a list of strings)')
            if not all(isinstance(c, str) for c in captions):
                raise UserError(f"{where}: captions must be strings")
            rel = _join_inside(root, base_rel, entry["file"], where)
            out.extend((rel, c.strip()) for c in captions)
    return out


def _read_csv(path: Path, root: Path, base_rel: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    # utf-8-sig: spreadsheets often save CSV with a byte-order mark that would corrupt the header.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "file" not in header or "caption" not in header:
            raise UserError(f"{path}: expected a header row with columns 'file' and 'caption', got {header}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            file, caption = row.get("file"), row.get("caption")
            if file is None or caption is None:
                raise UserError(f"{where}: row has fewer columns than the header")
            out.append((_join_inside(root, base_rel, file.strip(), where), caption.strip()))
    return out


class ImageCaptionFolder(torch.utils.data.Dataset):
    """Map-style dataset over a folder tree of images and their captions.

    Each item is a dict:

    - ``"image"``: ``(3, H, W)`` float tensor in ``[-1, 1]`` when ``size`` is given (resize of the
      shorter side + centre crop); ``transform(pil_image)`` when ``transform`` is given; otherwise
      the RGB ``PIL.Image``.
    - ``"caption"``: one caption (str).
    - ``"key"``: the image path relative to ``root``, without extension (posix separators).
    - ``"index"``: the index actually returned; differs from the one asked for when bad files were
      skipped.

    Args:
        root: The dataset folder.
        size: Output side length or ``(height, width)``; mutually exclusive with ``transform``.
        on_missing_caption: ``"error"`` raises a :class:`~unclip.errors.UserError` naming the first
            image without a caption (at construction); ``"skip"`` leaves such images out and counts
            them in ``stats`` as ``"missing_caption"``.
        transform: Callable applied to the RGB PIL image instead of the built-in tensor conversion
            (e.g. a CLIP model's own preprocessing).
        caption_choice: With several captions per image, ``"random"`` picks one per access,
            reproducibly from ``(seed, epoch, index)``; ``"first"`` always takes the first.
        seed: Seed for the caption choice.
        max_pixels: Decompression-bomb limit, see :func:`~unclip.data.images.load_image`.
        background: Colour transparent pixels are composited onto.
        extensions: File extensions (lower case, with dot) treated as images.

    Attributes:
        stats: :class:`~unclip.data.images.SkipStats`: files skipped, by reason (``"empty"``,
            ``"missing_caption"``, ``"not_image"``, ``"corrupt"``, ``"truncated"``,
            ``"too_large"``, ``"caption_without_image"``). Per process: DataLoader workers each
            count their own and log every skip.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int | Sequence[int] | None = None,
        on_missing_caption: Literal["error", "skip"] = "error",
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        caption_choice: Literal["random", "first"] = "random",
        seed: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        background: Color = (255, 255, 255),
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        if on_missing_caption not in ("error", "skip"):
            raise ValueError(f"on_missing_caption must be 'error' or 'skip', got {on_missing_caption!r}")
        if caption_choice not in ("random", "first"):
            raise ValueError(f"caption_choice must be 'random' or 'first', got {caption_choice!r}")
        if size is not None and transform is not None:
            raise ValueError("pass either size or transform, not both (resize inside your transform)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: not a folder")
        self.size = size
        self.transform = transform
        self.caption_choice = caption_choice
        self.seed = seed
        self.max_pixels = max_pixels
        self.background = background
        self.epoch = 0
        self.stats = SkipStats()
        self._extensions = tuple(e.lower() for e in extensions)
        self._bad: set[int] = set()
        self._files: list[str] = []  # relative posix paths
        self._captions: list[tuple[str, ...]] = []
        self._scan(on_missing_caption)

    # ------------------------------------------------------------------ scanning
    def _scan(self, on_missing_caption: str) -> None:
        images: list[str] = []
        ignored: list[str] = []  # other extensions: not counted as skipped, but worth a note
        sidecars: dict[str, Path] = {}  # relative path without suffix -> .txt path
        indexed: dict[str, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Sorted, hidden entries skipped: the dataset order must not depend on the file system.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base_rel = Path(dirpath).relative_to(self.root).as_posix()
            base_rel = "" if base_rel == "." else base_rel
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                rel = posixpath.join(base_rel, name)
                path = Path(dirpath, name)
                if name in CAPTION_INDEX_NAMES:
                    reader = _read_jsonl if name.endswith(".jsonl") else _read_csv
                    for file, caption in reader(path, self.root, base_rel):
                        indexed.setdefault(file, []).append(caption)
                    continue
                stem, ext = posixpath.splitext(rel)
                ext = ext.lower()
                if ext == ".txt":
                    sidecars[stem] = path
                elif ext in self._extensions:
                    try:
                        size = path.stat().st_size
                    except OSError as e:  # a dangling symlink, say
                        self.stats.add("missing", str(path), f"{path}: cannot read ({e.strerror or e})")
                        continue
                    if size == 0:
                        self.stats.add("empty", str(path), f"{path}: empty file (0 bytes)")
                    else:
                        images.append(rel)
                else:
                    ignored.append(rel)

        missing: list[str] = []
        for rel in images:
            stem = posixpath.splitext(rel)[0]
            captions: list[str] = []
            if stem in sidecars:
                text = sidecars[stem].read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    captions = [text]
            if not captions:
                captions = [c for c in indexed.get(rel, []) if c]
            if not captions:
                missing.append(rel)
                continue
            self._files.append(rel)
            self._captions.append(tuple(captions))

        orphans = sorted(set(indexed) - set(images))
        if orphans:
            self.stats.counts["caption_without_image"] += len(orphans)
            self.stats.examples["caption_without_image"] = orphans[: SkipStats.max_examples]
            logger.warning(
                "%d caption entries name images that are not in %s (e.g. %s); ignoring them",
                len(orphans),
                self.root,
                orphans[0],
            )
        if missing:
            first = self.root / missing[0]
            if on_missing_caption == "error":
                more = f"; {len(missing) - 1} more images lack captions" if len(missing) > 1 else ""
                raise UserError(
                    f"{first}: no caption (expected {first.with_suffix('.txt').name} beside it or an entry in "
                    f"captions.jsonl/captions.csv){more}; pass on_missing_caption='skip' to leave them out"
                )
            self.stats.counts["missing_caption"] += len(missing)
            self.stats.examples["missing_caption"] = [
                str(self.root / m) for m in missing[: SkipStats.max_examples]
            ]
            logger.warning(
                "skipping %d images without a caption under %s (e.g. %s)", len(missing), self.root, first
            )
        if not self._files:
            raise UserError(
                f"{self.root}: no captioned images found (extensions: {', '.join(self._extensions)})"
            )
        if ignored:
            # INFO, not WARNING: READMEs and metadata are normal; an unsupported format (.heic) is not.
            logger.info(
                "%s: ignored %d files that are not images (e.g. %s)", self.root, len(ignored), ignored[0]
            )
        logger.info("%s: %d captioned images", self.root, len(self._files))

    # ------------------------------------------------------------------ access
    @property
    def files(self) -> list[Path]:
        """Paths of the images, in dataset order."""
        return [self.root / rel for rel in self._files]

    def captions(self, index: int) -> tuple[str, ...]:
        """All captions of image ``index``."""
        return self._captions[index]

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch that seeds the random caption choice (call before creating iterators)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._files)

    def _pick_caption(self, index: int) -> str:
        captions = self._captions[index]
        if len(captions) == 1 or self.caption_choice == "first":
            return captions[0]
        # Seeded from (seed, epoch, index) rather than a global RNG so the choice is the same in
        # any worker layout and reproducible when a job resumes.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return captions[int(rng.integers(len(captions)))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self._files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            path = self.root / self._files[j]
            try:
                img = load_image(path, max_pixels=self.max_pixels, background=self.background)
            except ImageLoadError as e:
                # Fall through to the next index: deterministic, and a sampler's epoch length stays
                # the same; the bad file is remembered so it is decoded (and counted) only once.
                self._bad.add(j)
                self.stats.add(e.reason, str(path), str(e))
                continue
            if self.transform is not None:
                image: Any = self.transform(img)
            elif self.size is not None:
                image = to_tensor(img, self.size)
            else:
                image = img
            key = posixpath.splitext(self._files[j])[0]
            return {"image": image, "caption": self._pick_caption(j), "key": key, "index": j}
        raise UserError(f"{self.root}: none of the {n} images could be read ({self.stats.as_dict()})")

    def __repr__(self) -> str:
        return f"ImageCaptionFolder(root={str(self.root)!r}, images={len(self)}, size={self.size!r})"
