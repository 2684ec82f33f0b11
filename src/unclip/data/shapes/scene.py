"""Scene specs (frozen, JSON round-trippable) and the scene sampler with held-out rejection.

A :class:`SceneSpec` is the exact ground truth of one image: it renders identically at any size,
captions are generated from it, and the oracle is scored against it. Sampling is a pure function of
a ``numpy.random.Generator``, so a seed reproduces a scene everywhere.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unclip.data.shapes import geometry
from unclip.data.shapes.vocab import (
    ATTRIBUTES,
    BACKGROUND_HSV,
    BACKGROUNDS,
    CANVAS_MARGIN,
    CELL_MARGIN,
    COLOR_HSV,
    COLORS,
    FILLS,
    HELD_OUT,
    OBJECT_GAP,
    POSITIONS,
    RELATION_DOMINANCE,
    RELATION_MIN_OFFSET,
    RELATIONS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    TEXTURE_STRENGTH,
    TEXTURES,
    VOCAB_VERSION,
    Background,
    Color,
    Fill,
    HeldOutRule,
    HSVRange,
    Position,
    Relation,
    Shape,
    Size,
    Split,
    Texture,
    position_cell,
    position_name,
)

RGB = tuple[int, int, int]

# Rotation never changes what a person would call the shape: hearts and diamonds stay roughly
# upright (an upside-down heart or a lying rhombus reads as another glyph) and squares stay within
# 25 degrees of level (a square at 45 degrees is what people call a diamond). The oracle reads every
# rotation either way.
_ROTATION_RANGE: dict[str, tuple[float, float]] = {
    "heart": (-45.0, 45.0),
    "diamond": (-20.0, 20.0),
    "square": (-25.0, 25.0),
}
_NUM_OBJECTS_P = (0.4, 0.35, 0.25)  # P(1), P(2), P(3) objects when not asked for


def _check(value: Any, allowed: Sequence[Any], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {list(allowed)}")


def _check_rgb(rgb: Any, what: str) -> None:
    if not (
        isinstance(rgb, tuple)
        and len(rgb) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb)
    ):
        raise ValueError(f"{what} must be three integers in 0..255, got {rgb!r}")


def _strict_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(n for n in names - set(data) if n != "version")
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One object. Positions and radius are in canvas units (canvas = unit square, y down).

    Attributes:
        shape, color, size, fill: the named attributes (closed sets from ``vocab``).
        x, y: centre of the shape's area, in [0, 1].
        rotation: degrees, clockwise on screen.
        rgb: the exact colour drawn, inside ``color``'s range.
        radius: radius of the equal-area circle, inside ``size``'s range.
    """

    shape: Shape
    color: Color
    size: Size
    fill: Fill
    x: float
    y: float
    rotation: float
    rgb: RGB
    radius: float

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.color, COLORS, "color")
        _check(self.size, SIZES, "size")
        _check(self.fill, FILLS, "fill")
        _check_rgb(self.rgb, "rgb")
        for name in ("x", "y", "rotation", "radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0 and 0.0 < self.radius < 0.5):
            raise ValueError(f"object outside the canvas: x={self.x}, y={self.y}, radius={self.radius}")

    @property
    def position(self) -> Position:
        """The 3x3 grid name of the centre ("top left", ..., "center", ...)."""
        return position_name(self.x, self.y)

    @property
    def extent(self) -> float:
        """Circumradius in canvas units: the object never reaches beyond this from (x, y)."""
        return geometry.circumradius(self.shape) * self.radius

    @property
    def half_extents(self) -> tuple[float, float]:
        """Half width and half height of the rotated shape's bounding box, canvas units."""
        hx, hy = geometry.half_extents(self.shape, self.rotation)
        return hx * self.radius, hy * self.radius

    def attributes(self) -> dict[str, str]:
        """The five named attributes, e.g. ``{"shape": "star", ..., "position": "top left"}``."""
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rgb"] = list(self.rgb)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectSpec:
        _strict_keys(data, cls, "ObjectSpec")
        d = dict(data)
        d["rgb"] = tuple(d["rgb"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """A whole scene: 1-3 objects on a background.

    Attributes:
        objects: the objects, in caption order.
        background: background colour name; ``bg_rgb`` its exact colour.
        relation: for two-object scenes, ``objects[0] <relation> objects[1]`` holds geometrically;
            ``None`` otherwise.
        texture: "plain", a linear "gradient" or per-pixel "noise" of ``texture_strength``
            (fraction of full scale), drawn from ``texture_seed``.
        version: vocabulary version the scene was made with.
    """

    objects: tuple[ObjectSpec, ...]
    background: Background
    bg_rgb: RGB
    relation: Relation | None = None
    texture: Texture = "plain"
    texture_strength: float = 0.0
    texture_seed: int = 0
    version: int = VOCAB_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise ValueError("objects must be a tuple of ObjectSpec")
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"a scene has 1-3 objects, got {len(self.objects)}")
        _check(self.background, BACKGROUNDS, "background")
        _check_rgb(self.bg_rgb, "bg_rgb")
        _check(self.texture, TEXTURES, "texture")
        if self.relation is not None:
            _check(self.relation, RELATIONS, "relation")
            if len(self.objects) != 2:
                raise ValueError("a relation needs exactly two objects")
        if self.version != VOCAB_VERSION:
            raise ValueError(f"scene vocabulary version {self.version} is not {VOCAB_VERSION}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``SceneSpec.from_dict(s.to_dict()) == s`` exactly."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["objects"] = [o.to_dict() for o in self.objects]
        d["bg_rgb"] = list(self.bg_rgb)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SceneSpec:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        _strict_keys(data, cls, "SceneSpec")
        d = dict(data)
        d["objects"] = tuple(ObjectSpec.from_dict(o) for o in d["objects"])
        d["bg_rgb"] = tuple(d["bg_rgb"])
        return cls(**d)


def held_out_rules(spec: SceneSpec) -> list[HeldOutRule]:
    """The held-out rules the scene matches (empty for every training scene)."""
    hits = []
    for rule in HELD_OUT:
        if rule.background is not None and rule.background != spec.background:
            continue
        want = rule.object_attributes()
        if any(all(o.attributes()[k] == v for k, v in want.items()) for o in spec.objects):
            hits.append(rule)
    return hits


def is_held_out(spec: SceneSpec) -> bool:
    """True when any object (with the scene's background) matches a :data:`HELD_OUT` rule."""
    return bool(held_out_rules(spec))


def sample_hsv(rng: np.random.Generator, hsv: HSVRange) -> RGB:
    """A uniformly jittered colour inside an HSV range, as 8-bit RGB."""
    (h0, h1), (s0, s1), (v0, v1) = hsv
    h = (rng.uniform(h0, h1) % 360.0) / 360.0
    s, v = rng.uniform(s0, s1), rng.uniform(v0, v1)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _cell_interval(index: int, extent: float) -> tuple[float, float]:
    """Centre coordinates inside grid column/row ``index`` that keep ``extent`` inside the canvas."""
    lo = max(index / 3.0 + CELL_MARGIN, extent + CANVAS_MARGIN)
    hi = min((index + 1) / 3.0 - CELL_MARGIN, 1.0 - extent - CANVAS_MARGIN)
    return lo, hi


def _relation_with_margin(a: ObjectSpec, b: ObjectSpec) -> Relation | None:
    dx, dy = b.x - a.x, b.y - a.y
    for rel, main, cross in (
        ("left of", dx, dy),
        ("right of", -dx, dy),
        ("above", dy, dx),
        ("below", -dy, dx),
    ):
        if main >= max(RELATION_MIN_OFFSET + RELATION_DOMINANCE, abs(cross) + RELATION_DOMINANCE):
            return rel  # type: ignore[return-value]
    return None


def _pick(rng: np.random.Generator, options: Sequence[str], fixed: str | None) -> str:
    return fixed if fixed is not None else options[int(rng.integers(len(options)))]


def _sample_object(rng: np.random.Generator, want: Mapping[str, str]) -> ObjectSpec:
    """Attributes, colour, radius and rotation; the position is a placeholder until placed."""
    shape = _pick(rng, SHAPES, want.get("shape"))
    color = _pick(rng, COLORS, want.get("color"))
    size = _pick(rng, SIZES, want.get("size"))
    fill = _pick(rng, FILLS, want.get("fill"))
    radius = round(float(rng.uniform(*SIZE_RADIUS[size])), 4)  # type: ignore[index]
    lo, hi = _ROTATION_RANGE.get(shape, (0.0, 360.0))
    rot = round(float(rng.uniform(lo, hi)), 2)
    rgb = sample_hsv(rng, COLOR_HSV[color])  # type: ignore[index]
    return ObjectSpec(shape, color, size, fill, 0.5, 0.5, rot, rgb, radius)  # type: ignore[arg-type]


def _pose(o: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    th = math.radians(o.rotation)
    c, s = math.cos(th), math.sin(th)
    return np.array([[c, -s], [s, c]]), np.array([o.x, o.y])


def gap(a: ObjectSpec, b: ObjectSpec, stop_below: float = -np.inf) -> float:
    """Distance between two objects' outlines in canvas units (<= 0 when they overlap).

    Measured as the smallest signed distance of each outline's sample points to the other shape
    (points every 0.08 radii, all vertices included). Returns early once below ``stop_below``.
    """
    out = np.inf
    for p, q in ((a, b), (b, a)):
        rp, tp = _pose(p)
        rq, tq = _pose(q)
        # p's template points -> canvas -> q's template frame (rotation inverse = transpose).
        local = ((geometry.boundary_points(p.shape) @ rp.T) * p.radius + (tp - tq)) @ rq / q.radius
        out = min(out, float(geometry.sdf(q.shape, local[:, 0], local[:, 1]).min()) * q.radius)
        if out < stop_below:
            break
    return out


def _apart(obj: ObjectSpec, others: Sequence[ObjectSpec]) -> bool:
    """Whether ``obj`` keeps OBJECT_GAP from every other object."""
    for o in others:
        d = math.hypot(obj.x - o.x, obj.y - o.y)
        if d >= obj.extent + o.extent + OBJECT_GAP:
            continue  # circumcircles apart: cheap and usually decisive
        inner = geometry.inradius(obj.shape) * obj.radius + geometry.inradius(o.shape) * o.radius
        if d < inner + OBJECT_GAP:
            return False  # the inscribed disks are already too close
        if gap(obj, o, stop_below=OBJECT_GAP) < OBJECT_GAP:
            return False
    return True


_CELLS: dict[str, tuple[int, int]] = {p: position_cell(p) for p in POSITIONS}  # type: ignore[arg-type]
_PLACE_TRIES = 4


def _place(
    rng: np.random.Generator, obj: ObjectSpec, cell: str, placed: Sequence[ObjectSpec]
) -> ObjectSpec | None:
    """The object moved to a random free spot of a grid cell, or None if none was found."""
    row, col = _CELLS[cell]
    hx, hy = obj.half_extents  # the canvas bound uses the real box: a tall diamond is narrow
    (x0, x1), (y0, y1) = _cell_interval(col, hx), _cell_interval(row, hy)
    if x0 > x1 or y0 > y1:
        return None
    # All tries drawn at once: this loop runs ~20 times per scene, numpy call overhead dominates.
    u = rng.uniform(size=(_PLACE_TRIES, 2))
    xs = np.round(x0 + u[:, 0] * (x1 - x0), 4)
    ys = np.round(y0 + u[:, 1] * (y1 - y0), 4)
    for x, y in zip(xs.tolist(), ys.tolist()):
        moved = dataclasses.replace(obj, x=x, y=y)
        if _apart(moved, placed):
            return moved
    return None


def _layout(
    rng: np.random.Generator,
    objs: Sequence[ObjectSpec],
    wants: Sequence[Mapping[str, str]],
    relation: Relation | None,
) -> tuple[list[ObjectSpec], Relation | None] | None:
    # Several layouts per attribute draw: rejecting the whole scene on a failed layout would make
    # large objects (which fit in fewer layouts) rarer than small ones in busy scenes.
    for _ in range(25):
        placed: list[ObjectSpec] = []
        # Distinct cells drawn up front keep the 3x3 positions close to uniform in busy scenes.
        for obj, cell in zip(objs, _cells(rng, wants)):
            moved = _place(rng, obj, cell, placed)
            if moved is None:
                break
            placed.append(moved)
        if len(placed) != len(objs):
            continue
        if len(objs) != 2:
            return placed, None
        rel = _relation_with_margin(placed[0], placed[1])
        if rel is not None and relation in (None, rel):
            return placed, rel
    return None


# Cell weights when drawing distinct cells for a multi-object scene: the centre cell conflicts with
# every neighbour, so layouts through it fail more often; the extra weight (measured) brings its
# share of objects from ~5 % back to ~10 %.
_CENTER_WEIGHT = 1.5


def _cells(rng: np.random.Generator, wants: Sequence[Mapping[str, str]]) -> list[str]:
    """One grid cell per object: the asked one, else a random cell no other object has."""
    taken = {w["position"] for w in wants if "position" in w}
    free = [p for p in POSITIONS if p not in taken]
    weights = np.array([_CENTER_WEIGHT if p == "center" and len(wants) > 1 else 1.0 for p in free])
    count = sum("position" not in w for w in wants)
    # Weighted sampling without replacement (Gumbel top-k: much cheaper than rng.choice with p).
    picks = np.argsort(-(np.log(weights) - np.log(-np.log(rng.uniform(size=len(free))))))[:count]
    out, k = [], 0
    for w in wants:
        if "position" in w:
            out.append(w["position"])
        else:
            out.append(free[int(picks[k % len(picks)])])
            k += 1
    return out


def sample_scene(
    rng: np.random.Generator,
    split: Split = "train",
    num_objects: int | None = None,
    *,
    objects: Sequence[Mapping[str, str]] | None = None,
    background: Background | None = None,
    relation: Relation | None = None,
    texture_prob: float = 0.3,
    max_tries: int = 10_000,
) -> SceneSpec:
    """Sample a random scene.

    Args:
        rng: the only source of randomness; the same generator state gives the same scene.
        split: "train" rejects every held-out combination; "heldout" puts one held-out rule on one
            object (others random); "any" applies no rule.
        num_objects: 1, 2 or 3; random (40/35/25 %) when ``None``.
        objects: optional per-object attribute constraints, e.g. ``[{"shape": "star"}, {}]``
            (keys: shape, color, size, fill, position); sets ``num_objects`` when given.
        background: fix the background name.
        relation: for two objects, require ``objects[0] <relation> objects[1]``.
        texture_prob: probability of a gradient or noise texture on the background.
        max_tries: give up (ValueError) after this many rejected layouts; only impossible
            constraints get there.

    Returns:
        A :class:`SceneSpec`; for two objects its ``relation`` always holds with a margin.
    """
    if objects is not None:
        if num_objects is not None and num_objects != len(objects):
            raise ValueError(f"num_objects={num_objects} but {len(objects)} object constraints")
        num_objects = len(objects)
    if num_objects is None:
        num_objects = int(rng.choice(3, p=_NUM_OBJECTS_P)) + 1
    if not 1 <= num_objects <= 3:
        raise ValueError(f"num_objects must be 1, 2 or 3, got {num_objects}")
    if relation is not None and num_objects != 2:
        raise ValueError("a relation needs exactly two objects")
    _check(split, ("train", "heldout", "any"), "split")
    wants = [dict(w) for w in (objects or [{} for _ in range(num_objects)])]
    for w in wants:
        for k, v in w.items():
            _check(k, ATTRIBUTES, "attribute")
            _check(v, {"shape": SHAPES, "color": COLORS, "size": SIZES, "fill": FILLS}.get(k, POSITIONS), k)
    if split == "heldout":
        rule = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
        k = int(rng.integers(num_objects))
        for a, v in rule.object_attributes().items():
            if wants[k].get(a, v) != v:
                raise ValueError(f"constraint {a}={wants[k][a]!r} conflicts with held-out rule {rule.name!r}")
            wants[k][a] = v
        if rule.background is not None:
            if background not in (None, rule.background):
                raise ValueError(f"background {background!r} conflicts with held-out rule {rule.name!r}")
            background = rule.background
    for _ in range(max_tries):
        bg = _pick(rng, BACKGROUNDS, background)
        laid = _layout(rng, [_sample_object(rng, w) for w in wants], wants, relation)
        if laid is None:
            continue
        placed, rel = laid
        texture: Texture = "plain"
        if rng.uniform() < texture_prob:
            texture = "gradient" if rng.uniform() < 0.5 else "noise"
        strength = round(float(rng.uniform(*TEXTURE_STRENGTH[texture])), 4)
        spec = SceneSpec(
            objects=tuple(placed),
            background=bg,  # type: ignore[arg-type]
            bg_rgb=sample_hsv(rng, BACKGROUND_HSV[bg]),  # type: ignore[index]
            relation=rel,
            texture=texture,
            texture_strength=strength,
            texture_seed=int(rng.integers(2**31)),
        )
        if split == "train" and is_held_out(spec):
            continue
        return spec
    raise ValueError(f"could not place the requested scene in {max_tries} tries; constraints too tight?")
