"""Safe image loading for users' own data, and the image <-> tensor conventions of the package.

Everything that reads an image a user brings (folders, webdataset shards, the CLI, the server) goes
through :func:`load_image`, so one policy holds everywhere:

- the result is always an 8-bit RGB ``PIL.Image`` (grayscale, palette, 16-bit, CMYK are converted;
  alpha is composited onto a background colour, white by default, rather than dropped, because
  dropping alpha turns transparent regions into whatever colour the encoder left there, often black);
- a decompression bomb is refused from the header size, before a single pixel is decoded;
- anything unreadable raises :class:`ImageLoadError` (a :class:`~unclip.errors.UserError`) with a
  one-line message naming the file and a machine-readable ``reason`` that loaders count.

Tensors follow the diffusion convention of the package: ``(3, H, W)`` float in ``[-1, 1]``.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from unclip.errors import UserError

logger = logging.getLogger(__name__)

# 64 MP: larger than any photo a camera phone takes (~50 MP), far below what would exhaust memory
# (a decoded 64 MP RGB image is 192 MB). PIL's own default warns at 89 MP and refuses at 179 MP.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

#: File extensions treated as images by the folder and shard loaders (lower case, with the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

SkipReason = Literal["missing", "empty", "not_image", "truncated", "corrupt", "too_large"]
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | IO[bytes]
Color = tuple[int, int, int]


class ImageLoadError(UserError):
    """An image that cannot be used: missing, empty, not an image, corrupt, truncated or too large.

    Attributes:
        source: The file name (or ``"<bytes>"``/a caller-supplied name) the image came from.
        reason: Why it was refused; loaders count skipped files by this value.
    """

    def __init__(self, source: str, reason: SkipReason, detail: str) -> None:
        self.source = source
        self.reason: SkipReason = reason
        self.detail = detail
        super().__init__(f"{source}: {detail}")


class SkipStats:
    """Counts of items a loader skipped, by reason, with the first few examples of each.

    Loaders never stop a long job for one bad file; they log a warning, count it here and move on.
    The counts are per process: with DataLoader workers each worker keeps its own.
    """

    #: Per-file warnings beyond this many are logged at DEBUG so a bad dataset cannot flood the log.
    max_warnings = 50
    max_examples = 5

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._warned = 0

    @property
    def total(self) -> int:
        """Number of skipped items over all reasons."""
        return sum(self.counts.values())

    def add(self, reason: str, source: str, message: str | None = None) -> None:
        """Count one skipped item and log why."""
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(source)
        text = f"skipping {message or source} ({reason})"
        if self._warned < self.max_warnings:
            self._warned += 1
            suffix = "; further skips are logged at DEBUG" if self._warned == self.max_warnings else ""
            logger.warning("%s%s", text, suffix)
        else:
            logger.debug("%s", text)

    def as_dict(self) -> dict[str, int]:
        """Counts by reason as a plain dict (sorted by reason)."""
        return dict(sorted(self.counts.items()))

    def __repr__(self) -> str:
        return f"SkipStats({self.as_dict()})"


def _describe(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return getattr(source, "name", None) or "<bytes>"


def _to_rgb(img: Image.Image, background: Color) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto ``background``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # PIL's convert("L") clips these to 0..255 instead of rescaling, which turns a 16-bit
        # photo almost entirely white; rescale by the nominal range of the mode instead.
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            # Float images are usually in [0, 1] (TIFF from scientific tools); otherwise assume 8-bit.
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    # CMYK, YCbCr, L, 1, P, LAB, HSV: PIL's own conversions. CMYK ignores an embedded ICC profile,
    # which shifts colours slightly; good enough for training data.
    return img.convert("RGB")


def _open_fp(source: ImageSource, desc: str) -> IO[bytes]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError(desc, "missing", "file not found") from None
        except OSError as e:
            raise ImageLoadError(desc, "missing", f"cannot read file ({e.strerror or e})") from None
        if size == 0:
            raise ImageLoadError(desc, "empty", "file is empty (0 bytes)")
        try:
            return path.open("rb")
        except OSError as e:
            raise ImageLoadError(desc, "missing", f"cannot open file ({e.strerror or e})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(desc, "empty", "image data is empty (0 bytes)")
        return io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    raise TypeError(
        f"load_image expects a path, bytes, a file object or a PIL image, got {type(source).__name__}"
    )


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Color = (255, 255, 255),
    exif_transpose: bool = True,
    name: str | None = None,
) -> Image.Image:
    """Load an image safely and return it as 8-bit RGB.

    The size in the file header is checked against ``max_pixels`` before anything is decoded, so
    a tiny file that claims to be 30000x30000 costs nothing. PIL's own decompression-bomb warning
    and error are turned into :class:`ImageLoadError` as well (PIL always refuses images above
    ``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 MP by default; raise that module attribute too if
    you really need larger images).

    Args:
        source: A file path, the encoded bytes, a binary file object, or an already-open PIL image.
        max_pixels: Largest accepted ``width * height``; ``None`` disables our limit.
        background: RGB colour that transparent pixels are composited onto.
        exif_transpose: Apply the EXIF orientation tag (camera photos are often stored sideways).
        name: Name used in error messages instead of the path (e.g. a shard member name).

    Returns:
        A fully decoded ``PIL.Image`` in mode ``"RGB"``.

    Raises:
        ImageLoadError: The source is missing, empty, not an image, truncated, corrupt or too large.
    """
    desc = _describe(source, name)
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    def check_size(size: tuple[int, int]) -> None:
        if max_pixels is not None and size[0] * size[1] > max_pixels:
            raise ImageLoadError(
                desc,
                "too_large",
                f"image is {size[0]}x{size[1]} ({size[0] * size[1]:,} pixels), over the limit of "
                f"{max_pixels:,} pixels (raise max_pixels if this is intended)",
            )

    if isinstance(source, Image.Image):
        check_size(source.size)
        img = source
    else:
        fp = _open_fp(source, desc)
        owns_fp = fp is not source
        try:
            with warnings.catch_warnings():
                # PIL warns (rather than raises) between MAX_IMAGE_PIXELS and twice that. Where our
                # limit is stricter we make that warning an error; where the caller raised our
                # limit above PIL's, our own check below is the one that applies.
                limit_is_stricter = max_pixels is not None and (
                    Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS
                )
                warnings.simplefilter(
                    "error" if limit_is_stricter else "ignore", Image.DecompressionBombWarning
                )
                try:
                    # Image.open reads only the header; the pixel data is decoded by load() below.
                    img = Image.open(fp)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    raise ImageLoadError(
                        desc, "too_large", f"refused as a decompression bomb ({e})"
                    ) from None
                except UnidentifiedImageError:
                    raise ImageLoadError(desc, "not_image", "not a recognised image file") from None
                except Exception as e:  # PIL raises many types for garbage headers
                    raise ImageLoadError(desc, "corrupt", f"unreadable image header ({e})") from None
                check_size(img.size)
                try:
                    img.load()
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    # A few formats (multi-resolution ICO/TIFF) only learn the real size here.
                    raise ImageLoadError(
                        desc, "too_large", f"refused as a decompression bomb ({e})"
                    ) from None
                except Exception as e:
                    text = str(e)
                    truncated = "truncated" in text or isinstance(e, EOFError)
                    reason: SkipReason = "truncated" if truncated else "corrupt"
                    raise ImageLoadError(
                        desc, reason, f"cannot decode image ({text or type(e).__name__})"
                    ) from None
        finally:
            if owns_fp:
                fp.close()
    try:
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img, background)
    except ImageLoadError:
        raise
    except Exception as e:
        raise ImageLoadError(desc, "corrupt", f"cannot convert {img.mode} image to RGB ({e})") from None


def _target_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def resize_center_crop(img: Image.Image, size: int | Sequence[int]) -> Image.Image:
    """Resize so the image covers ``size`` (keeping aspect ratio), then crop the centre.

    For a square ``size`` this is "resize the shorter side, centre-crop", the preprocessing CLIP and
    the diffusion papers use. Downscaling is antialiased (PIL's resize filters adapt their support).

    Args:
        img: Any PIL image.
        size: Output side length, or ``(height, width)``.

    Returns:
        A PIL image of exactly ``(width, height)``.
    """
    h, w = _target_hw(size)
    src_w, src_h = img.size
    scale = max(h / src_h, w / src_w)
    new_w = max(w, round(src_w * scale))
    new_h = max(h, round(src_h * scale))
    if (new_w, new_h) != (src_w, src_h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = (new_w - w) // 2
    top = (new_h - h) // 2
    if (new_w, new_h) != (w, h):
        img = img.crop((left, top, left + w, top + h))
    return img


def to_tensor(img: Image.Image, size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Convert a PIL image to the model convention, optionally resizing and centre-cropping.

    Args:
        img: A PIL image; converted to RGB first if it is not (see :func:`load_image`).
        size: Output side length or ``(height, width)``; ``None`` keeps the image size.

    Returns:
        Tensor of shape ``(3, H, W)``, dtype float32, values in ``[-1, 1]``.
    """
    if img.mode != "RGB":
        img = _to_rgb(img, (255, 255, 255))
    if size is not None:
        img = resize_center_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


def to_pil(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Image.Image:
    """Convert a model-convention image tensor to an 8-bit PIL image.

    Args:
        x: Tensor of shape ``(3, H, W)`` or ``(1, H, W)`` (or with a leading batch of 1). Values
            outside ``value_range`` are clamped.
        value_range: The values that map to black and white.

    Returns:
        A ``PIL.Image`` in mode ``"RGB"`` (or ``"L"`` for one channel).
    """
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"to_pil expects a (3, H, W) or (1, H, W) tensor, got shape {tuple(x.shape)}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be increasing, got {value_range}")
    x = x.detach().to("cpu", torch.float32)
    x = ((x - lo) / (hi - lo) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    arr = x.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]))
    return Image.fromarray(np.ascontiguousarray(arr))


def make_grid(images: Sequence[Image.Image], cols: int, pad: int = 2, fill: int = 255) -> Image.Image:
    """Paste equally sized images into a grid, ``cols`` per row, ``pad`` pixels apart."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (fill,) * 3)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
