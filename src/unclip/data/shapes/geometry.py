"""Shape templates and their signed distance functions (SDFs), in resolution-free units.

Every template is centred on its area centroid (so the oracle's pixel centroid is the spec's x, y)
and scaled to area pi: a shape of radius r covers exactly the area of a circle of radius r. The SDF
of a point is its distance to the outline, negative inside, in units of r; the renderer turns it
into anti-aliased coverage and outlines, the oracle's template bank is rendered from the same code.

Rotation 0 is the upright glyph (triangle and star point up, heart lobes up); angles are in
degrees, clockwise on screen (y points down).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

# Extra shapes the renderer can draw for experiments; vocab.SHAPES decides which ones are used.
TEMPLATE_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "hexagon", "diamond",
)  # fmt: skip

# Rotational symmetry order of each template (heart has none): rotations by 360/order look the same.
SYMMETRY: dict[str, int] = {
    "circle": 0,  # continuous
    "square": 4,
    "triangle": 3,
    "star": 5,
    "heart": 1,
    "cross": 4,
    "hexagon": 6,
    "diamond": 2,
}

STAR_INNER_RATIO = 0.5  # inner/outer vertex radius: a fat star whose arms survive at 32 px
CROSS_ARM_RATIO = 0.36  # arm half-width / arm half-length: deep notches tell it from a square
DIAMOND_ASPECT = 0.6  # width / height of the rhombus


def _polygon_area_centroid(v: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = v[:, 0], v[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    cx = ((x + xn) * cross).sum() / (6.0 * area)
    cy = ((y + yn) * cross).sum() / (6.0 * area)
    return abs(area), np.array([cx, cy])


def _regular(n: int, phase_deg: float) -> np.ndarray:
    ang = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
    # Vertex k at angle ang from "up" (-y), going clockwise on screen.
    return np.stack([np.sin(ang), -np.cos(ang)], axis=1)


def _raw_polygon(name: str) -> np.ndarray:
    if name == "square":
        return _regular(4, 45.0)
    if name == "triangle":
        return _regular(3, 0.0)
    if name == "hexagon":
        return _regular(6, 0.0)
    if name == "diamond":
        return np.array([[0.0, -1.0], [DIAMOND_ASPECT, 0.0], [0.0, 1.0], [-DIAMOND_ASPECT, 0.0]])
    if name == "star":
        outer = _regular(5, 0.0)
        inner = _regular(5, 36.0) * STAR_INNER_RATIO
        return np.stack([outer, inner], axis=1).reshape(10, 2)
    if name == "cross":
        h = CROSS_ARM_RATIO
        pts = [(h, -1), (h, -h), (1, -h), (1, h), (h, h), (h, 1), (-h, 1), (-h, h), (-1, h), (-1, -h)]
        pts += [(-h, -h), (-h, -1)]
        return np.array(pts, dtype=np.float64)
    if name == "heart":
        # The classic parametric heart; 64 vertices keep the chords within ~0.2 px of the curve at 256 px.
        t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y], axis=1) / 16.0
    raise ValueError(f"no polygon template for {name!r}")


@cache
def polygon(name: str) -> np.ndarray:
    """Vertices (E, 2) of a polygon template: centred on its centroid, area pi, rotation 0."""
    v = _raw_polygon(name)
    area, centroid = _polygon_area_centroid(v)
    v = (v - centroid) * math.sqrt(math.pi / area)
    v.setflags(write=False)
    return v


@cache
def circumradius(name: str) -> float:
    """Largest distance from the centre to the shape, in units of the radius (circle: 1)."""
    if name == "circle":
        return 1.0
    return float(np.sqrt((polygon(name) ** 2).sum(axis=1)).max())


def half_extents(name: str, rotation: float) -> tuple[float, float]:
    """Half width and half height (units of r) of the template rotated by ``rotation`` degrees."""
    if name == "circle":
        return 1.0, 1.0
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    v = polygon(name)
    # Clockwise on screen with y down: x' = c x - s y, y' = s x + c y.
    xs = c * v[:, 0] - s * v[:, 1]
    ys = s * v[:, 0] + c * v[:, 1]
    return float(np.abs(xs).max()), float(np.abs(ys).max())


@cache
def boundary_points(name: str, spacing: float = 0.08) -> np.ndarray:
    """Points (P, 2) along the template's outline, at most ``spacing`` (units of r) apart."""
    if name == "circle":
        t = np.linspace(0.0, 2.0 * np.pi, math.ceil(2.0 * np.pi / spacing), endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    v = polygon(name)
    pts = []
    for a, b in zip(v, np.roll(v, -1, axis=0)):
        n = max(1, math.ceil(np.linalg.norm(b - a) / spacing))
        pts.append(a + (b - a) * (np.arange(n) / n)[:, None])
    return np.concatenate(pts)


@cache
def inradius(name: str) -> float:
    """Largest disk around the centre inside the shape, in units of r."""
    return float(-sdf(name, np.zeros(1), np.zeros(1))[0])


def to_canvas(points: np.ndarray, x: float, y: float, radius: float, rotation: float) -> np.ndarray:
    """Template-frame points (P, 2) -> canvas coordinates of a posed object."""
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    px, py = points[:, 0] * radius, points[:, 1] * radius
    return np.stack([x + c * px - s * py, y + s * px + c * py], axis=1)


def to_template(points: np.ndarray, x: float, y: float, radius: float, rotation: float) -> np.ndarray:
    """Canvas points (P, 2) -> the template frame of a posed object (inverse of ``to_canvas``)."""
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    dx, dy = points[:, 0] - x, points[:, 1] - y
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=1) / radius


@cache
def _edges(name: str) -> tuple[np.ndarray, ...]:
    v = polygon(name)
    e = np.roll(v, -1, axis=0) - v
    # Horizontal edges never straddle a scanline; a zero slope factor keeps the crossing test
    # division-free for them.
    inv_ey = np.divide(e[:, 0], e[:, 1], out=np.zeros(len(e)), where=e[:, 1] != 0)
    arrays = (v[:, 0], v[:, 1], e[:, 0], e[:, 1], 1.0 / (e**2).sum(axis=1), inv_ey, v[:, 1] + e[:, 1])
    return tuple(a.astype(np.float32) for a in arrays)


def sdf(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (units of r, negative inside) of points (u, v) in the template frame.

    Args:
        name: template name.
        u, v: point coordinates, any matching shapes ``S``, in units of the radius.

    Returns:
        float32 array of shape ``S``.
    """
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    if name == "circle":
        return np.sqrt(u * u + v * v) - np.float32(1.0)
    ax, ay, ex, ey, inv_e2, ex_over_ey, by = _edges(name)
    pu = u[..., None]
    pv = v[..., None]
    dx = pu - ax
    dy = pv - ay
    # Distance to each edge segment: project onto the edge, clamp to the segment.
    t = dx * ex
    t += dy * ey
    t *= inv_e2
    np.clip(t, 0.0, 1.0, out=t)
    qx = dx - t * ex
    qy = dy - t * ey
    qx *= qx
    qy *= qy
    qx += qy
    dist = np.sqrt(qx.min(axis=-1))
    # Inside test by ray crossings (even-odd), vectorised over edges.
    straddle = (ay > pv) != (by > pv)
    crosses = straddle & (pu < ax + dy * ex_over_ey)
    inside = np.bitwise_xor.reduce(crosses, axis=-1)
    return np.where(inside, -dist, dist)
