"""The pixel oracle: read a shapes scene back from an image, and score an image against a caption.

Pipeline (pixels only, no access to the spec):

1. background: a plane fitted to the border pixels (robust to an object touching the edge);
2. foreground: pixels far from the background (on a lightly smoothed copy when the border is
   noisy), split into 8-connected blobs; blobs smaller than a quarter of the smallest outline's
   paint are noise;
3. colour: the ray from the background through the blob's most distinct pixels, named by the
   nearest colour range (``colors.name_color``);
4. coverage: each pixel's projection on that colour, a soft mask with anti-aliased edges;
5. shape and fill: nearest template of the rotation-aware bank (``bank.classify``);
6. size from the true radius implied by the template, position from the coverage centroid.

:func:`score` matches what a caption asks for to what was read, per attribute, jointly (binding),
for the relation, the count and the background.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from unclip.data.shapes.bank import bank, classify, nearest_level, paint_fraction
from unclip.data.shapes.captions import CaptionSpec, Mention, mention_matches, parse_caption
from unclip.data.shapes.colors import name_background
from unclip.data.shapes.scene import SceneSpec
from unclip.data.shapes.segment import find_components, fit_background, to_float_image
from unclip.data.shapes.vocab import ATTRIBUTES, SHAPES, SIZE_RADIUS, position_name, relation_holds

# Small/large boundary: the geometric mean of the largest small and the smallest large radius.
SIZE_THRESHOLD = math.sqrt(SIZE_RADIUS["small"][1] * SIZE_RADIUS["large"][0])
MAX_READINGS = 8  # matching considers at most this many blobs (largest first)


@dataclasses.dataclass(frozen=True)
class ObjectReading:
    """One object as read from pixels.

    Attributes:
        shape, color, size, fill, position: the named attributes.
        x, y: centre in canvas units (y down); ``radius`` equal-area radius in canvas units.
        rotation: degrees clockwise, modulo the shape's symmetry period.
        rgb: the estimated pure colour, 8-bit.
        area: painted area as a fraction of the image.
        distance: RMS distance to the best template (0 = perfect); ``margin`` the gap to the best
            template of another (shape, fill): small margins mean an uncertain reading.
    """

    shape: str
    color: str
    size: str
    fill: str
    position: str
    x: float
    y: float
    radius: float
    rotation: float
    rgb: tuple[int, int, int]
    area: float
    distance: float
    margin: float

    def attributes(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rgb"] = list(self.rgb)
        return d


def read_scene(image: Any, min_area: float | None = None) -> list[ObjectReading]:
    """Read every object of a shapes image.

    Args:
        image: PIL image, array (H, W, 3) (uint8, or float in [0, 1]) or tensor (3, H, W) in
            [-1, 1]. Square images are expected (positions are fractions of the side).
        min_area: blobs with fewer foreground pixels are ignored; by default a quarter of the
            paint of the smallest outlined object.

    Returns:
        Readings sorted top-to-bottom, then left-to-right.
    """
    img = to_float_image(image)
    h, w, _ = img.shape
    side = float(min(h, w))
    if min_area is None:
        min_area = max(3.0, 0.25 * math.pi * (SIZE_RADIUS["small"][0] * side) ** 2 * 0.5)
    bg = fit_background(img)
    readings = []
    for comp in find_components(img, bg, min_area):
        m = classify(comp)
        others = [d for k, d in m.per_class.items() if k != (m.shape, m.fill)]
        radius = m.radius / side
        x, y = comp.cx / w, comp.cy / h
        readings.append(
            ObjectReading(
                shape=m.shape,
                color=comp.color,
                size="small" if radius < SIZE_THRESHOLD else "large",
                fill=m.fill,
                position=position_name(x, y),
                x=x,
                y=y,
                radius=radius,
                rotation=m.rotation,
                rgb=tuple(round(float(c)) for c in np.clip(comp.rgb, 0.0, 1.0) * 255.0),  # type: ignore[arg-type]
                area=comp.area / (h * w),
                distance=m.distance,
                margin=(min(others) - m.distance) if others else float("inf"),
            )
        )
    readings.sort(key=lambda r: (int(r.y * 3), int(r.x * 3), r.y, r.x))
    return readings


def prepare(size: int) -> None:
    """Build the template-bank rungs that images of ``size`` pixels use (otherwise built lazily).

    Call before timing the oracle; the first reads at a new size otherwise pay ~50 ms per rung.
    """
    lo = SIZE_RADIUS["small"][0] * size * math.sqrt(min(paint_fraction(s, "outline") for s in SHAPES))
    hi = SIZE_RADIUS["large"][1] * size
    for level in range(nearest_level(lo * 0.9), nearest_level(hi * 1.1) + 1):
        bank(level)


def read_background(image: Any) -> str:
    """Name of the background colour (from a plane fitted to the border pixels)."""
    return name_background(fit_background(to_float_image(image)).rgb)


def _best_assignment(
    mentions: tuple[Mention, ...], readings: list[ObjectReading], relation: tuple[int, str, int] | None
) -> tuple[list[int | None], int, bool]:
    """Injective mention -> reading assignment maximising satisfied constraints (then relation)."""
    n, m = len(mentions), len(readings)
    slots: list[int | None] = list(range(m)) + [None] * n
    best: tuple[int, int] = (-1, -1)
    best_assign: list[int | None] = [None] * n
    best_rel = False
    attrs = [r.attributes() for r in readings]
    for perm in itertools.permutations(slots, n):
        if len({p for p in perm if p is not None}) != sum(p is not None for p in perm):
            continue
        hits = sum(
            sum(attrs[p].get(k) == v for k, v in mt.constraints().items()) + 1
            for mt, p in zip(mentions, perm)
            if p is not None
        )
        rel_ok = False
        if relation is not None:
            i, rel, j = relation
            a, b = perm[i], perm[j]
            if a is not None and b is not None:
                rel_ok = relation_holds((readings[a].x, readings[a].y), (readings[b].x, readings[b].y), rel)  # type: ignore[arg-type]
        key = (hits, int(rel_ok))
        if key > best:
            best, best_assign, best_rel = key, list(perm), rel_ok
    return best_assign, best[0], best_rel


def _max_matching(mentions: list[Mention], readings: list[ObjectReading], attr: str) -> int:
    """How many mentions can get a distinct reading with the right value of one attribute."""
    wanted = [getattr(mt, attr) for mt in mentions]
    have = [getattr(r, attr) for r in readings]
    best = 0
    for perm in itertools.permutations(range(len(have)), min(len(wanted), len(have))):
        best = max(best, sum(wanted[k] == have[p] for k, p in enumerate(perm)))
    return best


def score(
    image: Any,
    target: SceneSpec | CaptionSpec | str,
    readings: list[ObjectReading] | None = None,
) -> dict[str, Any]:
    """Score an image against a scene spec, a caption, or a parsed caption.

    Args:
        image: anything :func:`read_scene` accepts.
        target: a :class:`SceneSpec` (every attribute is checked), a caption string (parsed with
            ``parse_caption``; only what it pins is checked) or a :class:`CaptionSpec`.
        readings: reuse readings already made for this image.

    Returns:
        A dict with, per attribute (shape, color, size, fill, position): ``True``/``False`` when
        the caption pins it (every pinning mention can be given a distinct object with that
        value, checked attribute by attribute) or ``None``; ``count`` (exactly as many objects as
        mentions); ``binding`` (one assignment of objects to mentions satisfies every pinned
        attribute at once; ``None`` for a single mention); ``relation`` and ``background``
        (``None`` when not stated); ``all_correct`` (count, binding, relation and background all
        hold); ``hits``/``total`` (satisfied/pinned attributes under the best joint assignment);
        ``assignment`` (reading index per mention, or ``None``) and ``readings``.
    """
    if isinstance(target, SceneSpec):
        spec = CaptionSpec.from_scene(target)
    elif isinstance(target, str):
        spec = parse_caption(target)
    else:
        spec = target
    if readings is None:
        readings = read_scene(image)
    considered = sorted(readings, key=lambda r: -r.area)[:MAX_READINGS]
    mentions = spec.mentions
    out: dict[str, Any] = {}
    for attr in ATTRIBUTES:
        pinned = [mt for mt in mentions if getattr(mt, attr) is not None]
        out[attr] = None if not pinned else _max_matching(pinned, considered, attr) == len(pinned)
    assignment, _, rel_ok = _best_assignment(mentions, considered, spec.relation)
    total = sum(len(mt.constraints()) for mt in mentions)
    hits = sum(
        mention_matches(mt, considered[p].attributes())
        for mt, p in zip(mentions, assignment)
        if p is not None
    )
    hit_attrs = sum(
        sum(considered[p].attributes()[k] == v for k, v in mt.constraints().items())
        for mt, p in zip(mentions, assignment)
        if p is not None
    )
    bound = hits == len(mentions)  # every mention got an object satisfying all its constraints
    out["count"] = len(readings) == len(mentions)
    out["binding"] = bound if len(mentions) > 1 else None
    out["relation"] = rel_ok if spec.relation is not None else None
    out["background"] = None if spec.background is None else read_background(image) == spec.background
    out["all_correct"] = bool(
        out["count"] and bound and out["relation"] is not False and out["background"] is not False
    )
    out["hits"], out["total"] = hit_attrs, total
    index = {id(r): k for k, r in enumerate(readings)}
    out["assignment"] = [None if p is None else index[id(considered[p])] for p in assignment]
    out["readings"] = readings
    return out
