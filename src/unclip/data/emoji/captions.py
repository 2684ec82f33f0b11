"""Emoji concepts and their captions, from emojibase-data (npm, MIT).

Every emoji art set names its images by code-point sequence, so the sequence is the join key.
:func:`normalize_hexcode` makes the spellings of different sets agree; :func:`load_catalog` reads
emojibase's English ``data.json`` into :class:`Concept` records (base entries and their skin-tone
variants); :func:`make_captions` turns a concept into the caption strings stored with each image.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unclip.errors import UserError

# emojibase's group and subgroup numbers, used if messages.json is absent (it is in the npm package).
_GROUP_KEYS: tuple[str, ...] = (
    "smileys-emotion",
    "people-body",
    "component",
    "animals-nature",
    "food-drink",
    "travel-places",
    "activities",
    "objects",
    "symbols",
    "flags",
)

# Variation selector 16 ("emoji presentation") is spelled out by some sets and left out by others;
# it never changes which picture is meant, so the join key drops it.
_VS16 = "FE0F"


def normalize_hexcode(hexcode: str) -> str:
    """The join key of a code-point sequence: upper case, ``-`` separated, FE0F dropped.

    Leading zeros are normalised to at least four digits, because sets disagree there too
    (Fluent 3D names the copyright sign ``a9``, emojibase ``00A9``).

    Args:
        hexcode: A sequence such as ``"1f44b-1f3fb"``, ``"0023-FE0F-20E3"`` or ``"1F600_200D"``.

    Returns:
        The key, e.g. ``"1F44B-1F3FB"`` or ``"0023-20E3"``.

    Raises:
        ValueError: If a part is not hexadecimal or nothing is left.
    """
    parts = [p for p in re.split(r"[-_ ]+", hexcode.strip()) if p]
    out = []
    for p in parts:
        value = int(p, 16)  # raises ValueError on non-hex input
        part = f"{value:04X}"
        if part != _VS16:
            out.append(part)
    if not out:
        raise ValueError(f"empty code-point sequence: {hexcode!r}")
    return "-".join(out)


@dataclass(frozen=True)
class Concept:
    """One captioned emoji: a base entry or one of its skin-tone variants.

    Attributes:
        key: Join key (:func:`normalize_hexcode`), e.g. ``"1F44B-1F3FB"``.
        base_key: Join key of the base entry; equal to ``key`` for base entries. Splits by concept
            use it, so a skin-tone variant always lands with its base.
        emoji: The fully qualified character sequence (what a font renders).
        label: CLDR name, e.g. ``"waving hand: light skin tone"``.
        tags: Keywords, e.g. ``("bye", "hand", "hello", ...)``; variants inherit the base's.
        group: Group key, e.g. ``"people-body"``.
        subgroup: Subgroup key, e.g. ``"hand-fingers-open"`` (empty if unknown).
        skin_tone: Fitzpatrick tones 1-5 of a variant (two for couples), empty for a base.
    """

    key: str
    base_key: str
    emoji: str
    label: str
    tags: tuple[str, ...]
    group: str
    subgroup: str
    skin_tone: tuple[int, ...] = ()


def _read_member(source: Path, name: str) -> bytes | None:
    """Bytes of ``package/en/<name>`` from the npm tarball, or of ``<name>`` in a directory."""
    if source.is_dir():
        p = source / name
        return p.read_bytes() if p.is_file() else None
    with tarfile.open(source, "r:gz") as tar:
        try:
            member = tar.getmember(f"package/en/{name}")
        except KeyError:
            return None
        f = tar.extractfile(member)
        return f.read() if f is not None else None


def load_catalog(
    source: str | Path, *, include_flags: bool = False, include_components: bool = False
) -> list[Concept]:
    """Read emojibase's English data into concepts, in emojibase order.

    Entries without a group (the 26 bare regional-indicator letters) are never included: they
    are building blocks of flags, not pictures.

    Args:
        source: The ``emojibase-data-<ver>.tgz`` from ``npm pack``, or a directory holding
            ``data.json`` (and optionally ``messages.json``) in the same format (test fixtures).
        include_flags: Keep the "flags" group (270 base entries; mostly national flags).
        include_components: Keep the "component" group (skin-tone swatches, hair styles).

    Returns:
        Base entries each followed by their skin-tone variants.

    Raises:
        UserError: If the source is missing or unreadable.
    """
    source = Path(source)
    if not source.exists():
        raise UserError(f"emoji captions not found at {source}")
    try:
        data = json.loads(_read_member(source, "data.json") or b"null")
        messages_raw = _read_member(source, "messages.json")
    except (OSError, tarfile.TarError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read emoji captions from {source}: {e}") from None
    if not isinstance(data, list):
        raise UserError(f"no en/data.json list in {source}")
    groups, subgroups = _group_names(json.loads(messages_raw) if messages_raw else None)
    skip = set()
    if not include_flags:
        skip.add("flags")
    if not include_components:
        skip.add("component")

    concepts: list[Concept] = []
    for entry in data:
        if "group" not in entry:
            continue
        group = groups.get(entry["group"], str(entry["group"]))
        if group in skip:
            continue
        subgroup = subgroups.get(entry.get("subgroup", -1), "")
        base_key = normalize_hexcode(entry["hexcode"])
        tags = tuple(entry.get("tags", ()))
        concepts.append(Concept(base_key, base_key, entry["emoji"], entry["label"], tags, group, subgroup))
        for skin in entry.get("skins", ()):
            tone = skin.get("tone", ())
            tone = (tone,) if isinstance(tone, int) else tuple(tone)
            key = normalize_hexcode(skin["hexcode"])
            concepts.append(Concept(key, base_key, skin["emoji"], skin["label"], tags, group, subgroup, tone))
    return concepts


def _group_names(messages: dict[str, Any] | None) -> tuple[dict[int, str], dict[int, str]]:
    """Maps from emojibase's group/subgroup numbers to their keys."""
    if not messages:
        return dict(enumerate(_GROUP_KEYS)), {}
    groups = {g["order"]: g["key"] for g in messages.get("groups", ())}
    subgroups = {g["order"]: g["key"] for g in messages.get("subgroups", ())}
    return groups, subgroups


# --- captions -------------------------------------------------------------------------------------

# Heads that take no article: proper names and plurals that do not end in "s".
_NO_ARTICLE = frozenset(
    {
        "santa claus",
        "mrs. claus",
        "mx claus",
        "tokyo tower",
        "mount fuji",
        "people",
        "men",
        "women",
        "children",
        "tennis",
        "customs",
    }
)
# Singular words ending in "s" that the plural rule below would get wrong.
_SINGULAR_S = frozenset(
    {"bus", "minibus", "trolleybus", "kiss", "compass", "lotus", "wireless", "rhinoceros"}
)
# Words a head stops at: "people holding hands" is about "people", "nest with eggs" about a nest.
_HEAD_STOP = re.compile(
    r"\s(?:with|in|on|of|and|over|under|for|at|from|showing|holding|blowing|exhaling|"
    r"lifting|playing|wearing|getting|making|taking|raising|bouncing|climbing|riding)\s"
)
# Initialisms read letter by letter: "an A button", "an SOS button", but "a FREE button".
_AN_INITIALISM = frozenset({"A", "AB", "O", "ID", "NG", "OK", "SOS", "UP!", "ON!", "END", "ATM"})
_A_SOUND_VOWEL = ("uni", "use", "eu", "ewe", "one", "once", "ufo")


def with_article(label: str) -> str:
    """``label`` with "a"/"an" in front where English wants one.

    A heuristic that is right for emojibase's English labels in practice: "a red apple",
    "an ATM sign", "people holding hands", "Santa Claus", "an emoji" (sic, of the word), and
    the zodiac names left bare.

    Args:
        label: A CLDR emoji name, possibly with a ``": skin tone"`` suffix.

    Returns:
        The noun phrase with its article.
    """
    head = label.split(":")[0].strip()
    lower = head.lower()
    if not head or lower in _NO_ARTICLE or lower.startswith("statue of"):
        return ("the " if lower.startswith("statue of") else "") + label
    first = head.split()[0]
    # Single capitalised words are names (Aries, Leo, Pisces); "Japanese castle" still gets one.
    if " " not in head and head[0].isupper() and not head.isupper() and "-" not in head:
        return label
    # Plural heads take none: "grapes", "clinking beer mugs", "no bicycles".
    core = _HEAD_STOP.split(f" {lower} ", maxsplit=1)[0].split()
    last = core[-1] if core else lower.split()[-1]
    if last in ("people", "men", "women", "children"):
        return label
    if (
        last.endswith("s")
        and not last.endswith(("ss", "us", "is"))
        and last not in _SINGULAR_S
        and first.lower() not in ("a", "an", "one")
    ):
        return label
    if (first.isupper() and len(first) <= 4) or first.rstrip("!") in ("UP", "ON"):
        return ("an " if first in _AN_INITIALISM else "a ") + label
    starts_vowel = first[0].lower() in "aeiou" and not first.lower().startswith(_A_SOUND_VOWEL)
    if first.lower().startswith("hour"):
        starts_vowel = True
    return ("an " if starts_vowel else "a ") + label


def keyword_caption(concept: Concept, rng: random.Random, max_tags: int = 3) -> str:
    """``"red apple, fruit, food, red"``: the label and a few of its tags in random order.

    Args:
        concept: The emoji.
        rng: Random source (seeded per image, so captions are reproducible).
        max_tags: At most this many tags follow the label.

    Returns:
        The keyword caption; just the label when the concept has no tags.
    """
    words = set(re.split(r"[\s:,]+", concept.label.lower()))
    # Tags that repeat a word of the label ("apple" for "red apple") add nothing: use them last.
    fresh = [t for t in concept.tags if t.lower() not in words]
    echo = [t for t in concept.tags if t.lower() in words and t != concept.label]
    picked = rng.sample(fresh, min(max_tags, len(fresh)))
    picked += rng.sample(echo, min(max_tags - len(picked), len(echo)))
    return ", ".join([concept.label, *picked])


def make_captions(concept: Concept, rng: random.Random, style_name: str | None = None) -> list[str]:
    """All captions stored with one image, without the style first, then with it.

    The style is an optional part so a trainer can either ignore it (use the first three) or
    condition on it ("... in 3D style"); with several art styles mixed, it lets a prompt pick one.

    Args:
        concept: The emoji.
        rng: Random source for the keyword choice.
        style_name: Name used in "in <style> style", e.g. ``"Noto"``; ``None`` leaves those out.

    Returns:
        Distinct captions, e.g. ``["an emoji of a red apple", "a red apple",
        "red apple, fruit, food, red", "a red apple in Noto style", ...]``.
    """
    noun = with_article(concept.label)
    keywords = keyword_caption(concept, rng)
    captions = [f"an emoji of {noun}", noun, keywords]
    if style_name:
        captions += [
            f"{noun} in {style_name} style",
            f"an emoji of {noun} in {style_name} style",
            f"{keywords}, {style_name} style",
        ]
    return list(dict.fromkeys(captions))  # drop duplicates, keep order
