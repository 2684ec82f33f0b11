"""Measuring the oracle itself: accuracy on fresh renders, clean and degraded, and throughput.

``python -m unclip.data.shapes.accuracy --num 2000`` prints the tables kept in docs/data-shapes.md.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

from unclip.data.shapes.oracle import prepare, read_scene, score
from unclip.data.shapes.render import render
from unclip.data.shapes.scene import sample_scene
from unclip.data.shapes.vocab import ATTRIBUTES

Degradation = Literal["clean", "noise", "blur", "jpeg"]
DEGRADATIONS: tuple[str, ...] = ("clean", "noise", "blur", "jpeg")
NOISE_SIGMA = 0.05  # on [0, 1] pixels
BLUR_RADIUS_AT_64 = 0.75  # Gaussian blur radius in pixels at 64 px, scaled with the image size
JPEG_QUALITY = 75


def degrade(image: Image.Image, kind: Degradation, rng: np.random.Generator) -> Image.Image:
    """Apply one of the robustness degradations to an RGB image."""
    if kind == "clean":
        return image
    if kind == "noise":
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = arr + rng.normal(0.0, NOISE_SIGMA, arr.shape).astype(np.float32)
        return Image.fromarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS_AT_64 * image.width / 64.0))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown degradation {kind!r}; expected one of {list(DEGRADATIONS)}")


def measure(
    num: int,
    size: int,
    objects: Sequence[int] = (1,),
    degradation: Degradation = "clean",
    seed: int = 0,
) -> dict[str, Any]:
    """Oracle accuracy on ``num`` fresh scenes.

    Args:
        num: number of scenes.
        size: render size in pixels.
        objects: numbers of objects to draw scenes with (uniformly).
        degradation: applied to every render before reading.
        seed: scenes and degradation noise come from this seed.

    Returns:
        ``{attribute: accuracy}`` over objects (each object scored on the reading the best joint
        assignment gives it), ``count``, ``relation`` (two-object scenes), ``all_correct`` (per
        image), ``errors`` (Counter-like dict of ``"attr: want -> got"``) and ``images_per_s``
        (oracle only, rendering excluded).
    """
    rng = np.random.default_rng([seed, size, len(objects), DEGRADATIONS.index(degradation)])
    prepare(size)
    hits = dict.fromkeys(ATTRIBUTES, 0)
    n_obj = 0
    counts = rels = rel_total = all_ok = 0
    errors: dict[str, int] = {}
    elapsed = 0.0
    for _ in range(num):
        spec = sample_scene(rng, "any", int(rng.choice(objects)))
        image = degrade(render(spec, size), degradation, rng)
        t0 = time.perf_counter()
        readings = read_scene(image)
        elapsed += time.perf_counter() - t0
        result = score(image, spec, readings=readings)
        counts += result["count"]
        all_ok += result["all_correct"]
        if result["relation"] is not None:
            rel_total += 1
            rels += result["relation"]
        for obj, k in zip(spec.objects, result["assignment"]):
            n_obj += 1
            got = readings[k].attributes() if k is not None else {}
            for attr in ATTRIBUTES:
                want = getattr(obj, attr)
                if got.get(attr) == want:
                    hits[attr] += 1
                else:
                    key = f"{attr}: {want} -> {got.get(attr, 'missing')}"
                    errors[key] = errors.get(key, 0) + 1
    out: dict[str, Any] = {a: hits[a] / max(n_obj, 1) for a in ATTRIBUTES}
    out["count"] = counts / num
    out["relation"] = rels / rel_total if rel_total else None
    out["all_correct"] = all_ok / num
    out["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    out["images_per_s"] = num / elapsed if elapsed else float("inf")
    return out


def renders_per_second(size: int, num: int = 500, seed: int = 0) -> float:
    """Sampling + rendering throughput on one core (PIL image out)."""
    rng = np.random.default_rng(seed)
    specs = [sample_scene(rng) for _ in range(num)]
    t0 = time.perf_counter()
    for spec in specs:
        render(spec, size)
    return num / (time.perf_counter() - t0)


def _table(rows: list[tuple[str, dict[str, Any]]], cols: Sequence[str]) -> str:
    head = "| " + " | ".join(["setting", *cols]) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    lines = [head, sep]
    for name, r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else (f"{100 * v:.2f}" if c != "images_per_s" else f"{v:.0f}"))
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description="measure the shapes oracle")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--sizes", default="32,64,128")
    parser.add_argument("--degradations", default=",".join(DEGRADATIONS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cols = [*ATTRIBUTES, "count", "relation", "all_correct", "images_per_s"]
    for label, objects in (("single object", (1,)), ("2-3 objects", (2, 3))):
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            for deg in args.degradations.split(","):
                r = measure(args.num, size, objects, deg, args.seed)  # type: ignore[arg-type]
                rows.append((f"{size} px {deg}", r))
                top = ", ".join(f"{k} x{v}" for k, v in list(r["errors"].items())[:4])
                echo(f"# {label} {size} px {deg}: errors {top or 'none'}")
        echo(f"\n### {label}, {args.num} scenes per row (accuracy %)\n")
        echo(_table(rows, cols) + "\n")
    for size in (int(s) for s in args.sizes.split(",")):
        echo(f"renders/s at {size} px: {renders_per_second(size):.0f}")


if __name__ == "__main__":
    main()
