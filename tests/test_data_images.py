"""Safe image loading: mode conversion, bad files, decompression bombs, tensor conversion."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.data.images import ImageLoadError, load_image, resize_center_crop, to_pil, to_tensor
from unclip.errors import UserError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(
    width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: bytes | None = None
) -> bytes:
    """A PNG written by hand: lets us claim any size in the header, or use 16-bit RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if rows is not None:
        out += _chunk(b"IDAT", zlib.compress(rows))
    return out + _chunk(b"IEND", b"")


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def noise_png(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


# ---------------------------------------------------------------------------- conversions
def test_rgb_roundtrip_from_path_bytes_fileobj_and_pil(tmp_path: Path) -> None:
    img = Image.new("RGB", (5, 3), (10, 20, 30))
    data = png_bytes(img)
    (tmp_path / "a.png").write_bytes(data)
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), data, io.BytesIO(data), img):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (5, 3)
        assert out.getpixel((0, 0)) == (10, 20, 30)


def test_grayscale_and_palette_become_rgb() -> None:
    gray = load_image(png_bytes(Image.new("L", (4, 4), 77)))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    assert load_image(png_bytes(pal)).getpixel((0, 0)) == (200, 100, 50)
    bilevel = load_image(png_bytes(Image.new("1", (4, 4), 1)))
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)


def test_alpha_is_composited_on_background() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(png_bytes(rgba))
    assert out.getpixel((3, 3)) == (255, 255, 255)  # fully transparent -> white, not red
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (127, 127, 127)
    assert load_image(png_bytes(rgba), background=(0, 0, 255)).getpixel((3, 3)) == (0, 0, 255)

    la = Image.new("LA", (2, 2), (0, 0))
    assert load_image(png_bytes(la)).getpixel((0, 0)) == (255, 255, 255)

    # Palette with a transparent index (GIF-style transparency).
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 255, 0] + [0] * 765)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert load_image(buf.getvalue(), background=(1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)


def test_cmyk_jpeg_becomes_rgb() -> None:
    out = load_image(png_bytes(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"))
    assert out.mode == "RGB"
    assert all(c > 240 for c in out.getpixel((4, 4)))  # no ink = white


def test_16bit_grayscale_is_rescaled_not_clipped() -> None:
    arr = np.array([[0, 257 * 64], [32896, 65535]], dtype=np.uint16)
    out = load_image(png_bytes(Image.fromarray(arr)))
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 64], [128, 255]]


def test_16bit_rgb_png() -> None:
    # One pixel, 16 bits per channel, big-endian: (65535, 32896, 0); filter byte 0 per row.
    rows = b"\x00" + struct.pack(">HHH", 65535, 32896, 0)
    out = load_image(make_png(1, 1, bit_depth=16, color_type=2, rows=rows))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 128, 0)


def test_float_tiff_in_unit_range() -> None:
    arr = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    out = load_image(png_bytes(Image.fromarray(arr), "TIFF"))
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 128], [255, 64]]


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (6, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (2, 6)
    assert load_image(buf.getvalue(), exif_transpose=False).size == (6, 2)


# ---------------------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    ("name", "content", "reasons"),
    [
        ("empty.png", b"", {"empty"}),
        ("notes.png", b"this is a text file, not a picture\n", {"not_image"}),
        ("random.jpg", bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)), {"not_image"}),
        ("truncated.png", noise_png()[: len(noise_png()) * 6 // 10], {"truncated", "corrupt"}),
        ("header_only.png", make_png(16, 16), {"truncated", "corrupt"}),
    ],
)
def test_bad_files_raise_one_line_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reasons: set
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err, UserError)
    assert err.reason in reasons
    assert str(path) in str(err) and "\n" not in str(err)


def test_corrupted_pixel_data(tmp_path: Path) -> None:
    data = bytearray(noise_png())
    mid = len(data) // 2
    data[mid : mid + 200] = bytes(200)
    with pytest.raises(ImageLoadError) as info:
        load_image(bytes(data), name="shard-0.tar:x.png")
    assert info.value.reason in ("corrupt", "truncated")
    assert str(info.value).startswith("shard-0.tar:x.png: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "nope.png")
    assert info.value.reason == "missing"


# ---------------------------------------------------------------------------- bombs
def test_bomb_refused_from_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    # 30000x30000 = 900 MP: PIL itself raises DecompressionBombError.
    # 10000x10000 = 100 MP: PIL only warns; the warning must become our error, not leak.
    # 9000x9000 = 81 MP: below PIL's threshold, above our 64 MP default.
    for side in (30000, 10000, 9000):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ImageLoadError) as info:
                load_image(make_png(side, side))
        assert info.value.reason == "too_large", side
        assert "pixels" in str(info.value)


def test_pixel_limit_is_configurable() -> None:
    data = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageLoadError) as info:
        load_image(data, max_pixels=100 * 99)
    assert info.value.reason == "too_large"
    assert load_image(data, max_pixels=100 * 100).size == (100, 100)
    assert load_image(data, max_pixels=None).size == (100, 100)
    with pytest.raises(ImageLoadError):
        load_image(Image.new("RGB", (100, 100)), max_pixels=50)
    # Above PIL's own warning threshold, our raised limit applies: the header passes, decoding fails.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError) as info:
            load_image(make_png(10000, 10000), max_pixels=150_000_000)
    assert info.value.reason != "too_large"


# ---------------------------------------------------------------------------- tensors
def test_to_tensor_resizes_shorter_side_and_centre_crops() -> None:
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red
    img.paste((0, 0, 255), (30, 0, 40, 20))  # right quarter blue
    x = to_tensor(img, 10)
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # After scaling to 20x10 the centre 10 columns are the green half.
    assert torch.allclose(x[:, 5, 5], torch.tensor([-1.0, 1.0, -1.0]))
    assert to_tensor(img, (6, 12)).shape == (3, 6, 12)
    assert resize_center_crop(Image.new("RGB", (3, 7)), 16).size == (16, 16)  # upscales too
    assert to_tensor(img).shape == (3, 20, 40)
    assert to_tensor(Image.new("L", (4, 4), 255)).eq(1).all()


def test_to_pil_roundtrip_is_exact() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    back = to_pil(to_tensor(img))
    assert back.size == (9, 7) and np.array_equal(np.asarray(back), np.asarray(img))
    assert to_pil(to_tensor(img)[None]).size == (9, 7)
    assert to_pil(torch.full((3, 2, 2), 5.0)).getpixel((0, 0)) == (255, 255, 255)  # clamped
    assert to_pil(torch.zeros(1, 2, 2), value_range=(0.0, 1.0)).mode == "L"
    with pytest.raises(ValueError):
        to_pil(torch.zeros(2, 3, 4, 4))
