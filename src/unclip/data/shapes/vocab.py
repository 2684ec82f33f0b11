"""The shapes-world vocabulary, version 1: every closed set of names and every numeric range.

Everything a scene can contain is declared here, once, so that the sampler, the renderer, the
captioner and the pixel oracle all agree. Changing any value changes what the oracle reads and what
models were trained on: bump :data:`VOCAB_VERSION` when you do.

Units: positions and sizes are fractions of the canvas side (the canvas is the unit square, x to the
right, y *down*, like image rows), so one scene renders identically at any resolution. Colours are
HSV ranges (hue in degrees, saturation and value in [0, 1]); each object samples its exact RGB inside
its colour's range, and the oracle names colours by which range is nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

VOCAB_VERSION = 1

Shape = Literal["circle", "square", "triangle", "star", "heart", "cross", "diamond"]
Color = Literal["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"]
Size = Literal["small", "large"]
Fill = Literal["solid", "outline"]
Position = Literal[
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"
]
Relation = Literal["left of", "right of", "above", "below"]
Background = Literal["gray", "dark gray", "beige", "navy", "brown"]
Texture = Literal["plain", "gradient", "noise"]
Split = Literal["train", "heldout", "any"]

SHAPES: tuple[Shape, ...] = get_args(Shape)
COLORS: tuple[Color, ...] = get_args(Color)
SIZES: tuple[Size, ...] = get_args(Size)
FILLS: tuple[Fill, ...] = get_args(Fill)
POSITIONS: tuple[Position, ...] = get_args(Position)
RELATIONS: tuple[Relation, ...] = get_args(Relation)
BACKGROUNDS: tuple[Background, ...] = get_args(Background)
TEXTURES: tuple[Texture, ...] = get_args(Texture)
ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "fill", "position")

# (hue_lo, hue_hi) in degrees (hue_lo may be negative: red wraps through 0), (s_lo, s_hi), (v_lo, v_hi).
# Ranges are narrow enough that neighbouring names stay far apart (the nearest pair, orange/yellow
# and blue/purple, differ by 16 degrees of hue at the closest) and saturated/bright enough that an
# anti-aliased edge mixed with any background is still read back to the right name.
HSVRange = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
COLOR_HSV: dict[Color, HSVRange] = {
    "red": ((-8.0, 6.0), (0.80, 1.00), (0.80, 1.00)),
    "orange": ((24.0, 34.0), (0.85, 1.00), (0.90, 1.00)),
    "yellow": ((50.0, 58.0), (0.80, 1.00), (0.88, 1.00)),
    "green": ((110.0, 135.0), (0.75, 1.00), (0.60, 0.85)),
    "cyan": ((178.0, 190.0), (0.75, 1.00), (0.80, 1.00)),
    "blue": ((215.0, 230.0), (0.80, 1.00), (0.80, 1.00)),
    "purple": ((268.0, 285.0), (0.60, 0.85), (0.60, 0.85)),
    "pink": ((318.0, 332.0), (0.45, 0.65), (0.92, 1.00)),
    "white": ((0.0, 360.0), (0.00, 0.06), (0.93, 1.00)),
    "black": ((0.0, 360.0), (0.00, 0.30), (0.00, 0.10)),
}

# Backgrounds are desaturated or dark on purpose. The rule (checked by tests/test_shapes_vocab.py):
# every background range is at least 0.2 (Euclidean RGB on [0, 1]) from every object colour range,
# so a background can never be read as an object colour, and no background name is an object
# colour word ("black"/"white" are objects, so the backgrounds are "dark gray", "gray", ...).
BACKGROUND_HSV: dict[Background, HSVRange] = {
    "gray": ((0.0, 360.0), (0.00, 0.04), (0.46, 0.54)),
    "dark gray": ((0.0, 360.0), (0.00, 0.04), (0.27, 0.32)),
    "beige": ((35.0, 45.0), (0.18, 0.28), (0.74, 0.82)),
    "navy": ((222.0, 232.0), (0.60, 0.75), (0.30, 0.38)),
    "brown": ((22.0, 32.0), (0.50, 0.65), (0.32, 0.40)),
}

# Size is the radius of the circle with the same area as the shape (every template has the same
# area for the same radius, so "large" means the same amount of paint for a star as for a square).
# The gap between the ranges (ratio 1.3) is what lets the oracle read size from area alone.
SIZE_RADIUS: dict[Size, tuple[float, float]] = {"small": (0.095, 0.115), "large": (0.15, 0.18)}
# Outline stroke width as a fraction of the radius: thick enough to stay connected at 32 px.
STROKE_FRACTION = 0.3
# Texture strength ranges (fraction of full scale): mild, never enough to look like an object.
TEXTURE_STRENGTH: dict[Texture, tuple[float, float]] = {
    "plain": (0.0, 0.0),
    "gradient": (0.02, 0.05),
    "noise": (0.008, 0.015),
}

# Layout rules (canvas units).
CANVAS_MARGIN = 0.02  # gap between an object's circumcircle and the canvas edge
OBJECT_GAP = 0.08  # gap between two objects' circumcircles (2.5 px at 32 px: blobs never merge)
CELL_MARGIN = 0.025  # sampled centres stay this far from the 1/3 and 2/3 grid lines
RELATION_MIN_OFFSET = 0.1  # a relation needs the main-axis offset at least this large ...
RELATION_DOMINANCE = 0.05  # ... and (when sampling) larger than the cross-axis offset by this much

# A position name from the (row, column) of the 3x3 grid cell holding the object's centre.
_ROW_NAMES = ("top", "", "bottom")
_COL_NAMES = ("left", "", "right")


def position_name(x: float, y: float) -> Position:
    """Name of the 3x3 grid cell holding the point (x, y) in canvas units (y down)."""
    col = min(2, max(0, int(x * 3.0)))
    row = min(2, max(0, int(y * 3.0)))
    name = f"{_ROW_NAMES[row]} {_COL_NAMES[col]}".strip()
    return name or "center"  # type: ignore[return-value]


def position_cell(name: Position) -> tuple[int, int]:
    """(row, col) of a position name; inverse of :func:`position_name`."""
    for row in range(3):
        for col in range(3):
            if (f"{_ROW_NAMES[row]} {_COL_NAMES[col]}".strip() or "center") == name:
                return row, col
    raise ValueError(f"unknown position {name!r}; expected one of {list(POSITIONS)}")


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: Relation) -> bool:
    """Whether "A <relation> B" holds for centres a=(x, y) and b=(x, y) (canvas units, y down).

    The main-axis offset must be at least RELATION_MIN_OFFSET and larger than the cross-axis
    offset, so at most one of the four relations holds for an ordered pair.
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    main, cross = {
        "left of": (dx, dy),
        "right of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return main >= RELATION_MIN_OFFSET and main > abs(cross)


@dataclass(frozen=True)
class HeldOutRule:
    """A combination of attribute values kept out of every training scene.

    A scene matches when one of its objects has every attribute the rule names (``None`` means
    "any") and, if ``background`` is set, the scene has that background.
    """

    name: str
    shape: Shape | None = None
    color: Color | None = None
    size: Size | None = None
    fill: Fill | None = None
    position: Position | None = None
    background: Background | None = None

    def object_attributes(self) -> dict[str, str]:
        """The object attributes this rule pins, e.g. ``{"color": "purple", "shape": "heart"}``."""
        return {a: getattr(self, a) for a in ATTRIBUTES if getattr(self, a) is not None}

    def prompt(self) -> str:
        """A caption naming exactly the held-out combination (for compositional evaluation)."""
        words = [self.size, "outlined" if self.fill == "outline" else self.fill, self.color]
        noun = self.shape or "shape"
        text = " ".join(w for w in [*words, noun] if w)
        text = ("an " if text[0] in "aeiou" else "a ") + text
        if self.position is not None:
            text += " in the center" if self.position == "center" else f" at the {self.position}"
        if self.background is not None:
            text += f" on a {self.background} background"
        return text


# Never in a training scene (the train sampler rejects them); used for compositional evaluation.
# Three colour-shape pairs never seen at all, and four triples whose pairs are seen elsewhere.
HELD_OUT: tuple[HeldOutRule, ...] = (
    HeldOutRule("purple heart", shape="heart", color="purple"),
    HeldOutRule("orange cross", shape="cross", color="orange"),
    HeldOutRule("cyan triangle", shape="triangle", color="cyan"),
    HeldOutRule("green star on navy", shape="star", color="green", background="navy"),
    HeldOutRule("outlined yellow square", shape="square", color="yellow", fill="outline"),
    HeldOutRule("small pink circle", shape="circle", color="pink", size="small"),
    HeldOutRule("white star at the top left", shape="star", color="white", position="top left"),
)
