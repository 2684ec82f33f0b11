"""Shapes world: vocabulary rules, scene specs, the sampler and held-out compositions."""

from __future__ import annotations

import colorsys
import itertools
import json

import numpy as np
import pytest

from unclip.data.shapes import (
    HELD_OUT,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    caption,
    held_out_rules,
    is_held_out,
    parse_caption,
    relation_holds,
    sample_scene,
)
from unclip.data.shapes.captions import mention_matches
from unclip.data.shapes.colors import _hsv_grid
from unclip.data.shapes.scene import gap
from unclip.data.shapes.vocab import (
    BACKGROUND_HSV,
    CANVAS_MARGIN,
    COLOR_HSV,
    OBJECT_GAP,
    VOCAB_VERSION,
    position_cell,
    position_name,
)


def test_vocab_version_and_closed_sets():
    assert VOCAB_VERSION == 1
    assert set(SHAPES) >= {"circle", "square", "triangle", "star", "heart", "cross"}
    assert 5 <= len(HELD_OUT) <= 8


def test_backgrounds_are_never_object_colours():
    """The documented rule: every background range is >= 0.2 (RGB) from every object colour range."""
    for (bg, bg_hsv), (col, col_hsv) in itertools.product(BACKGROUND_HSV.items(), COLOR_HSV.items()):
        a, b = _hsv_grid(bg_hsv, 5), _hsv_grid(col_hsv, 5)
        d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min()
        assert d >= 0.2, (bg, col, d)
        assert bg not in COLOR_HSV


def test_object_colour_ranges_do_not_overlap():
    for (a, ha), (b, hb) in itertools.combinations(COLOR_HSV.items(), 2):
        pa, pb = _hsv_grid(ha, 5), _hsv_grid(hb, 5)
        assert np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min() > 0.1, (a, b)


def test_position_names_round_trip():
    for row, col in itertools.product(range(3), range(3)):
        name = position_name((col + 0.5) / 3, (row + 0.5) / 3)
        assert position_cell(name) == (row, col)
    assert position_name(0.1, 0.1) == "top left" and position_name(0.5, 0.5) == "center"
    assert position_name(0.5, 0.9) == "bottom" and position_name(0.9, 0.5) == "right"


def test_relation_definition():
    assert relation_holds((0.2, 0.5), (0.8, 0.5), "left of")
    assert relation_holds((0.8, 0.5), (0.2, 0.5), "right of")
    assert relation_holds((0.5, 0.2), (0.5, 0.8), "above")
    assert not relation_holds((0.2, 0.2), (0.8, 0.8), "left of")  # diagonal: neither dominates
    assert not relation_holds((0.5, 0.5), (0.55, 0.5), "left of")  # too close to call


def test_spec_json_round_trip_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = sample_scene(rng, "any")
        text = json.dumps(spec.to_dict())
        back = SceneSpec.from_dict(json.loads(text))
        assert back == spec
        assert json.dumps(back.to_dict()) == text


def test_spec_rejects_bad_input():
    obj = ObjectSpec("star", "red", "small", "solid", 0.5, 0.5, 0.0, (255, 0, 0), 0.1)
    with pytest.raises(ValueError):
        ObjectSpec("hexagon", "red", "small", "solid", 0.5, 0.5, 0.0, (255, 0, 0), 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ObjectSpec("star", "red", "small", "solid", 0.5, 0.5, 0.0, (256, 0, 0), 0.1)
    with pytest.raises(ValueError):
        SceneSpec((obj,), "gray", (128, 128, 128), relation="left of")  # relation needs two objects
    d = SceneSpec((obj,), "gray", (128, 128, 128)).to_dict()
    d["extra"] = 1
    with pytest.raises(ValueError, match="unknown keys"):
        SceneSpec.from_dict(d)


def test_sampler_is_deterministic():
    a = [sample_scene(np.random.default_rng(7)) for _ in range(3)]
    b = [sample_scene(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    assert sample_scene(np.random.default_rng(8)) != a[0]


def test_scenes_are_valid_layouts():
    """Inside the canvas, apart from each other, centres inside their named cells, relations true."""
    rng = np.random.default_rng(1)
    for _ in range(400):
        spec = sample_scene(rng, "any")
        for o in spec.objects:
            hx, hy = o.half_extents
            lo, hi = CANVAS_MARGIN * 0.99, 1 - CANVAS_MARGIN * 0.99
            assert o.x - hx >= lo and o.x + hx <= hi and o.y - hy >= lo and o.y + hy <= hi
            h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in o.rgb))
            (h0, h1), (s0, s1), (v0, v1) = COLOR_HSV[o.color]
            assert v0 - 0.02 <= v <= v1 + 0.02
            if o.color != "black":  # 8-bit rounding makes the saturation of near-black arbitrary
                assert s0 - 0.02 <= s <= s1 + 0.02
            if o.color not in ("black", "white"):
                assert (h * 360 - h0 + 2) % 360 <= h1 - h0 + 4
        for a, b in itertools.combinations(spec.objects, 2):
            assert gap(a, b) >= OBJECT_GAP * 0.99
        if len(spec.objects) == 2:
            a, b = spec.objects
            assert spec.relation is not None
            assert relation_holds((a.x, a.y), (b.x, b.y), spec.relation)
        else:
            assert spec.relation is None


def test_constraints_are_honoured():
    rng = np.random.default_rng(2)
    spec = sample_scene(
        rng, objects=[{"shape": "star", "position": "top left"}, {"color": "blue"}], relation="left of"
    )
    assert spec.objects[0].shape == "star" and spec.objects[0].position == "top left"
    assert spec.objects[1].color == "blue" and spec.relation == "left of"
    spec = sample_scene(rng, num_objects=3, background="navy")
    assert len(spec.objects) == 3 and spec.background == "navy"
    with pytest.raises(ValueError):
        sample_scene(rng, objects=[{"shape": "hexagon"}])
    with pytest.raises(ValueError):
        sample_scene(rng, num_objects=4)


@pytest.mark.parametrize("num", [1500, pytest.param(30_000, marks=pytest.mark.slow)])
def test_held_out_never_in_train_specs_or_captions(num):
    rng = np.random.default_rng(3)
    for _ in range(num):
        spec = sample_scene(rng, "train")
        assert not is_held_out(spec)
        parsed = parse_caption(caption(spec, rng, "mixed"))
        for rule in HELD_OUT:
            if rule.background is not None and parsed.background != rule.background:
                continue
            assert not any(
                m.constraints() == {**m.constraints(), **rule.object_attributes()} for m in parsed.mentions
            )


def test_held_out_split_always_holds_a_rule():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(300):
        spec = sample_scene(rng, "heldout")
        rules = held_out_rules(spec)
        assert rules
        seen.update(r.name for r in rules)
    assert seen == {r.name for r in HELD_OUT}


def test_held_out_prompts_parse_to_the_rule():
    for rule in HELD_OUT:
        parsed = parse_caption(rule.prompt())
        (mention,) = parsed.mentions
        assert mention.constraints() == rule.object_attributes()
        assert parsed.background == rule.background
        assert mention_matches(mention, rule.object_attributes())
