"""Shapes world rendering: determinism, resolution consistency, exact colours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unclip.data.shapes import ObjectSpec, SceneSpec, render, render_array, sample_scene
from unclip.data.shapes.geometry import TEMPLATE_NAMES, circumradius, polygon, sdf


def test_templates_have_area_pi_and_centroid_at_origin():
    for name in TEMPLATE_NAMES:
        if name == "circle":
            continue
        v = polygon(name)
        x, y = v[:, 0], v[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2
        assert abs(abs(area) - np.pi) < 1e-9
        assert abs(((x + xn) * cross).sum() / (6 * area)) < 1e-9
        assert circumradius(name) >= 1.0


def test_sdf_sign_and_scale():
    # Inside the unit circle negative, outside positive, exact distances.
    assert sdf("circle", np.array([0.0]), np.array([0.0]))[0] == pytest.approx(-1.0)
    assert sdf("circle", np.array([2.0]), np.array([0.0]))[0] == pytest.approx(1.0)
    half = np.sqrt(np.pi) / 2  # square of area pi
    d = sdf("square", np.array([0.0, half + 0.5, 0.0]), np.array([0.0, 0.0, -half - 0.25]))
    assert d[0] == pytest.approx(-half, abs=1e-5) and d[1] == pytest.approx(0.5, abs=1e-5)
    assert d[2] == pytest.approx(0.25, abs=1e-5)


def test_render_is_deterministic_rgb_and_sized():
    rng = np.random.default_rng(0)
    for _ in range(10):
        spec = sample_scene(rng)
        for size in (32, 64, 256):
            a, b = render(spec, size), render(spec, size)
            assert a.mode == "RGB" and a.size == (size, size)
            assert a.tobytes() == b.tobytes()


def test_same_spec_is_consistent_across_resolutions():
    """A 128 px render box-downsampled to 32 px matches the 32 px render (same coverage model)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        spec = sample_scene(rng, texture_prob=0.0)
        small = np.asarray(render(spec, 32), dtype=np.float32) / 255
        big = np.asarray(render(spec, 128).resize((32, 32), Image.Resampling.BOX), dtype=np.float32) / 255
        assert np.abs(small - big).mean() < 0.01
        assert np.abs(small - big).max() < 0.35  # only single edge pixels differ noticeably


def test_solid_object_centre_and_plain_background_are_exact():
    obj = ObjectSpec("square", "blue", "large", "solid", 0.5, 0.5, 10.0, (20, 70, 240), 0.17)
    spec = SceneSpec((obj,), "beige", (200, 185, 150))
    arr = np.asarray(render(spec, 64))
    assert tuple(arr[32, 32]) == (20, 70, 240)
    assert tuple(arr[0, 0]) == (200, 185, 150) and tuple(arr[-1, -1]) == (200, 185, 150)
    outline = SceneSpec(
        (ObjectSpec("square", "blue", "large", "outline", 0.5, 0.5, 0.0, (20, 70, 240), 0.17),),
        "beige",
        (200, 185, 150),
    )
    assert tuple(np.asarray(render(outline, 64))[32, 32]) == (200, 185, 150)  # hole shows background


def test_textures_are_mild():
    rng = np.random.default_rng(2)
    for texture in ("gradient", "noise"):
        spec = sample_scene(rng, num_objects=1, texture_prob=1.0)
        while spec.texture != texture:
            spec = sample_scene(rng, num_objects=1, texture_prob=1.0)
        border = render_array(spec, 64)[0]
        assert np.abs(border - np.asarray(spec.bg_rgb) / 255).max() < 0.12


def test_render_rejects_bad_size():
    spec = sample_scene(np.random.default_rng(3))
    with pytest.raises(ValueError):
        render(spec, 4)
