"""CLIP image preprocessing without torchvision: mode fix, resize, centre crop, normalise.

Inputs are PIL images (any mode, any size) or tensors in [-1, 1] (the package's pixel convention:
``(3, H, W)`` or ``(B, 3, H, W)``; one channel is repeated to three). The shorter side is resized to
``size`` (bicubic, antialiased when shrinking), the centre ``size x size`` square is cropped, and
[0, 1] pixels are normalised with the encoder's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip.errors import UserError

ImageInput = Image.Image | torch.Tensor | Sequence[Image.Image] | Sequence[torch.Tensor]


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto ``background`` (emoji have alpha)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit grey: rescale to 8 bits by the image's own range before converting.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): shorter side to ``size``, then centre crop."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x


def pil_to_tensor(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """PIL image -> (3, H, W) float in [0, 1] (after :func:`to_rgb`)."""
    arr = np.asarray(to_rgb(image, background), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImagePreprocess:
    """Callable preprocessing of one encoder.

    Args:
        size: output side in pixels.
        mean, std: per-channel normalisation applied to [0, 1] pixels.
        background: RGB for transparent pixels.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.background = tuple(background)

    def pil(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, size, size) in [0, 1], resized with PIL (better antialiasing)."""
        if not isinstance(image, Image.Image):
            raise UserError(f"expected a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise UserError(f"empty image of size {image.size}")
        image = to_rgb(image, self.background)
        s = self.size
        scale = s / min(image.width, image.height)
        nw, nh = max(s, round(image.width * scale)), max(s, round(image.height * scale))
        if (nw, nh) != image.size:
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - s) // 2, (nh - s) // 2
        image = image.crop((left, top, left + s, top + s))
        return pil_to_tensor(image)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (C, H, W) in [-1, 1], C in {1, 3} -> (B, 3, size, size) in [0, 1]."""
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"expected image tensors of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise UserError(f"image tensors must be float in [-1, 1], got {x.dtype}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _resize_crop((x + 1) / 2, self.size)
        return x.clamp(0.0, 1.0)

    def __call__(self, images: ImageInput) -> torch.Tensor:
        """PIL image(s) or [-1, 1] tensor(s) -> (B, 3, size, size) normalised float32 (on CPU for
        PIL inputs, on the input's device for tensors)."""
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            x = self.tensor(images)
        else:
            images = list(images)
            if not images:
                raise UserError("no images given")
            if all(isinstance(im, Image.Image) for im in images):
                x = torch.stack([self.pil(im) for im in images])
            elif all(isinstance(im, torch.Tensor) for im in images):
                x = torch.cat([self.tensor(im) for im in images])
            else:
                kinds = sorted({type(im).__name__ for im in images})
                raise UserError(f"images must be all PIL images or all tensors, got {', '.join(kinds)}")
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
