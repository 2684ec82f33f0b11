"""Shapes world captions: templates, determinism, and the parser that inverts them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from unclip.data.shapes import CaptionSpec, Mention, caption, describe, parse_caption, sample_scene
from unclip.data.shapes.captions import mention_matches
from unclip.data.shapes.vocab import ATTRIBUTES, relation_holds
from unclip.errors import UserError


def _consistent(spec, parsed) -> bool:
    """Some one-to-one matching of mentions to objects satisfies every pinned attribute/relation."""
    objs = [o.attributes() for o in spec.objects]
    if len(parsed.mentions) != len(objs):
        return False
    for perm in itertools.permutations(range(len(objs))):
        if not all(mention_matches(m, objs[p]) for m, p in zip(parsed.mentions, perm)):
            continue
        if parsed.relation is not None:
            i, rel, j = parsed.relation
            a, b = spec.objects[perm[i]], spec.objects[perm[j]]
            if not relation_holds((a.x, a.y), (b.x, b.y), rel):
                continue
        return parsed.background in (None, spec.background)
    return False


@pytest.mark.parametrize("mode", ["full", "partial", "mixed", "canonical"])
def test_parse_inverts_every_caption(mode):
    rng = np.random.default_rng(0)
    for _ in range(600):
        spec = sample_scene(rng, "any")
        text = caption(spec, rng, mode)
        parsed = parse_caption(text)
        assert _consistent(spec, parsed), (text, parsed)
        if mode in ("full", "canonical"):
            assert all(set(m.constraints()) == set(ATTRIBUTES) for m in parsed.mentions), text
            assert parsed.background == spec.background
            if spec.relation is not None:
                assert parsed.relation is not None, text


def test_captions_are_deterministic_and_varied():
    spec = sample_scene(np.random.default_rng(1), num_objects=2)
    a = [caption(spec, np.random.default_rng(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(6)
    assert len({caption(spec, rng) for _ in range(50)}) > 20


def test_partial_captions_leave_attributes_out():
    rng = np.random.default_rng(2)
    counts = dict.fromkeys(ATTRIBUTES, 0)
    shapeless = 0
    n = 0
    for _ in range(400):
        parsed = parse_caption(caption(sample_scene(rng), rng, "partial"))
        for m in parsed.mentions:
            n += 1
            shapeless += m.shape is None
            for a in ATTRIBUTES:
                counts[a] += getattr(m, a) is None
    assert all(0.15 < counts[a] / n < 0.8 for a in ATTRIBUTES), counts
    assert shapeless > 0


def test_describe_is_canonical():
    rng = np.random.default_rng(3)
    spec = sample_scene(
        rng,
        objects=[{"shape": "star", "color": "red", "size": "small", "fill": "solid", "position": "top left"}],
    )
    assert describe(spec) == f"a small solid red star in the top left, on a {spec.background} background"
    assert caption(spec, rng, "canonical") == describe(spec)


@pytest.mark.parametrize(
    ("text", "mentions", "relation", "background"),
    [
        ("a star", [Mention(shape="star")], None, None),
        ("something green", [Mention(color="green")], None, None),
        (
            "A small red star in the top left.",
            [Mention("star", "red", "small", None, "top left")],
            None,
            None,
        ),
        ("red star, top left", [Mention("star", "red", None, None, "top left")], None, None),
        (
            "there is a large outlined blue square at the bottom",
            [Mention("square", "blue", "large", "outline", "bottom")],
            None,
            None,
        ),
        (
            "a blue circle to the left of a yellow heart",
            [Mention("circle", "blue"), Mention("heart", "yellow")],
            (0, "left of", 1),
            None,
        ),
        ("two shapes: a star and a circle", [Mention(shape="star"), Mention(shape="circle")], None, None),
        ("two red stars", [Mention("star", "red")] * 2, None, None),
        ("three shapes", [Mention()] * 3, None, None),
        (
            "a hollow violet plus sign in the middle",
            [Mention("cross", "purple", None, "outline", "center")],
            None,
            None,
        ),
        ("a grey heart on a grey background", None, None, None),  # grey is a background, not an object colour
        ("a white heart on a navy background", [Mention("heart", "white")], None, "navy"),
        ("a Star in the upper-left corner", [Mention("star", position="top left")], None, None),
        (
            "a tiny star above something big",
            [Mention("star", None, "small"), Mention(size="large")],
            (0, "above", 1),
            None,
        ),
    ],
)
def test_parse_examples(text, mentions, relation, background):
    if mentions is None:
        with pytest.raises(UserError):
            parse_caption(text)
        return
    parsed = parse_caption(text)
    assert list(parsed.mentions) == mentions
    assert parsed.relation == relation
    assert parsed.background == background
    assert parsed.count == len(mentions)


@pytest.mark.parametrize(
    "text",
    ["a red dog", "two shapes: a star", "a red blue star", "a star, a circle, a heart and a cross", ""],
)
def test_parse_rejects(text):
    with pytest.raises(UserError):
        parse_caption(text)


def test_caption_spec_from_scene():
    spec = sample_scene(np.random.default_rng(4), num_objects=2)
    cs = CaptionSpec.from_scene(spec)
    assert cs.count == 2 and cs.relation == (0, spec.relation, 1) and cs.background == spec.background
    assert all(set(m.constraints()) == set(ATTRIBUTES) for m in cs.mentions)
