from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.clip.preprocess import ImagePreprocess
from unclip.errors import UserError


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (1, 1), (10, 20, 30)),
        Image.new("RGB", (97, 13), (10, 20, 30)),
        Image.new("L", (31, 64), 128),
        Image.new("RGBA", (20, 20), (255, 0, 0, 0)),
        Image.new("LA", (5, 9), (0, 255)),
        Image.new("P", (33, 33)),
        Image.new("CMYK", (16, 16)),
        Image.new("1", (7, 3)),
        Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)),
        Image.new("F", (8, 8), 0.5),
    ],
    ids=lambda im: f"{im.mode}-{im.size[0]}x{im.size[1]}",
)
def test_pil_modes_and_sizes(image):
    pre = ImagePreprocess(24)
    x = pre(image)
    assert x.shape == (1, 3, 24, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1  # mean/std 0.5 maps [0, 1] to [-1, 1]


def test_alpha_composited_onto_background():
    pre = ImagePreprocess(4, background=(255, 255, 255))
    x = pre(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    torch.testing.assert_close(x, torch.ones_like(x))  # fully transparent -> white


def test_centre_crop_keeps_the_middle():
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    im.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    x = ImagePreprocess(10)(im)
    assert x.min() > 0.9


def test_tensors_match_pil_when_no_resize():
    pre = ImagePreprocess(8)
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(pre(t), pre(Image.fromarray(arr)), atol=1e-6, rtol=0)
    assert pre(t[:1]).shape == (1, 3, 8, 8)  # one channel is repeated
    assert pre(torch.rand(2, 3, 5, 40) * 2 - 1).shape == (2, 3, 8, 8)


def test_bad_inputs():
    pre = ImagePreprocess(8)
    with pytest.raises(UserError):
        pre([])
    with pytest.raises(UserError):
        pre(torch.zeros(2, 4, 8, 8))
    with pytest.raises(UserError):
        pre(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(UserError):
        pre([Image.new("RGB", (2, 2)), torch.zeros(3, 2, 2)])
