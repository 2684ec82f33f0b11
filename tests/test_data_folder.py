"""ImageCaptionFolder: caption sources, recursion, missing captions, bad files never stop a job."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.data.folder import ImageCaptionFolder
from unclip.errors import UserError


def save_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def build_folder(root: Path) -> None:
    """Three caption sources and a subfolder: 6 captioned images."""
    save_png(root / "a.png", (255, 0, 0))
    (root / "a.txt").write_text("a red square\n")
    save_png(root / "sub" / "b.png", (0, 255, 0))
    (root / "sub" / "b.txt").write_text("a green square")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, format="JPEG")
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "c.jpg").write_bytes(buf.getvalue())
    (root / "sub" / "captions.jsonl").write_text(
        json.dumps({"file": "deeper/c.jpg", "captions": ["blue one", "blue two"]})
        + "\n\n"
        + json.dumps({"file": "d.png", "caption": "gray"})
        + "\n"
    )
    save_png(root / "sub" / "d.png", (128, 128, 128))
    (root / "captions.csv").write_text(
        'file,caption\ne.png,"yellow, bright"\ne.png,yellow again\nf.png,black\n'
    )
    save_png(root / "e.png", (255, 255, 0))
    save_png(root / "f.png", (0, 0, 0))
    (root / "README.md").write_text("not an image, ignored")
    (root / ".hidden.png").write_bytes(b"ignored")


def test_caption_sources_and_recursion(tmp_path: Path) -> None:
    build_folder(tmp_path)
    ds = ImageCaptionFolder(tmp_path, size=8)
    keys = [ds[i]["key"] for i in range(len(ds))]
    assert keys == ["a", "e", "f", "sub/b", "sub/d", "sub/deeper/c"]
    assert ds.captions(0) == ("a red square",)
    assert ds.captions(1) == ("yellow, bright", "yellow again")
    assert ds.captions(5) == ("blue one", "blue two")
    item = ds[0]
    assert item["image"].shape == (3, 8, 8) and item["caption"] == "a red square" and item["index"] == 0
    assert torch.allclose(item["image"][:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert ds.stats.total == 0


def test_caption_choice_is_seeded(tmp_path: Path) -> None:
    build_folder(tmp_path)
    ds = ImageCaptionFolder(tmp_path, size=4, seed=3)
    picks = {ds.set_epoch(e) or ds[5]["caption"] for e in range(20)}
    assert picks == {"blue one", "blue two"}
    ds.set_epoch(7)
    again = ImageCaptionFolder(tmp_path, size=4, seed=3)
    again.set_epoch(7)
    assert [ds[i]["caption"] for i in range(6)] == [again[i]["caption"] for i in range(6)]
    first = ImageCaptionFolder(tmp_path, size=4, caption_choice="first")
    assert {first.set_epoch(e) or first[5]["caption"] for e in range(10)} == {"blue one"}


def test_pil_and_transform_outputs(tmp_path: Path) -> None:
    build_folder(tmp_path)
    assert ImageCaptionFolder(tmp_path)[0]["image"].size == (12, 8)
    ds = ImageCaptionFolder(tmp_path, transform=lambda im: im.size)
    assert ds[0]["image"] == (12, 8)
    with pytest.raises(ValueError):
        ImageCaptionFolder(tmp_path, size=4, transform=lambda im: im)


def test_missing_caption_error_or_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_folder(tmp_path)
    save_png(tmp_path / "sub" / "lonely.png", (1, 2, 3))
    (tmp_path / "blank.png").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "blank.txt").write_text("   \n")  # an empty caption is a missing caption
    with pytest.raises(UserError) as info:
        ImageCaptionFolder(tmp_path, size=4)
    msg = str(info.value)
    assert str(tmp_path / "blank.png") in msg and "1 more" in msg and "\n" not in msg
    with caplog.at_level(logging.WARNING):
        ds = ImageCaptionFolder(tmp_path, size=4, on_missing_caption="skip")
    assert len(ds) == 6
    assert ds.stats.counts["missing_caption"] == 2
    assert "without a caption" in caplog.text


def test_bad_files_are_skipped_deterministically_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_folder(tmp_path)
    good = (tmp_path / "a.png").read_bytes()
    rng = np.random.default_rng(0)
    noisy = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noisy, format="PNG")
    bad = {
        "b0_zero.png": b"",
        "b1_text.png": b"hello, I am text",
        "b2_trunc.png": noisy.getvalue()[:2000],
        "b3_garbage.jpg": bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).with_suffix(".txt").write_text("caption of a bad file")
    (tmp_path / "b4_ok.png").write_bytes(good)
    (tmp_path / "b4_ok.txt").write_text("fine")

    with caplog.at_level(logging.WARNING):
        ds = ImageCaptionFolder(tmp_path, size=4)
        # Zero-byte files are found while scanning; the others only when decoded.
        assert ds.stats.as_dict() == {"empty": 1}
        assert len(ds) == 6 + 1 + 3
        order = [ds[i]["key"] for i in range(len(ds))]
    # Indices 1..3 (b1..b3; the zero-byte b0 was dropped at scan time) fall through to b4_ok at index 4.
    assert order == ["a", "b4_ok", "b4_ok", "b4_ok", "b4_ok", "e", "f", "sub/b", "sub/d", "sub/deeper/c"]
    assert ds.stats.counts["not_image"] == 2
    assert ds.stats.counts["truncated"] + ds.stats.counts["corrupt"] == 1
    assert ds.stats.total == 4
    assert "b1_text.png" in caplog.text and "skipping" in caplog.text
    # Asking again does not decode (or count) a known-bad file twice.
    assert ds[2]["key"] == "b4_ok" and ds.stats.total == 4


def test_a_dataloader_with_workers_survives_bad_files(tmp_path: Path) -> None:
    build_folder(tmp_path)
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        (tmp_path / f"bad{i}.txt").write_text("bad")
    ds = ImageCaptionFolder(tmp_path, size=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == len(ds) == 9
    assert all(b["image"].shape[1:] == (3, 4, 4) for b in batches)


def test_all_bad_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    (tmp_path / "x.txt").write_text("x")
    ds = ImageCaptionFolder(tmp_path, size=4)
    with pytest.raises(UserError, match="none of the 1 images"):
        ds[0]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "captions.jsonl",
            '{"file": "a.png", "caption": "ok"}\n{not json\n',
            r"captions.jsonl:2: invalid JSON",
        ),
        ("captions.jsonl", '{"file": "a.png"}\n', "caption"),
        ("captions.jsonl", '{"file": "../outside.png", "caption": "x"}\n', "outside the dataset root"),
        ("captions.jsonl", '{"file": "/etc/passwd", "caption": "x"}\n', "relative"),
        ("captions.csv", "path,text\na.png,x\n", "'file' and 'caption'"),
    ],
)
def test_bad_caption_indexes(tmp_path: Path, name: str, text: str, match: str) -> None:
    save_png(tmp_path / "a.png", (0, 0, 0))
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=match):
        ImageCaptionFolder(tmp_path, size=4)


def test_orphan_entries_and_empty_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UserError, match="no captioned images"):
        ImageCaptionFolder(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        ImageCaptionFolder(tmp_path / "missing")
    save_png(tmp_path / "a.png", (0, 0, 0))
    (tmp_path / "captions.csv").write_text("file,caption\na.png,black\ngone.png,lost\n")
    with caplog.at_level(logging.WARNING):
        ds = ImageCaptionFolder(tmp_path)
    assert len(ds) == 1 and ds.stats.counts["caption_without_image"] == 1
    assert "gone.png" in caplog.text


def test_dangling_symlink_is_counted_not_fatal(tmp_path: Path) -> None:
    save_png(tmp_path / "a.png", (0, 0, 0))
    (tmp_path / "a.txt").write_text("black")
    (tmp_path / "gone.png").symlink_to(tmp_path / "does-not-exist.png")
    (tmp_path / "gone.txt").write_text("a link to nothing")
    ds = ImageCaptionFolder(tmp_path, size=4)
    assert len(ds) == 1 and ds.stats.as_dict() == {"missing": 1}
