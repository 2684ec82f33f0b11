"""Rotation-aware template bank that reads shape and fill from a blob's coverage.

A blob's soft coverage (its paint: the whole shape if solid, the stroke if outlined) is resampled
into a normalised frame (centred on its centroid, scaled by its equal-area radius), which removes
position and size. Rotation is handled by brute force: the bank holds every (shape, fill) at many
rotations over its symmetry period, sharp and blurred, and the nearest entry (L2) names both. The
bank is rendered with the same SDF coverage as the scenes, at a ladder of pixel radii, so the blur
of a 3-pixel star at 32 px is compared with a 3-pixel star, not a crisp one. Each rung is built on
first use (0.2-1 s of CPU) and cached for the process.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np

from unclip.data.shapes import geometry
from unclip.data.shapes.render import object_coverage
from unclip.data.shapes.segment import FG_THRESHOLD, Component, dilate, normalised_patch, quantile
from unclip.data.shapes.vocab import SHAPES

GRID = 28  # normalised frame is GRID x GRID samples ...
EXTENT = 2.3  # ... covering +-EXTENT paint radii (an outlined triangle reaches 2.1)
ROTATIONS_PER_PERIOD = 24  # rotation step = symmetry period / 24 (3 degrees for the star)
# Paint radii in pixels of the bank's rungs (geometric ladder); a blob uses the nearest rung.
# Above ~18 px a grid cell spans several pixels and the pixel blur no longer shows in the
# normalised patch, so bigger blobs share the top rung (and large rungs stay cheap to build).
LEVELS: tuple[float, ...] = tuple(round(2.0 * 1.25**k, 3) for k in range(11))
FILLS: tuple[str, ...] = ("solid", "outline")
# Each template is also stored blurred: generated images, JPEG and resampling soften edges, and a
# soft circle must still be nearer a circle than a square. (fraction of the radius, floor in px)
# per variant, sigma = max(floor, fraction * radius); relative blur matters at 128 px, the floor at
# 32 px. Measured on blurred renders: circle/square confusions drop from 3-4 % to under 1 %.
BLURS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.08, 0.5), (0.16, 1.0))


@cache
def paint_fraction(shape: str, fill: str) -> float:
    """Painted area / full shape area: 1 for solid, the stroke's share for outlines."""
    if fill == "solid":
        return 1.0
    size = 160
    solid, _ = object_coverage(shape, "solid", 0.5, 0.5, 0.3, 0.0, size)
    ring, _ = object_coverage(shape, "outline", 0.5, 0.5, 0.3, 0.0, size)
    return float(ring.sum() / solid.sum())


def _rotations(shape: str) -> np.ndarray:
    order = geometry.SYMMETRY[shape]
    if order == 0:
        return np.zeros(1)
    period = 360.0 / order
    steps = ROTATIONS_PER_PERIOD * (3 if order == 1 else 1)  # heart: 5 degree steps
    return np.arange(steps) * (period / steps)


# The bank emulates how segment.find_components measures coverage (only pixels above the threshold
# plus a one-pixel rim, scaled so the most covered tenth reads 1), so it carries the pipeline's own
# biases (a 1-px stroke reads thicker than it is) and each entry knows the true radius behind its
# measured paint radius. Emulating instead of re-segmenting makes a rung ~10x cheaper to build.
_BANK_CONTRAST = 0.5  # typical object/background distance; sets which soft pixels pass the threshold


def _emulate_measure(alpha: np.ndarray) -> np.ndarray:
    mask = alpha * _BANK_CONTRAST > FG_THRESHOLD
    full = quantile(alpha[mask], 0.9)
    return np.clip(alpha / full, 0.0, 1.0) * dilate(mask)


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels), zero outside."""
    half = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = alpha.shape
    p = np.zeros((h + 2 * half, w), dtype=np.float32)
    p[half : half + h] = alpha
    alpha = sum(wk * p[i : i + h] for i, wk in enumerate(k))
    p = np.zeros((h, w + 2 * half), dtype=np.float32)
    p[:, half : half + w] = alpha
    return sum(wk * p[:, i : i + w] for i, wk in enumerate(k))


def _template(
    shape: str, fill: str, rotation: float, r_px: float, offset: tuple[float, float]
) -> list[tuple[np.ndarray, float]]:
    """One normalised patch (and true/measured radius ratio) per blur variant of BLURS."""
    reach = geometry.circumradius(shape) * r_px
    size = math.ceil(2 * reach + 8)
    x = (size / 2 + offset[0]) / size
    y = (size / 2 + offset[1]) / size
    # Coverage is exactly 0 outside the object's box, so evaluate the SDF there only.
    core, (x0, y0, x1, y1) = object_coverage(shape, fill, x, y, r_px / size, rotation, size)
    sharp = np.zeros((size, size), dtype=np.float32)
    sharp[y0:y1, x0:x1] = core
    out = []
    for fraction, floor in BLURS:
        sigma = max(floor, fraction * r_px) if fraction > 0 else 0.0
        alpha = _emulate_measure(_blur(sharp, sigma) if sigma > 0 else sharp)
        area = float(alpha.sum())
        cx = float(alpha.sum(axis=0) @ (np.arange(size) + 0.5)) / area
        cy = float(alpha.sum(axis=1) @ (np.arange(size) + 0.5)) / area
        measured = math.sqrt(area / math.pi)
        out.append((normalised_patch(alpha, cx, cy, measured, GRID, EXTENT), r_px / measured))
    return out


def bank(level: int, shapes: tuple[str, ...] = SHAPES) -> Bank:
    """The bank at one rung (built on first use, then cached)."""
    return _bank(level, tuple(shapes))


@cache
def _bank(level: int, shapes: tuple[str, ...]) -> Bank:
    paint_r = LEVELS[level]
    rng = np.random.default_rng(level)  # sub-pixel offsets: fixed, so the bank is deterministic
    vecs, rots, scales, keys, starts = [], [], [], [], []
    for shape in shapes:
        for fill in FILLS:
            starts.append(len(vecs))
            # Probe once so that the templates' *measured* paint radius lands on the rung.
            r0 = paint_r / math.sqrt(paint_fraction(shape, fill))
            scale = _template(shape, fill, 0.0, r0, (0, 0))[0][1]
            for rot in _rotations(shape):
                off = (float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5)))
                for vec, scale_k in _template(shape, fill, float(rot), paint_r * scale, off):
                    vecs.append(vec)
                    scales.append(scale_k)
                    rots.append(float(rot))
                    keys.append((shape, fill))
    vectors = np.stack(vecs)
    norms = (vectors.astype(np.float64) ** 2).sum(axis=1)
    return Bank(vectors, norms, np.asarray(rots), np.asarray(scales), tuple(keys), np.asarray(starts))


@dataclasses.dataclass(frozen=True)
class Bank:
    """Templates at one rung; rows of one (shape, fill) are contiguous from ``starts``.

    Attributes:
        vectors: (M, GRID * GRID) normalised paint patches; ``norms`` their squared norms (M,).
        rotations: (M,) degrees.
        scales: (M,) true radius / measured paint radius of each template.
        keys: (shape, fill) of each row.
        starts: (K,) first row of each (shape, fill) group.
    """

    vectors: np.ndarray
    norms: np.ndarray
    rotations: np.ndarray
    scales: np.ndarray
    keys: tuple[tuple[str, str], ...]
    starts: np.ndarray


@dataclasses.dataclass(frozen=True)
class ShapeMatch:
    """What the bank says about one blob.

    Attributes:
        shape, fill: the nearest template's class.
        rotation: its rotation, degrees modulo the shape's symmetry period.
        radius: estimated true radius in pixels (paint radius x the template's scale).
        distance: RMS distance to the template.
        per_class: best RMS distance of every (shape, fill); the gap between the two smallest is
            a confidence margin.
    """

    shape: str
    fill: str
    rotation: float
    radius: float
    distance: float
    per_class: dict[tuple[str, str], float]


def nearest_level(paint_r: float) -> int:
    """Index of the rung closest to ``paint_r`` (pixels) in log scale."""
    logs = np.log(np.asarray(LEVELS))
    return int(np.argmin(np.abs(logs - math.log(max(paint_r, 1e-3)))))


def classify(comp: Component, shapes: tuple[str, ...] = SHAPES) -> ShapeMatch:
    """Name the shape and fill of a component by its nearest bank template."""
    paint_r = math.sqrt(comp.area / math.pi)
    b = bank(nearest_level(paint_r), shapes)
    x0, y0 = comp.box[0], comp.box[1]
    v = normalised_patch(comp.alpha, comp.cx - x0, comp.cy - y0, paint_r, GRID, EXTENT)
    # |t - v|^2 = |t|^2 - 2 t.v + |v|^2, one matrix-vector product for the whole bank. einsum, not
    # `@`: BLAS would start its thread pool for this small product, and its spinning threads cost
    # 10-100x more than the product itself on a busy machine (measured).
    d2 = np.maximum(b.norms - 2.0 * np.einsum("ij,j->i", b.vectors, v) + float(v @ v), 0.0) / v.size
    best = int(np.argmin(d2))
    group_min = np.minimum.reduceat(d2, b.starts)
    per_class = {b.keys[s]: math.sqrt(float(m)) for s, m in zip(b.starts, group_min)}
    shape, fill = b.keys[best]
    return ShapeMatch(
        shape,
        fill,
        float(b.rotations[best]),
        paint_r * float(b.scales[best]),
        math.sqrt(float(d2[best])),
        per_class,
    )
