"""Naming colours from pixels, robust to anti-aliasing against any background.

An edge or thin-stroke pixel is a mix ``a * colour + (1 - a) * background``: every such mix lies on
the segment from the background to the true colour. So instead of naming the observed mix, we name
the ray: from the background through the observed colour, onwards until it leaves the RGB cube
(alpha >= 1/4 at most), and take the named colour whose prototypes come closest to that ray. The
closest point is also the estimated pure colour, which gives per-pixel coverage by projection.
"""

from __future__ import annotations

import colorsys
import itertools
from functools import cache

import numpy as np

from unclip.data.shapes.vocab import BACKGROUND_HSV, COLOR_HSV, HSVRange

# How far past the observed colour the ray may go: 1 / MAX_EXTRAPOLATION is the least coverage
# we assume the most saturated pixels of a blob have (a 1-px stroke at 32 px is about 0.5).
MAX_EXTRAPOLATION = 3.0


def _hsv_grid(hsv: HSVRange, n: int = 4) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = hsv
    if h1 - h0 >= 360.0:  # hue-free colours (white, black, grays): hue matters little
        hues = np.linspace(0.0, 360.0, 6, endpoint=False)
    else:
        hues = np.linspace(h0, h1, n)
    pts = [
        colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v)
        for h, s, v in itertools.product(hues, np.linspace(s0, s1, n), np.linspace(v0, v1, n))
    ]
    return np.asarray(pts, dtype=np.float64)


@cache
def _prototypes(which: str) -> tuple[np.ndarray, tuple[str, ...]]:
    table = COLOR_HSV if which == "object" else BACKGROUND_HSV
    pts, names = [], []
    for name, hsv in table.items():
        g = _hsv_grid(hsv)
        pts.append(g)
        names += [name] * len(g)
    return np.concatenate(pts), tuple(names)


def name_color(observed: np.ndarray, background: np.ndarray) -> tuple[str, np.ndarray, float]:
    """Name an object's colour from its most saturated pixels' mean and the background colour.

    Args:
        observed: (3,) RGB in [0, 1].
        background: (3,) RGB in [0, 1].

    Returns:
        ``(name, pure_rgb (3,), distance)``: the named colour, the estimated pure colour (the point
        of the ray nearest that colour's prototypes) and that distance.
    """
    protos, names = _prototypes("object")
    u = observed.astype(np.float64) - background
    uu = float(u @ u)
    if uu < 1e-8:
        d = np.sqrt(((protos - observed) ** 2).sum(axis=1))
        k = int(np.argmin(d))
        return names[k], protos[k].copy(), float(d[k])
    # Largest t keeping background + t * u inside the cube, capped.
    with np.errstate(divide="ignore", invalid="ignore"):
        lim = np.where(u > 0, (1.0 - background) / u, np.where(u < 0, -background / u, np.inf))
    t_max = max(1.0, min(MAX_EXTRAPOLATION, float(lim.min())))
    t = np.clip(((protos - background) @ u) / uu, 1.0, t_max)
    nearest = background + t[:, None] * u
    d = np.sqrt(((protos - nearest) ** 2).sum(axis=1))
    k = int(np.argmin(d))
    return names[k], nearest[k], float(d[k])


def name_background(rgb: np.ndarray) -> str:
    """Nearest background name for a (3,) RGB colour in [0, 1]."""
    protos, names = _prototypes("background")
    return names[int(np.argmin(((protos - rgb) ** 2).sum(axis=1)))]
