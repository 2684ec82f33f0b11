"""Shared plumbing of the image-writing commands (``generate``, ``vary``, ``interpolate``, ...).

* input handling: prompts from arguments, ``-`` (stdin) and ``--prompts-file``; arguments that are
  images or prompts; ``ITEM:WEIGHT`` pairs; range checks on numbers;
* output handling: the ``--out`` folder (checked before any compute), PNG files carrying their
  settings in a ``tEXt`` chunk (key ``unclip``) and ``manifest.json``.

Files are never overwritten: each image is named ``<command>-NNNN.png`` with NNNN one past the
highest number already in the folder, and ``manifest.json`` gains entries (earlier ones are kept).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from unclip.errors import UserError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "unclip-manifest"
MANIFEST_VERSION = 1
PNG_KEY = "unclip"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

MAX_STEPS = 1000
MAX_IMAGES = 64
MAX_FRAMES = 256
MAX_GUIDANCE = 100.0


# --------------------------------------------------------------------------- numbers


def check_int_range(name: str, value: int | None, low: int, high: int) -> None:
    """UserError unless ``value`` is None or ``low <= value <= high``."""
    if value is not None and not (low <= value <= high):
        raise UserError(f"{name} must be between {low} and {high}, got {value}")


def check_float_range(name: str, value: float | None, low: float, high: float) -> None:
    """UserError unless ``value`` is None or a finite number in ``[low, high]``."""
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise UserError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def check_steps(**steps: int | None) -> None:
    """Each of ``--prior-steps`` ... must be None (model default) or 1..1000."""
    for name, value in steps.items():
        check_int_range(f"--{name.replace('_', '-')}", value, 1, MAX_STEPS)


# --------------------------------------------------------------------------- prompts


def check_prompt(prompt: str) -> str:
    """The prompt with surrounding whitespace removed; UserError if nothing is left."""
    p = prompt.strip()
    if not p:
        raise UserError("empty prompt: give some text")
    if "\n" in p or "\r" in p:
        raise UserError(f"a prompt must be one line: {p[:40]!r}")
    return p


def read_prompts(
    args: Sequence[str], prompts_file: str | None = None, stdin: TextIO | None = None
) -> list[str]:
    """Prompts from arguments (``-`` reads stdin, one per line) and ``--prompts-file``.

    Blank lines of stdin and of the file are skipped; an empty prompt argument is an error.
    """
    prompts: list[str] = []
    for a in args:
        if a == "-":
            stream = stdin if stdin is not None else sys.stdin
            prompts += [line.strip() for line in stream.read().splitlines() if line.strip()]
        else:
            prompts.append(check_prompt(a))
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"no such prompts file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"prompts file is not UTF-8 text: {path}") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts: give PROMPT arguments, '-' for stdin, or --prompts-file FILE")
    return prompts


def check_prompt_lengths(prompts: Iterable[str], count_tokens: Any, limit: int, truncate: bool) -> None:
    """Refuse prompts longer than the CLIP's token limit unless ``truncate`` (then CLIP warns).

    Args:
        count_tokens: ``count_tokens(text) -> int`` (start/end tokens included), or None when the
            encoder cannot count (the check is then left to the encoder's own warning).
    """
    if count_tokens is None or truncate:
        return
    for p in prompts:
        n = count_tokens(p)
        if n > limit:
            raise UserError(
                f"prompt is {n} tokens, over this model's limit of {limit}: {p[:40]!r}...; "
                "shorten it or pass --truncate"
            )


# --------------------------------------------------------------------------- images and items


@dataclass(frozen=True)
class ImageRef:
    """An image file given on the command line (recorded by absolute path and sha256)."""

    path: Path
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"image": str(self.path), "sha256": self.sha256}

    def load(self) -> Any:
        """The image as an RGB PIL image (UserError if the file changed since it was recorded)."""
        data = _read_bytes(self.path)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise UserError(f"image file changed since it was recorded (sha256 differs): {self.path}")
        return decode_image(data, self.path)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"no such image file: {path}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read image file {path}: {e.strerror}") from None


def decode_image(data: bytes, path: Path) -> Any:
    """Bytes -> RGB PIL image; UserError when they are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"not an image file: {path} ({type(e).__name__})") from None


def image_ref(path: str | Path) -> ImageRef:
    """Check an image argument (exists, decodes) and fingerprint it."""
    p = Path(path).expanduser()
    data = _read_bytes(p)
    decode_image(data, p)
    return ImageRef(p.resolve(), hashlib.sha256(data).hexdigest())


def image_ref_from_json(d: dict[str, Any]) -> ImageRef:
    return ImageRef(Path(d["image"]), str(d["sha256"]))


def looks_like_image_path(arg: str) -> bool:
    """True for arguments that end in an image extension (``cat.png``, ``dir/x.JPG``)."""
    return Path(arg).suffix.lower() in IMAGE_EXTENSIONS and " " not in Path(arg).name


def parse_item(arg: str) -> ImageRef | str:
    """An ``interpolate``/``mix`` input: an existing file is an image, anything else a prompt.

    An argument that names no file but ends in an image extension (``cat.png``) is taken for a
    mistyped path: UserError "no such image file".
    """
    p = Path(arg).expanduser()
    if p.is_file():
        return image_ref(p)
    if looks_like_image_path(arg):
        raise UserError(f"no such image file: {arg}")
    return check_prompt(arg)


def item_json(item: ImageRef | str) -> dict[str, str]:
    return item.to_json() if isinstance(item, ImageRef) else {"prompt": item}


def item_from_json(d: dict[str, Any]) -> ImageRef | str:
    return image_ref_from_json(d) if "image" in d else str(d["prompt"])


def parse_weighted(args: Sequence[str]) -> tuple[list[ImageRef | str], list[float]]:
    """``ITEM:WEIGHT ...`` -> items and weights (split on the last colon).

    Every item has a weight, or none has (equal weights). Weights are finite and not all zero; a
    negative weight pushes the mix away from its item (:func:`unclip.manipulate.mix`).
    """
    if len(args) < 2:
        raise UserError("mix needs at least two items")
    items: list[ImageRef | str] = []
    weights: list[float | None] = []
    for a in args:
        head, sep, tail = a.rpartition(":")
        if sep:
            try:
                w = float(tail)
            except ValueError:
                raise UserError(
                    f"unparsable weight {tail!r} in {a!r}: write ITEM:WEIGHT, e.g. 'a cat:0.5'"
                ) from None
            if not math.isfinite(w):
                raise UserError(f"weight must be a finite number, got {tail!r} in {a!r}")
            items.append(parse_item(head))
            weights.append(w)
        else:
            items.append(parse_item(a))
            weights.append(None)
    given = [w for w in weights if w is not None]
    if given and len(given) != len(weights):
        raise UserError(
            f"{len(given)} weights for {len(weights)} items: give ITEM:WEIGHT for every item or for none"
        )
    final = [float(w) for w in given] if given else [1.0] * len(items)
    if all(w == 0 for w in final):
        raise UserError("weights are all zero")
    return items, final


# --------------------------------------------------------------------------- output folder


def prepare_out_dir(out: str | Path) -> Path:
    """Create ``out`` if needed and check it is a writable folder (before any compute)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".unclip-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {path}: {e.strerror or e}") from None
    manifest = path / MANIFEST_FILE
    if manifest.exists():
        read_manifest(manifest)  # refuse a foreign or corrupt manifest now, not after the work
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and validate a manifest written by :class:`OutputWriter`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such manifest: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid manifest: {e}") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(data.get("images"), list)
    ):
        raise UserError(f"{path} is not an unclip manifest")
    if not isinstance(data.get("version"), int) or data["version"] > MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {data.get('version')}, newer than this unclip understands"
        )
    return data


def chunk_json(record: dict[str, Any]) -> str:
    """The canonical JSON text stored in the PNG chunk (sorted keys: identical runs, identical bytes)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def png_bytes(image: Any, record: dict[str, Any]) -> bytes:
    """Encode a PIL image as PNG with ``record`` as JSON in a tEXt chunk (key ``unclip``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, chunk_json(record))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_record(path: str | Path) -> dict[str, Any]:
    """The settings JSON stored in a PNG written by unclip."""
    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(PNG_KEY)
    if text is None:
        raise UserError(f"{path} has no '{PNG_KEY}' text chunk")
    return json.loads(text)


_NUMBERED = re.compile(r"^(?P<prefix>.+)-(?P<n>\d{4,})\.png$")


def next_free_number(folder: Path, prefix: str) -> int:
    """One past the highest ``<prefix>-NNNN.png`` number in ``folder`` (0 when there is none)."""
    highest = -1
    for f in folder.iterdir():
        m = _NUMBERED.match(f.name)
        if m and m.group("prefix") == prefix:
            highest = max(highest, int(m.group("n")))
    return highest + 1


class OutputWriter:
    """Writes PNGs into an output folder and records each in ``manifest.json``.

    Each record is ``{"command", "job", "index", "model", "unclip_version"}``: ``job`` holds every
    setting of the pipeline call that made the image (inputs, seed, steps, ...), ``index`` the
    image's position among that call's outputs. The PNG's chunk holds the record; the manifest
    entry adds ``file`` and ``sha256``.
    """

    def __init__(self, out: Path, command: str) -> None:
        self.out = out
        self.command = command
        self.written: list[Path] = []

    def write(self, image: Any, record: dict[str, Any]) -> Path:
        """Write one image (never over an existing file) and add it to the manifest."""
        data = png_bytes(image, record)
        n = next_free_number(self.out, self.command)
        while True:
            path = self.out / f"{self.command}-{n:04d}.png"
            try:
                with open(path, "xb") as f:  # "x": fails rather than overwrite
                    f.write(data)
                break
            except FileExistsError:
                n += 1
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        self._add_to_manifest({"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), **record})
        self.written.append(path)
        return path

    def _add_to_manifest(self, entry: dict[str, Any]) -> None:
        from unclip.checkpoint import atomic_write_bytes

        path = self.out / MANIFEST_FILE
        if path.exists():
            manifest = read_manifest(path)
        else:
            manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "images": []}
        manifest["images"].append(entry)
        atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
