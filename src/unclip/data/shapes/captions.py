"""Captions for scenes, and a parser that recovers exactly what a caption constrains.

Captions come from many templates and synonyms, and may leave attributes out ("a star", "something
green"): a partial caption is what diversity is measured on. :func:`parse_caption` inverts every
template: it returns, for each object mention, which attributes are pinned (``None`` = unspecified),
plus the stated relation and background, so any generated image can be scored against its prompt.
Every mention always corresponds to one object: captions never leave an object out, so the number
of mentions is the number of objects the caption asks for.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from unclip.data.shapes.scene import ObjectSpec, SceneSpec
from unclip.data.shapes.vocab import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    SHAPES,
    Background,
    Relation,
)
from unclip.errors import UserError

CaptionMode = Literal["mixed", "full", "partial", "canonical"]
CAPTION_MODES: tuple[str, ...] = ("mixed", "full", "partial", "canonical")

# Synonyms: the first word of each list is the canonical one used by describe().
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
FILL_WORDS: dict[str, tuple[str, ...]] = {"solid": ("solid", "filled"), "outline": ("outlined", "hollow")}
COLOR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLORS} | {
    "cyan": ("cyan", "turquoise"),
    "purple": ("purple", "violet"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {s: (s,) for s in SHAPES} | {"cross": ("cross", "plus sign")}
_PLURAL = {"cross": "crosses", "plus sign": "plus signs", "shape": "shapes", "object": "objects"}
GENERIC_NOUNS = ("shape", "object", "thing")
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_INVERSE: dict[str, Relation] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}
_PREFIXES = ("a picture of", "an image of", "a drawing of", "there is", "there are")


@dataclasses.dataclass(frozen=True)
class Mention:
    """One object as a caption describes it; ``None`` = the caption does not say."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    fill: str | None = None
    position: str | None = None

    def constraints(self) -> dict[str, str]:
        """The pinned attributes only."""
        return {a: getattr(self, a) for a in ATTRIBUTES if getattr(self, a) is not None}


@dataclasses.dataclass(frozen=True)
class CaptionSpec:
    """What a caption asks for.

    Attributes:
        mentions: one per object, in caption order (the caption asks for exactly this many).
        relation: ``(i, relation, j)``: mention i stands in that relation to mention j.
        background: background name, if stated.
        text: the caption parsed (empty when built from a scene).
    """

    mentions: tuple[Mention, ...]
    relation: tuple[int, Relation, int] | None = None
    background: Background | None = None
    text: str = ""

    @property
    def count(self) -> int:
        return len(self.mentions)

    @classmethod
    def from_scene(cls, spec: SceneSpec) -> CaptionSpec:
        """Everything about a scene: all attributes of every object, its relation and background."""
        mentions = tuple(Mention(**o.attributes()) for o in spec.objects)
        rel = (0, spec.relation, 1) if spec.relation is not None else None
        return cls(mentions, rel, spec.background, "")


# ----------------------------------------------------------------------------------------------
# Generation


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _position_phrase(pos: str, rng: np.random.Generator | None) -> str:
    if pos == "center":
        options: tuple[str, ...] = ("in the center", "in the middle", "at the center")
    elif " " in pos:
        options = (f"in the {pos}", f"at the {pos}", f"in the {pos} corner")
    elif pos in ("top", "bottom"):
        options = (f"at the {pos}", f"near the {pos}", f"at the {pos} edge")
    else:
        options = (f"on the {pos}", f"at the {pos}", f"on the {pos} side")
    return options[0] if rng is None else _pick(rng, options)


def _noun_phrase(
    obj: ObjectSpec, keep: set[str], rng: np.random.Generator | None, plural: bool = False
) -> str:
    """Adjectives + noun without article, e.g. "small outlined red star" or "red shape"."""

    def word(table: dict[str, tuple[str, ...]], value: str) -> str:
        return table[value][0] if rng is None else _pick(rng, table[value])

    words = []
    if "size" in keep:
        words.append(word(SIZE_WORDS, obj.size))
    if "fill" in keep:
        words.append(word(FILL_WORDS, obj.fill))
    if "color" in keep:
        words.append(word(COLOR_WORDS, obj.color))
    noun = (
        word(SHAPE_WORDS, obj.shape)
        if "shape" in keep
        else ("shape" if rng is None else _pick(rng, GENERIC_NOUNS))
    )
    if plural:
        noun = _PLURAL.get(noun, noun + "s")
    return " ".join([*words, noun])


def _mention_text(obj: ObjectSpec, keep: set[str], rng: np.random.Generator, list_style: bool) -> str:
    adjectives = keep & {"size", "fill", "color"}
    if list_style:
        text = _noun_phrase(obj, keep, rng)
        return text + (f", {obj.position}" if "position" in keep else "")
    if "shape" not in keep and len(adjectives) == 1 and rng.uniform() < 0.5:
        text = "something " + _noun_phrase(obj, keep, rng).rsplit(" ", 1)[0]  # "something green"
    elif "shape" not in keep and not adjectives:
        text = "something" if rng.uniform() < 0.5 else _article(_noun_phrase(obj, keep, rng))
    else:
        text = _article(_noun_phrase(obj, keep, rng))
    if "position" in keep:
        text += " " + _position_phrase(obj.position, rng)
    return text


def _keep_sets(spec: SceneSpec, rng: np.random.Generator, full: bool) -> list[set[str]]:
    if full:
        return [set(ATTRIBUTES) for _ in spec.objects]
    probs = {"shape": 0.75, "color": 0.7, "size": 0.35, "fill": 0.35, "position": 0.35}
    out = []
    for _ in spec.objects:
        keep = {a for a, p in probs.items() if rng.uniform() < p}
        if not keep:
            keep = {_pick(rng, ATTRIBUTES)}
        out.append(keep)
    return out


def _background_phrase(bg: str, rng: np.random.Generator, list_style: bool) -> str:
    if list_style:
        return f", {bg} background"
    return " " + _pick(rng, (f"on a {bg} background", f"against a {bg} background"))


def caption(
    spec: SceneSpec, rng: np.random.Generator, mode: CaptionMode = "mixed", with_background: bool = False
) -> str:
    """A random caption of the scene.

    Args:
        spec: the scene.
        rng: the only source of randomness (template, synonyms, which attributes are kept).
        mode: "full" states every attribute of every object, the relation (two objects) and the
            background; "partial" keeps a random subset (possibly no shape: "something green");
            "mixed" is full 35 % of the time, partial otherwise; "canonical" is :func:`describe`.
        with_background: always name the background (otherwise "full" captions and a random
            20 % of the others do). The random draws are the same either way.

    Returns:
        The caption; ``parse_caption`` recovers what it pins.
    """
    if mode == "canonical":
        return describe(spec)
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode {mode!r} is not one of {list(CAPTION_MODES)}")
    full = mode == "full" or (mode == "mixed" and rng.uniform() < 0.35)
    keeps = _keep_sets(spec, rng, full)
    with_bg = full or rng.uniform() < 0.2 or with_background
    n = len(spec.objects)
    shapes = {o.shape for o in spec.objects}
    # Counting template ("two red stars"): only when what it says is true of every object.
    if not full and n > 1 and len(shapes) == 1 and rng.uniform() < 0.3:
        shared = {"shape"} | {
            a for a in ("color", "size", "fill") if len({getattr(o, a) for o in spec.objects}) == 1
        }
        keep = {a for a in shared if a == "shape" or rng.uniform() < 0.5}
        text = ("two " if n == 2 else "three ") + _noun_phrase(spec.objects[0], keep, rng, plural=True)
        return text + (_background_phrase(spec.background, rng, False) if with_bg else "")
    # Terse list style ("red star, top left; blue circle") only when every object keeps its noun.
    list_style = all("shape" in k for k in keeps) and rng.uniform() < 0.2
    list_style &= not (full and spec.relation is not None)  # "full" always states the relation
    order = list(range(n))
    if n == 2 and spec.relation is not None and (full or rng.uniform() < 0.5) and not list_style:
        a, b, rel = 0, 1, spec.relation
        if rng.uniform() < 0.5:
            a, b, rel = 1, 0, _INVERSE[rel]
        first = _mention_text(spec.objects[a], keeps[a], rng, False)
        second = _mention_text(spec.objects[b], keeps[b], rng, False)
        # "... in the bottom right right of ..." reads badly: after a position, say "to the right of".
        words = RELATION_WORDS[rel][:1] if "position" in keeps[a] else RELATION_WORDS[rel]
        text = f"{first} {_pick(rng, words)} {second}"
        if with_bg:
            text += ("," if "position" in keeps[b] else "") + _background_phrase(spec.background, rng, False)
        return text
    rng.shuffle(order)
    parts = [_mention_text(spec.objects[i], keeps[i], rng, list_style) for i in order]
    if list_style:
        text = "; ".join(parts)
    elif n == 1:
        text = parts[0]
        if rng.uniform() < 0.3:
            text = _pick(rng, _PREFIXES[:4]) + " " + text
    elif n == 2:
        text = f"{parts[0]} and {parts[1]}"
    else:
        text = f"{parts[0]}, {parts[1]}{_pick(rng, (',', ''))} and {parts[2]}"
    if n > 1 and not list_style and rng.uniform() < 0.4:
        count = "two" if n == 2 else "three"
        text = _pick(rng, (f"{count} shapes: ", f"{count} objects: ", f"there are {count} shapes: ")) + text
    if with_bg:
        comma = not list_style and (n > 1 or "position" in keeps[0])
        text += ("," if comma else "") + _background_phrase(spec.background, rng, list_style)
    return text


def describe(spec: SceneSpec) -> str:
    """The canonical full caption: every attribute, the relation and the background, fixed wording."""

    def one(o: ObjectSpec) -> str:
        return _article(_noun_phrase(o, set(ATTRIBUTES), None)) + " " + _position_phrase(o.position, None)

    objs = [one(o) for o in spec.objects]
    if len(objs) == 1:
        text = objs[0]
    elif spec.relation is not None:
        text = f"{objs[0]} {RELATION_WORDS[spec.relation][0]} {objs[1]}"
    elif len(objs) == 2:
        text = f"two shapes: {objs[0]} and {objs[1]}"
    else:
        text = f"three shapes: {objs[0]}, {objs[1]} and {objs[2]}"
    return f"{text}, on a {spec.background} background"


# ----------------------------------------------------------------------------------------------
# Parsing


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_BG_RE = re.compile(
    rf"(?:\s*[,;]?\s*(?:on|against|over) (?:a |an |the )?|\s*[,;]\s*|^)({_alternation(BACKGROUNDS)}) background\b"
)
_COUNT_RE = re.compile(
    r"^(?:there are |there is )?(one|two|three|1|2|3) (?:shapes|objects|things)\s*[:,]?\s*"
)
_REL_TABLE = {w: r for r, ws in RELATION_WORDS.items() for w in ws}
_REL_RE = re.compile(rf"\s(?:{_alternation(_REL_TABLE)})\s")
_POS_WORDS = (
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "middle",
)
_POS_RE = re.compile(
    rf"(?:(?:in|at|on|near) (?:the )?)?\b({_alternation(_POS_WORDS)})(?: corner| side| edge)?\b"
)
_LOOKUP: dict[str, tuple[str, str]] = {}
for _attr, _table in (
    ("size", SIZE_WORDS),
    ("fill", FILL_WORDS),
    ("color", COLOR_WORDS),
    ("shape", SHAPE_WORDS),
):
    for _value, _words in _table.items():
        for _w in _words:
            _LOOKUP[_w] = (_attr, _value)
            if _attr == "shape":
                _LOOKUP[_PLURAL.get(_w, _w + "s")] = (_attr, _value)
_NOUNS = {*GENERIC_NOUNS, *(_PLURAL.get(w, w + "s") for w in GENERIC_NOUNS), "something"}
_FILLER = {"a", "an", "the"}
_WORD_RE = re.compile(rf"{_alternation([w for w in _LOOKUP if ' ' in w])}|[a-z]+")


def _normalise(text: str) -> str:
    t = text.lower().strip().rstrip(".!")
    t = t.replace("grey", "gray").replace("centre", "center").replace("-", " ")
    t = re.sub(r"\bupper\b", "top", re.sub(r"\blower\b", "bottom", t))
    return re.sub(r"\s+", " ", t)


def _parse_chunk(chunk: str, where: str) -> tuple[dict[str, str], bool]:
    """Attributes pinned by one text chunk, and whether it names an object (noun or article)."""
    attrs: dict[str, str] = {}
    m = _POS_RE.search(chunk)
    if m:
        word = m.group(1)
        attrs["position"] = "center" if word == "middle" else word
        chunk = chunk[: m.start()] + " " + chunk[m.end() :]
    is_object = False
    for w in _WORD_RE.findall(chunk):
        if w in _FILLER or w in _NOUNS:
            is_object = True
            continue
        if w not in _LOOKUP:
            raise UserError(f"caption word {w!r} is not in the shapes vocabulary (in {where!r})")
        attr, value = _LOOKUP[w]
        if attrs.get(attr, value) != value:
            raise UserError(f"caption gives two values for {attr} in {where!r}")
        attrs[attr] = value
        is_object |= attr == "shape"
    return attrs, is_object


def _parse_list(text: str, where: str) -> list[Mention]:
    mentions: list[dict[str, str]] = []
    for chunk in re.split(r"\s*;\s*|\s*,\s*(?:and\s+)?|\s+and\s+", text):
        if not chunk.strip():
            continue
        attrs, is_object = _parse_chunk(chunk, where)
        if is_object or not mentions:
            mentions.append(attrs)
            continue
        # A chunk with no noun ("top left" in "red star, top left") qualifies the previous object.
        for k, v in attrs.items():
            if mentions[-1].get(k, v) != v:
                raise UserError(f"caption gives two values for {k} in {where!r}")
            mentions[-1][k] = v
    return [Mention(**m) for m in mentions]


def parse_caption(text: str) -> CaptionSpec:
    """Recover what a caption pins down.

    Args:
        text: a caption in the shapes vocabulary (any template of :func:`caption`, or a prompt
            written the same way).

    Returns:
        A :class:`CaptionSpec`; unspecified attributes are ``None``.

    Raises:
        UserError: words outside the vocabulary, contradictions, or a count that does not match
            the objects listed.
    """
    t = _normalise(text)
    background = None
    m = _BG_RE.search(t)
    if m:
        background = m.group(1)
        t = (t[: m.start()] + t[m.end() :]).strip(" ,;")
    for prefix in _PREFIXES[:3]:
        if t.startswith(prefix + " "):
            t = t[len(prefix) + 1 :]
    declared = None
    m = _COUNT_RE.match(t)
    if m:
        declared = _NUMBERS[m.group(1)]
        t = t[m.end() :]
    for prefix in _PREFIXES[3:]:
        if t.startswith(prefix + " "):
            t = t[len(prefix) + 1 :]
    m = re.match(r"^(two|three|2|3) (.+)$", t)
    if declared is None and m and "," not in t and " and " not in t and not _REL_RE.search(f" {t} "):
        # Counting template: "two red stars" = that many identical mentions.
        (mention,) = _parse_list(m.group(2), text)
        return CaptionSpec((mention,) * _NUMBERS[m.group(1)], None, background, text)  # type: ignore[arg-type]
    relation = None
    m = _REL_RE.search(t)
    if m:
        left, right = _parse_list(t[: m.start()], text), _parse_list(t[m.end() :], text)
        if len(left) != 1 or len(right) != 1:
            raise UserError(f"a relation needs one object on each side: {text!r}")
        mentions = [*left, *right]
        relation = (0, _REL_TABLE[m.group(0).strip()], 1)
    else:
        mentions = _parse_list(t, text) if t.strip() else []
    if declared is not None and not mentions:
        mentions = [Mention()] * declared  # "two shapes": that many objects, nothing else pinned
    if not mentions:
        raise UserError(f"caption names no object: {text!r}")
    if declared is not None and declared != len(mentions):
        raise UserError(f"caption says {declared} objects but lists {len(mentions)}: {text!r}")
    if len(mentions) > 3:
        raise UserError(f"the shapes world has at most 3 objects per scene: {text!r}")
    return CaptionSpec(tuple(mentions), relation, background, text)  # type: ignore[arg-type]


def mention_matches(mention: Mention, attributes: dict[str, str]) -> bool:
    """Whether an object's attributes satisfy every attribute the mention pins."""
    return all(attributes.get(k) == v for k, v in mention.constraints().items())
