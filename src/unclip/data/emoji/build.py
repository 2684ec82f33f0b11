"""Build the emoji corpus: join styles to captions, split, compose tiles, write shards.

Splits (see docs/data-emoji.md):

- ``heldout_concept``: every image of ~5 % of base concepts, chosen by a hash of the base
  hexcode alone, so the same concepts are held out whatever the seed, size or styles. Skin-tone
  variants follow their base.
- ``val``: ~3 % of the remaining base concepts (again by hash) give one image each, in one style
  picked by hash, to val; their other styles stay in train, so val measures retrieval of seen
  concepts in unseen images. Variants follow their base (same style where it has one).
- ``heldout_style``: with ``heldout_style`` set, every image of that style, whatever its concept
  (``meta["heldout_concept"]`` marks the doubly held-out ones).
- ``train``: the rest.

Each image is composited onto a background drawn from ``(seed, style, hexcode)`` and the captions'
keyword sample comes from the same seed, so builds are byte-reproducible and independent of the
order or number of worker processes.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unclip.config import Config, ConfigError
from unclip.data.emoji.captions import Concept, load_catalog, make_captions
from unclip.data.emoji.packages import EMOJIBASE, captions_license_text, emoji_dir, emojibase_path
from unclip.data.emoji.shards import FORMAT, MANIFEST, ShardWriter, read_manifest
from unclip.data.emoji.sources import StyleSource, list_styles, open_style
from unclip.errors import UserError
from unclip.progress import progress

log = logging.getLogger(__name__)

SIZES: tuple[int, ...] = (32, 64, 128, 256)
SPLITS: tuple[str, ...] = ("train", "val", "heldout_concept", "heldout_style")
# Typical art spans this fraction of a tile in every style (56 of 64 px), with a margin for outliers.
TARGET_FILL = 0.875


@dataclass(frozen=True)
class EmojiConfig(Config):
    """What defines an emoji build; stored in its manifest.

    Attributes:
        styles: Art styles to include (:func:`~unclip.data.emoji.sources.list_styles`).
        size: Tile side in pixels.
        seed: Drives backgrounds, caption keyword choice and shard order (not the splits).
        shard_size: Samples per tar shard.
        heldout_style: A style kept out of train/val/heldout_concept entirely, or ``None``.
        include_flags: Keep the flags group (left out by default: mostly national flags,
            whose names a small model cannot ground).
        include_components: Keep the component group (hair styles, skin swatches).
        heldout_concept_frac: Fraction of base concepts held out.
        val_frac: Fraction of base concepts that give one image to val.
        style_captions: Add captions naming the style ("... in 3D style").
    """

    styles: tuple[str, ...] = ("noto", "twemoji", "fluent-flat", "fluent-3d", "openmoji")
    size: int = 64
    seed: int = 0
    shard_size: int = 1000
    heldout_style: str | None = None
    include_flags: bool = False
    include_components: bool = False
    heldout_concept_frac: float = 0.05
    val_frac: float = 0.03
    style_captions: bool = True

    def __post_init__(self) -> None:
        if not self.styles:
            raise ConfigError("styles: give at least one emoji style")
        if len(set(self.styles)) != len(self.styles):
            raise ConfigError(f"styles: {','.join(self.styles)} names a style twice")
        if self.size not in SIZES:
            raise ConfigError(f"size: {self.size} is not one of {', '.join(map(str, SIZES))}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be at least 1, got {self.shard_size}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be non-negative, got {self.seed}")
        if self.heldout_style is not None and self.heldout_style not in self.styles:
            raise ConfigError(
                f"heldout_style: {self.heldout_style!r} is not among styles {','.join(self.styles)}"
            )
        if self.heldout_style is not None and len(self.styles) < 2:
            raise ConfigError("heldout_style: holding out the only style leaves nothing to train on")
        fracs = (self.heldout_concept_frac, self.val_frac)
        if min(fracs) < 0 or sum(fracs) >= 1:
            raise ConfigError("heldout_concept_frac and val_frac must be >= 0 and sum to less than 1")


@dataclass(frozen=True)
class EmojiBuild:
    """What a build wrote.

    Attributes:
        out_dir: The build directory.
        counts: ``counts[style][split]`` = number of images.
        shards: Shard file names per split.
        seconds: Wall time of the build.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    shards: dict[str, list[str]]
    seconds: float = field(compare=False)

    def table(self) -> str:
        """Counts per style and split as an aligned text table with totals."""
        splits = [s for s in SPLITS if s in self.shards]
        head = ["style", *splits, "total"]
        rows = [
            [style, *(str(c.get(s, 0)) for s in splits), str(sum(c.values()))]
            for style, c in self.counts.items()
        ]
        totals = [sum(c.get(s, 0) for c in self.counts.values()) for s in splits]
        rows.append(["total", *map(str, totals), str(sum(totals))])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        return "\n".join(fmt.format(*r) for r in [head, *rows])


# --- splits ---------------------------------------------------------------------------------------


def _unit(text: str) -> float:
    """A uniform number in [0, 1) from a string, the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def concept_split(base_key: str, heldout_frac: float = 0.05, val_frac: float = 0.03) -> str:
    """Split of a base concept by hash: ``"heldout_concept"``, ``"val"`` or ``"train"``.

    Seed-free on purpose: every build, whatever its seed, size or styles, holds out the same
    concepts, so models trained on different builds are evaluated on the same ones.
    """
    u = _unit(f"unclip-emoji-split:{base_key}")
    if u < heldout_frac:
        return "heldout_concept"
    return "val" if u < heldout_frac + val_frac else "train"


@dataclass(frozen=True)
class _Item:
    style: str
    concept: Concept
    split: str
    heldout_concept: bool


def _assign_splits(
    concepts: Sequence[Concept], available: Mapping[str, set[str]], config: EmojiConfig
) -> list[_Item]:
    """One item per (style, concept) the style has, with its split (see the module docstring).

    Args:
        concepts: The catalog.
        available: Style name to the keys it has art for.
        config: The build config.
    """
    family_styles: dict[str, set[str]] = {}
    for c in concepts:
        for style in config.styles:
            if style != config.heldout_style and c.key in available[style]:
                family_styles.setdefault(c.base_key, set()).add(style)
    items = []
    for style in config.styles:
        for c in concepts:
            if c.key not in available[style]:
                continue
            split = concept_split(c.base_key, config.heldout_concept_frac, config.val_frac)
            held = split == "heldout_concept"
            if style == config.heldout_style:
                split = "heldout_style"
            elif split == "val":
                # A concept with one style would leave train entirely: it stays there instead.
                choices = sorted(family_styles.get(c.base_key, ()))
                u = _unit(f"unclip-emoji-val-style:{c.base_key}")
                chosen = choices[int(u * len(choices))] if len(choices) >= 2 else None
                split = "val" if style == chosen else "train"
            items.append(_Item(style, c, split, held))
    return items


# --- pixels ---------------------------------------------------------------------------------------


def make_background(rng: random.Random, size: int) -> tuple[Image.Image, dict[str, Any]]:
    """A plain or softly graded background, and its description for the metadata.

    Kinds (weights): white 3, light colour 3, mid gray 1.5, dark 1.5, vertical gradient of two light
    colours 2. Varied backgrounds keep a model from tying style or concept to the backdrop.

    Returns:
        ``(image, meta)`` with image RGB ``size x size`` and meta like
        ``{"kind": "light", "rgb": [r, g, b]}`` or ``{"kind": "gradient", "top": ..., "bottom": ...}``.
    """

    def hsv(h: float, s: float, v: float) -> list[int]:
        return [round(x * 255) for x in colorsys.hsv_to_rgb(h, s, v)]

    def light() -> list[int]:
        return hsv(rng.random(), rng.uniform(0.12, 0.35), rng.uniform(0.9, 1.0))

    (kind,) = rng.choices(("white", "light", "gray", "dark", "gradient"), weights=(3, 3, 1.5, 1.5, 2))
    if kind == "gradient":
        top, bottom = light(), light()
        ramp = np.linspace(0.0, 1.0, size)[:, None, None]
        pixels = np.rint((1 - ramp) * np.array(top) + ramp * np.array(bottom)).astype(np.uint8)
        return Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).copy()), {
            "kind": kind,
            "top": top,
            "bottom": bottom,
        }
    if kind == "white":
        rgb = [255, 255, 255]
    elif kind == "light":
        rgb = light()
    elif kind == "gray":
        rgb = [round(rng.uniform(0.42, 0.62) * 255)] * 3
    else:
        rgb = hsv(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.08, 0.25))
    return Image.new("RGB", (size, size), tuple(rgb)), {"kind": kind, "rgb": rgb}


def compose(art: Image.Image, background: Image.Image, fill: float) -> Image.Image:
    """Scale a style's square RGBA art into a tile and composite it on the background.

    The art is scaled so that the style's typical art (spanning ``fill`` of its canvas) spans
    :data:`TARGET_FILL` of the tile, but never so far that this image's own art would be cut.
    Resizing RGBA in Pillow premultiplies alpha, so edges do not pick up the transparent colour.

    Args:
        art: Square RGBA image on the style's canvas.
        background: RGB tile, ``size x size``.
        fill: The style's typical art extent as a fraction of its canvas.

    Returns:
        RGB tile of the background's size.
    """
    side = art.size[0]
    window = side * fill / TARGET_FILL
    box = art.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    if box is not None:
        centre = side / 2
        reach = max(centre - box[0], box[2] - centre, centre - box[1], box[3] - centre)
        window = max(window, 2 * reach)
    if window > side:  # zooming out: pad evenly so the centre stays the centre
        pad = math.ceil((window - side) / 2)
        padded = Image.new("RGBA", (side + 2 * pad, side + 2 * pad), (0, 0, 0, 0))
        padded.paste(art, (pad, pad))
        art, side = padded, side + 2 * pad
    lo = (side - window) / 2
    tile = art.resize(background.size, Image.Resampling.LANCZOS, box=(lo, lo, lo + window, lo + window))
    out = background.convert("RGBA")
    out.alpha_composite(tile)
    return out.convert("RGB")


# --- the build ------------------------------------------------------------------------------------

# Set in the parent before workers fork: sources hold large in-memory tables not worth pickling.
_WORK: dict[str, Any] = {}


def _render(item: _Item) -> tuple[str, dict[str, bytes]]:
    """One sample's key and tar members (png + json). Runs in a worker or in-process."""
    source: StyleSource = _WORK["sources"][item.style]
    config: EmojiConfig = _WORK["config"]
    c = item.concept
    rng = random.Random(f"{config.seed}:{item.style}:{c.key}")
    art = source.render(c, config.size)
    assert art is not None, (item.style, c.key)  # has() said yes
    background, bg = make_background(rng, config.size)
    tile = compose(art, background, source.info.fill)
    buf = io.BytesIO()
    tile.save(buf, "PNG", compress_level=6)
    meta = {
        "captions": make_captions(c, rng, source.info.caption_name if config.style_captions else None),
        "label": c.label,
        "tags": list(c.tags),
        "style": item.style,
        "style_name": source.info.caption_name,
        "license": source.info.license,
        "hexcode": c.key,
        "base_hexcode": c.base_key,
        "emoji": c.emoji,
        "skin_tone": list(c.skin_tone),
        "group": c.group,
        "subgroup": c.subgroup,
        "split": item.split,
        "heldout_concept": item.heldout_concept,
        "bg": bg,
        "size": config.size,
    }
    payload = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
    return f"{item.style}_{c.key}", {"png": buf.getvalue(), "json": payload}


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """Forked render workers, started now: before any progress-bar thread exists in this process
    (forking a process with threads can deadlock), and after :data:`_WORK` is set."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # with fork, the first task launches every worker at once
    return pool


def _write_shards(
    out: Path, by_split: dict[str, list[_Item]], config: EmojiConfig, pool: ProcessPoolExecutor | None
) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    """Render and write every split; returns counts per style and split, and shard names."""
    counts = {name: dict.fromkeys(by_split, 0) for name in config.styles}
    shards: dict[str, list[str]] = {}
    with progress(total=sum(map(len, by_split.values())), desc="emoji", unit="img") as bar:
        for split, split_items in by_split.items():
            # Shuffle so every shard mixes styles and concepts (streaming readers shuffle locally).
            split_items.sort(key=lambda it: (it.style, it.concept.key))
            random.Random(f"{config.seed}:order:{split}").shuffle(split_items)
            # map() keeps input order, so the bytes do not depend on the number of workers.
            rendered = pool.map(_render, split_items, chunksize=32) if pool else map(_render, split_items)
            writer = ShardWriter(out, split, config.shard_size)
            try:
                for item, (key, files) in zip(split_items, rendered):
                    writer.write(key, files)
                    counts[item.style][split] += 1
                    bar.update()
            finally:
                writer.close()
            shards[split] = writer.names
    return counts, shards


def _prepare_out_dir(out_dir: Path) -> None:
    """Create the directory, removing the files of an earlier emoji build in it (and nothing else)."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise UserError(f"{out_dir} is not empty and holds no emoji build; choose an empty --out")
        old = read_manifest(out_dir)
        for name in [*(n for names in old["shards"].values() for n in names), *old.get("attribution", [])]:
            (out_dir / name).unlink(missing_ok=True)
        (out_dir / MANIFEST).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _attribution(source: StyleSource, size: int) -> str:
    info = source.info
    lines = [
        f"{info.title}: images in this build with style '{info.name}'",
        f"Licence: {info.license}"
        + (" (share-alike: adaptations must keep CC-BY-SA-4.0)" if info.share_alike else ""),
        f"Attribution: {info.attribution}",
        f"Changes: art resized to {size} px and composited onto generated backgrounds by unclip.",
        "",
        source.license_text(),
    ]
    return "\n".join(lines).rstrip() + "\n"


def build_emoji(
    out_dir: str | Path | None = None,
    config: EmojiConfig | None = None,
    *,
    cache: str | Path | None = None,
    sources: Mapping[str, StyleSource] | None = None,
    catalog: str | Path | None = None,
    workers: int | None = None,
    **changes: Any,
) -> EmojiBuild:
    """Build the emoji corpus into webdataset shards, one set per split.

    Args:
        out_dir: Output directory (default ``<cache>/emoji/build-<size>px``). Files of an earlier
            build there are replaced; any other non-empty directory is refused.
        config: Build settings; keyword ``changes`` override its fields (``size=32``).
        cache: Cache root holding the sources (default ``$UNCLIP_CACHE`` or ``~/.cache/unclip``).
        sources: Style sources to use instead of the installed ones, by style name.
        catalog: emojibase ``data.json`` source (tarball or directory); default: the installed one.
        workers: Render processes (default: CPU count, at most 4). The output does not depend on it.

    Returns:
        The counts per style and split, shard names and build time.

    Raises:
        UserError: On a bad setting or a missing source (naming its install command).
    """
    start = time.perf_counter()
    config = config or EmojiConfig()
    if changes:
        config = config.replace(**changes)
    sources = dict(sources or {})
    for name in config.styles:
        if name not in sources and name not in list_styles():
            raise UserError(f"unknown emoji style {name!r}; choose from {', '.join(list_styles())}")
    # Resolve every source before any work, so a missing one fails fast with its install command.
    catalog_path = Path(catalog) if catalog is not None else emojibase_path(cache)
    opened = {name: sources[name] if name in sources else open_style(name, cache) for name in config.styles}
    concepts = load_catalog(
        catalog_path, include_flags=config.include_flags, include_components=config.include_components
    )
    out = Path(out_dir) if out_dir is not None else emoji_dir(cache) / f"build-{config.size}px"

    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    _WORK.update(sources=opened, config=config)
    pool = _start_pool(workers)
    try:
        available = {
            name: {c.key for c in progress(concepts, desc=f"checking {name}") if src.has(c)}
            for name, src in opened.items()
        }
        by_split: dict[str, list[_Item]] = {
            s: [] for s in SPLITS if s != "heldout_style" or config.heldout_style
        }
        for item in _assign_splits(concepts, available, config):
            by_split[item.split].append(item)
        _prepare_out_dir(out)
        counts, shards = _write_shards(out, by_split, config, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _WORK.clear()

    attribution = []
    for name, src in opened.items():
        attribution.append(f"ATTRIBUTION-{name}.txt")
        (out / attribution[-1]).write_text(_attribution(src, config.size))
    attribution.append("ATTRIBUTION-captions.txt")
    caption_licence = captions_license_text(cache) if catalog is None else ""
    (out / attribution[-1]).write_text(
        "Captions: labels and tags from emojibase-data (MIT, https://emojibase.dev), derived from "
        "Unicode CLDR annotations (Unicode License v3, https://cldr.unicode.org).\n\n" + caption_licence
    )
    manifest = {
        "format": FORMAT,
        "config": config.to_dict(),
        "concepts": {"base": len({c.base_key for c in concepts}), "total": len(concepts)},
        "counts": counts,
        "shards": shards,
        "sources": {name: src.provenance() for name, src in opened.items()},
        "captions": EMOJIBASE.provenance() if catalog is None else {"file": catalog_path.name},
        "licenses": {name: src.info.license for name, src in opened.items()},
        "attribution": attribution,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return EmojiBuild(out, counts, shards, time.perf_counter() - start)
