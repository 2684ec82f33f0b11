"""The pixel oracle: accuracy on fresh renders, resolution consistency, and score semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unclip.data.shapes import (
    ObjectSpec,
    SceneSpec,
    read_background,
    read_scene,
    render,
    sample_scene,
    score,
)
from unclip.data.shapes.accuracy import measure
from unclip.data.shapes.vocab import ATTRIBUTES

# The targets of the brief: per attribute, >= 99 % at 64 px and >= 97 % at 32 px.
TARGET = {32: 0.97, 64: 0.99, 128: 0.99}


def _check(result: dict, size: int, objects: tuple[int, ...]) -> None:
    for attr in ATTRIBUTES:
        assert result[attr] >= TARGET[size], (size, objects, attr, result[attr], result["errors"])
    assert result["count"] >= TARGET[size], (size, objects, result["errors"])
    if result["relation"] is not None:
        assert result["relation"] >= TARGET[size], (size, objects, result["relation"])


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("objects", [(1,), (2, 3)])
def test_oracle_accuracy_on_fresh_renders(size, objects):
    _check(measure(150, size, objects, "clean", seed=11), size, objects)


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("objects", [(1,), (2, 3)])
def test_oracle_accuracy_2000(size, objects):
    _check(measure(2000, size, objects, "clean", seed=0), size, objects)


@pytest.mark.slow
@pytest.mark.parametrize("degradation", ["noise", "blur", "jpeg"])
def test_oracle_degraded_64(degradation):
    """Not a target (docs/data-shapes.md reports the numbers); guards against regressions."""
    r = measure(500, 64, (1, 2, 3), degradation, seed=1)
    assert min(r[a] for a in ATTRIBUTES) >= 0.9, r


def test_same_spec_reads_the_same_at_every_size():
    rng = np.random.default_rng(5)
    agree = {32: 0, 64: 0, 128: 0}
    total = 0
    for _ in range(40):
        spec = sample_scene(rng, "any")
        truth = sorted(tuple(o.attributes().values()) for o in spec.objects)
        total += 1
        for size in agree:
            got = sorted(tuple(r.attributes().values()) for r in read_scene(render(spec, size)))
            agree[size] += got == truth
    assert agree[64] == agree[128] == total
    assert agree[32] >= total - 2


def test_positions_and_sizes_are_measured_not_just_named():
    rng = np.random.default_rng(6)
    for _ in range(30):
        spec = sample_scene(rng, num_objects=1)
        (reading,) = read_scene(render(spec, 128))
        (obj,) = spec.objects
        assert abs(reading.x - obj.x) < 0.01 and abs(reading.y - obj.y) < 0.01
        assert abs(reading.radius / obj.radius - 1.0) < 0.05
        assert np.abs(np.array(reading.rgb) - np.array(obj.rgb)).max() <= 12


def test_background_is_read():
    rng = np.random.default_rng(7)
    for _ in range(40):
        spec = sample_scene(rng)
        assert read_background(render(spec, 32)) == spec.background


def test_tensor_and_array_inputs_read_like_pil():
    spec = sample_scene(np.random.default_rng(8), num_objects=2)
    image = render(spec, 64)
    arr = np.asarray(image)
    tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    want = [r.attributes() for r in read_scene(image)]
    assert [r.attributes() for r in read_scene(arr)] == want
    assert [r.attributes() for r in read_scene(tensor)] == want


def _scene(*objs: tuple[str, str, float, float], bg: str = "gray") -> SceneSpec:
    colors = {"red": (230, 30, 30), "blue": (20, 70, 240), "yellow": (240, 220, 20), "green": (30, 170, 40)}
    specs = tuple(
        ObjectSpec(shape, color, "large", "solid", x, y, 0.0, colors[color], 0.16)
        for shape, color, x, y in objs
    )
    rel = None
    if len(specs) == 2:
        rel = "left of" if specs[0].x < specs[1].x else "right of"
    return SceneSpec(specs, bg, (128, 128, 128), rel)  # type: ignore[arg-type]


def test_score_partial_captions():
    image = render(_scene(("star", "red", 0.25, 0.5), ("circle", "blue", 0.75, 0.5)), 64)
    assert score(image, "a red star and a blue circle")["all_correct"]
    assert score(image, "a star and something blue")["all_correct"]
    r = score(image, "a red star")  # one object asked, two drawn
    assert r["shape"] and r["color"] and not r["count"] and not r["all_correct"]
    r = score(image, "two shapes")
    assert r["count"] and r["all_correct"] and r["shape"] is None


def test_score_detects_binding_errors():
    image = render(_scene(("star", "red", 0.25, 0.5), ("circle", "blue", 0.75, 0.5)), 64)
    r = score(image, "a blue star and a red circle")
    assert r["shape"] and r["color"]  # each attribute is somewhere in the image ...
    assert r["binding"] is False and not r["all_correct"]  # ... but not on the right object
    assert r["hits"] < r["total"]


def test_score_relation_and_background():
    image = render(_scene(("star", "red", 0.25, 0.5), ("circle", "blue", 0.75, 0.5)), 64)
    assert score(image, "a red star to the left of a blue circle")["relation"] is True
    r = score(image, "a red star to the right of a blue circle")
    assert r["relation"] is False and not r["all_correct"]
    assert score(image, "a blue circle to the right of a red star")["all_correct"]
    assert score(image, "a red star and a blue circle on a gray background")["background"] is True
    assert score(image, "a red star and a blue circle on a navy background")["background"] is False


def test_score_against_spec_and_empty_image():
    spec = sample_scene(np.random.default_rng(9), num_objects=3)
    r = score(render(spec, 64), spec)
    assert r["all_correct"] and r["total"] == 15 and r["hits"] == 15
    empty = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert read_scene(empty) == []
    r = score(empty, "a star")
    assert not r["count"] and r["shape"] is False and r["assignment"] == [None]
