"""The emoji corpus: real emoji art in several styles with CLDR names and keywords as captions.

Build it with ``unclip data emoji`` (or :func:`build_emoji`) after installing the sources with
``bash scripts/install_emoji_sources.sh``; read a split back with :func:`load_emoji_split`.
See docs/data-emoji.md for sources, licences, splits and caption templates.
"""

from __future__ import annotations

from unclip.data.emoji.build import SIZES, SPLITS, EmojiBuild, EmojiConfig, build_emoji, concept_split
from unclip.data.emoji.captions import Concept, load_catalog, make_captions, normalize_hexcode
from unclip.data.emoji.shards import EmojiSample, iter_emoji_split, load_emoji_split, read_manifest
from unclip.data.emoji.sources import STYLES, ImageFiles, StyleInfo, StyleSource, list_styles, open_style

__all__ = [
    "SIZES",
    "SPLITS",
    "STYLES",
    "Concept",
    "EmojiBuild",
    "EmojiConfig",
    "EmojiSample",
    "ImageFiles",
    "StyleInfo",
    "StyleSource",
    "build_emoji",
    "concept_split",
    "iter_emoji_split",
    "list_styles",
    "load_catalog",
    "load_emoji_split",
    "make_captions",
    "normalize_hexcode",
    "open_style",
    "read_manifest",
]
