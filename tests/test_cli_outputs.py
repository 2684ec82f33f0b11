"""Unit tests of the shared CLI output/input plumbing (no model needed)."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from unclip.cli import outputs as O
from unclip.errors import UserError


def _img(color: tuple[int, int, int] = (200, 10, 10), size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def test_read_prompts_args_stdin_and_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("from file\n\n   \nsecond  \n")
    got = O.read_prompts(["a cat", "-"], str(f), stdin=io.StringIO("x\n\ny\n"))
    assert got == ["a cat", "x", "y", "from file", "second"]


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_prompt_refused(bad):
    with pytest.raises(UserError, match="empty prompt"):
        O.read_prompts([bad])


def test_no_prompts_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="no prompts"):
        O.read_prompts(["-"], stdin=io.StringIO("\n\n"))
    with pytest.raises(UserError, match="no such prompts file"):
        O.read_prompts([], str(tmp_path / "nope.txt"))


def test_prompt_length_check():
    O.check_prompt_lengths(["a b"], lambda s: len(s.split()) + 2, 4, truncate=False)
    with pytest.raises(UserError, match="over this model's limit"):
        O.check_prompt_lengths(["a b c"], lambda s: len(s.split()) + 2, 4, truncate=False)
    O.check_prompt_lengths(["a b c"], lambda s: len(s.split()) + 2, 4, truncate=True)


def test_ranges():
    O.check_steps(prior_steps=None, decoder_steps=1000)
    for v in (0, -3, 1001):
        with pytest.raises(UserError, match="--decoder-steps must be between 1 and 1000"):
            O.check_steps(decoder_steps=v)
    with pytest.raises(UserError):
        O.check_float_range("--eta", float("nan"), 0, 1)


def test_parse_item(tmp_path):
    p = tmp_path / "a.png"
    _img().save(p)
    ref = O.parse_item(str(p))
    assert isinstance(ref, O.ImageRef) and ref.path.is_absolute() and len(ref.sha256) == 64
    assert O.parse_item("a red circle") == "a red circle"
    with pytest.raises(UserError, match="no such image file"):
        O.parse_item(str(tmp_path / "missing.png"))
    t = tmp_path / "x.png"
    t.write_text("not an image")
    with pytest.raises(UserError, match="not an image file"):
        O.parse_item(str(t))
    assert O.item_from_json(O.item_json(ref)) == ref


def test_image_ref_detects_change(tmp_path):
    p = tmp_path / "a.png"
    _img().save(p)
    ref = O.image_ref(p)
    assert ref.load().size == (8, 8)
    _img((0, 0, 255)).save(p)
    with pytest.raises(UserError, match="changed"):
        ref.load()


def test_parse_weighted(tmp_path):
    items, w = O.parse_weighted(["a cat:0.25", "time: noon:0.75"])
    assert items == ["a cat", "time: noon"] and w == [0.25, 0.75]
    items, w = O.parse_weighted(["a", "b"])
    assert w == [1.0, 1.0]
    with pytest.raises(UserError, match="unparsable weight"):
        O.parse_weighted(["a:x", "b:1"])
    with pytest.raises(UserError, match="1 weights for 2 items"):
        O.parse_weighted(["a:1", "b"])
    with pytest.raises(UserError, match="at least two"):
        O.parse_weighted(["a:1"])
    with pytest.raises(UserError, match="all zero"):
        O.parse_weighted(["a:0", "b:0"])
    with pytest.raises(UserError, match="finite"):
        O.parse_weighted(["a:inf", "b:1"])
    assert O.parse_weighted(["a:-1", "b:1"])[1] == [-1.0, 1.0]


def test_prepare_out_dir(tmp_path):
    d = O.prepare_out_dir(tmp_path / "new" / "deep")
    assert d.is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        O.prepare_out_dir(f)
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="not an unclip manifest"):
        O.prepare_out_dir(bad)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_prepare_out_dir_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write"):
            O.prepare_out_dir(ro)
    finally:
        ro.chmod(0o700)


def test_writer_png_chunk_manifest_and_no_overwrite(tmp_path):
    out = O.prepare_out_dir(tmp_path / "o")
    w = O.OutputWriter(out, "generate")
    rec = {"command": "generate", "job": {"prompt": "x", "seed": 1}, "index": 0}
    p0 = w.write(_img(), rec)
    p1 = O.OutputWriter(out, "generate").write(_img(), {**rec, "index": 1})
    assert [p0.name, p1.name] == ["generate-0000.png", "generate-0001.png"]
    assert O.read_png_record(p0) == rec
    man = O.read_manifest(out / "manifest.json")
    assert [e["file"] for e in man["images"]] == [p0.name, p1.name]
    assert man["images"][1]["index"] == 1 and len(man["images"][0]["sha256"]) == 64
    # identical inputs give identical bytes (no timestamps in the chunk)
    assert O.png_bytes(_img(), rec) == p0.read_bytes()
    # a file in the way of the next number is skipped, never overwritten
    (out / "generate-0002.png").write_bytes(b"keep")
    p3 = w.write(_img(), rec)
    assert p3.name == "generate-0003.png" and (out / "generate-0002.png").read_bytes() == b"keep"
    json.loads((out / "manifest.json").read_text())


def test_prepare_out_dir_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="cannot write to --out"):
        O.prepare_out_dir(f / "sub")
