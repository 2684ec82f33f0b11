"""Webdataset shards: reproducible writing, decoding, rank x worker splitting, epochs, resume."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.data.wds import (
    WebDatasetShards,
    decode_field,
    dist_rank_world,
    encode_field,
    expand_urls,
    merge_state_dicts,
    write_shards,
)
from unclip.errors import UserError

N = 48


def image_of(i: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (i, 255 - i, (7 * i) % 256))


def samples(n: int = N) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {
            "__key__": f"s{i:04d}",
            "png": image_of(i),
            "txt": f"caption {i}",
            "json": {"i": i, "tags": ["x", "y"]},
            "cls": i % 5,
            "npy": np.arange(3, dtype=np.float32) + i,
            "safetensors": {"emb": torch.full((4,), float(i))},
        }


def all_keys(n: int = N) -> set[str]:
    return {f"s{i:04d}" for i in range(n)}


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    write_shards(
        ({"__key__": s["__key__"], "png": s["png"], "txt": s["txt"]} for s in samples()),
        tmp_path,
        shard_size=6,
    )
    return tmp_path


def keys_of(loader: Any) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]


# ---------------------------------------------------------------------------- writing
def test_write_is_reproducible_and_roundtrips_bytes(tmp_path: Path) -> None:
    a = write_shards(samples(10), tmp_path / "a", prefix="x", shard_size=4)
    b = write_shards(samples(10), tmp_path / "b", prefix="x", shard_size=4)
    assert [p.name for p in a] == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b))
    assert not list((tmp_path / "a").glob("*.tmp"))
    with tarfile.open(a[0]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:6]] == [
            f"s0000.{f}" for f in ("cls", "json", "npy", "png", "safetensors", "txt")
        ]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(946684800, 0, 0, "", "")}
        first = next(samples(1))
        for m in members[:6]:
            field = m.name.split(".", 1)[1]
            assert tar.extractfile(m).read() == encode_field(field, first[field])


def test_decoded_values_roundtrip(tmp_path: Path) -> None:
    write_shards(samples(10), tmp_path, shard_size=4)
    ds = WebDatasetShards(tmp_path, shuffle_buffer=0, shuffle_shards=False, rank=0, world_size=1)
    out = list(ds)
    assert [s["__key__"] for s in out] == [f"s{i:04d}" for i in range(10)]
    for i, s in enumerate(out):
        assert np.array_equal(np.asarray(s["png"]), np.asarray(image_of(i)))
        assert s["txt"] == f"caption {i}" and s["json"] == {"i": i, "tags": ["x", "y"]} and s["cls"] == i % 5
        assert torch.equal(s["npy"], torch.arange(3, dtype=torch.float32) + i)
        assert torch.equal(s["safetensors"]["emb"], torch.full((4,), float(i)))
        assert s["__shard__"].endswith(f"shard-{i // 4:06d}.tar")
    tensors = WebDatasetShards(
        tmp_path, size=8, fields={"image": "jpg;png", "caption": "txt"}, rank=0, world_size=1
    )
    s = next(iter(tensors))
    assert set(s) == {"image", "caption", "__key__", "__shard__", "__worker__", "__workers__", "__pos__"}
    i = int(s["__key__"][1:])
    assert torch.allclose(
        s["image"][:, 0, 0], torch.tensor(image_of(i).getpixel((0, 0)), dtype=torch.float32) / 127.5 - 1
    )


def test_write_rejects_bad_keys_and_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dot"):
        write_shards([{"__key__": "a.b", "txt": "x"}], tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([{"__key__": "a", "txt": "x"}, {"__key__": "a", "txt": "y"}], tmp_path)
    with pytest.raises(TypeError):
        write_shards([{"txt": object()}], tmp_path)


# ---------------------------------------------------------------------------- splitting
@pytest.mark.parametrize(("split", "shard_size"), [("shard", 6), ("sample", 20)])
def test_ranks_times_workers_cover_each_sample_once(tmp_path: Path, split: str, shard_size: int) -> None:
    # "shard": 8 shards over 4 global workers. "sample": 3 shards, fewer than the 4 workers.
    write_shards(
        ({"__key__": s["__key__"], "txt": s["txt"]} for s in samples()), tmp_path, shard_size=shard_size
    )
    for epoch in (0, 1):
        seen: Counter[str] = Counter()
        workers: set[int] = set()
        for rank in range(2):
            ds = WebDatasetShards(tmp_path, split=split, shuffle_buffer=8, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            for batch in torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2):
                seen.update(batch["__key__"])
                workers.update(batch["__worker__"].tolist())
                assert set(batch["__workers__"].tolist()) == {4}
        assert set(seen) == all_keys() and set(seen.values()) == {1}, f"epoch {epoch}: duplicates or gaps"
        assert workers == {0, 1, 2, 3}


def test_rank_from_environment(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_rank_world() == (1, 2)
    assert dist_rank_world(0, 4) == (0, 4)
    ds = WebDatasetShards(shard_dir, shuffle_buffer=0)
    assert (ds.rank, ds.world_size) == (1, 2)
    other = WebDatasetShards(shard_dir, shuffle_buffer=0, rank=0, world_size=2)
    assert {s["__key__"] for s in ds}.isdisjoint({s["__key__"] for s in other})
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert dist_rank_world() == (0, 1)
    with pytest.raises(ValueError):
        dist_rank_world(2, 2)


def test_epochs_shuffle_differently_and_reproducibly(shard_dir: Path) -> None:
    ds = WebDatasetShards(shard_dir, shuffle_buffer=10, seed=5, rank=0, world_size=1)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append([s["__key__"] for s in ds])
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(all_keys())
    assert orders[0] != orders[1]
    assert orders[0] == orders[2]
    assert ds.epoch_shards(0) != ds.epoch_shards(1)
    plain = WebDatasetShards(shard_dir, shuffle_buffer=0, shuffle_shards=False, rank=0, world_size=1)
    assert [s["__key__"] for s in plain] == sorted(all_keys())


# ---------------------------------------------------------------------------- resume
def test_resume_mid_epoch_yields_exactly_the_rest(shard_dir: Path) -> None:
    # A bad sample in the stream: positions count it, so resuming stays exact.
    (shard_dir / "shard-000003.tar").unlink()
    bad = [{"__key__": f"s{i:04d}", "png": image_of(i), "txt": f"caption {i}"} for i in range(18, 24)]
    bad[2]["png"] = b"not a png"
    write_shards(bad, shard_dir / "tmp", shard_size=6)
    shutil.move(shard_dir / "tmp" / "shard-000000.tar", shard_dir / "shard-000003.tar")
    expected = all_keys() - {"s0020"}

    def make() -> WebDatasetShards:
        ds = WebDatasetShards(shard_dir, size=8, shuffle_buffer=7, seed=1, rank=0, world_size=1)
        ds.set_epoch(3)
        return ds

    def loader(ds: WebDatasetShards) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)

    full: dict[int, list[str]] = {0: [], 1: []}
    for batch in loader(make()):
        for w, k in zip(batch["__worker__"].tolist(), batch["__key__"]):
            full[w].append(k)
    assert set(full[0] + full[1]) == expected

    ds = make()
    consumed: list[str] = []
    for step, batch in enumerate(loader(ds)):
        ds.record(batch)
        consumed += batch["__key__"]
        if step == 4:
            break  # "killed" after 5 batches; prefetched batches were never recorded
    state = json.loads(json.dumps(ds.state_dict()))
    assert state["epoch"] == 3 and state["num_global_workers"] == 2

    resumed = WebDatasetShards(shard_dir, size=8, shuffle_buffer=7, seed=1, rank=0, world_size=1)
    resumed.load_state_dict(state)
    rest: dict[int, list[str]] = {0: [], 1: []}
    for batch in loader(resumed):
        resumed.record(batch)
        for w, k in zip(batch["__worker__"].tolist(), batch["__key__"]):
            rest[w].append(k)
    assert set(consumed).isdisjoint(rest[0] + rest[1])
    assert sorted(consumed + rest[0] + rest[1]) == sorted(expected)
    for w in (0, 1):  # exactly the tail of each worker's uninterrupted stream, in order
        assert rest[w] == full[w][len(full[w]) - len(rest[w]) :]

    # A resumed epoch ends like any other: the next epoch starts from scratch.
    resumed.set_epoch(4)
    assert sorted(keys_of(loader(resumed))) == sorted(expected)


def test_resume_across_ranks_with_merged_state(shard_dir: Path) -> None:
    def make(rank: int) -> WebDatasetShards:
        return WebDatasetShards(shard_dir, shuffle_buffer=5, rank=rank, world_size=2, fields=["txt"])

    states, consumed = [], []
    for rank in range(2):
        ds = make(rank)
        for i, sample in enumerate(ds):
            ds.record(sample)
            consumed.append(sample["__key__"])
            if i == 6 + rank:
                break
        states.append(ds.state_dict())
    merged = merge_state_dicts(states)
    assert merged["consumed"] == {"0": 7, "1": 8}
    rest = []
    for rank in range(2):
        ds = make(rank)
        ds.load_state_dict(merged)
        rest += [s["__key__"] for s in ds]
    assert sorted(consumed + rest) == sorted(all_keys())


def test_resume_refuses_a_different_setup(shard_dir: Path) -> None:
    ds = WebDatasetShards(shard_dir, fields=["txt"], shuffle_buffer=5, rank=0, world_size=1)
    for batch in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2):
        ds.record(batch)
        break
    state = ds.state_dict()
    again = WebDatasetShards(shard_dir, shuffle_buffer=5, rank=0, world_size=1)
    again.load_state_dict(state)
    with pytest.raises(UserError, match="num_workers"):
        next(iter(again))  # 1 worker now, 2 when saved
    with pytest.raises(UserError, match="seed"):
        WebDatasetShards(shard_dir, seed=9, rank=0, world_size=1).load_state_dict(state)


# ---------------------------------------------------------------------------- bad data
def test_corrupt_samples_and_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    good = io.BytesIO()
    image_of(1).save(good, format="PNG")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        noise, format="PNG"
    )
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + iend
    items: list[dict[str, Any]] = [
        {"__key__": "ok1", "png": good.getvalue(), "txt": "fine"},
        {"__key__": "zero", "png": b"", "txt": "empty image"},
        {"__key__": "text", "png": b"hello", "txt": "not an image"},
        {"__key__": "trunc", "png": noise.getvalue()[:6000], "txt": "truncated"},
        {"__key__": "bomb", "png": bomb, "txt": "huge"},
        {"__key__": "badjson", "png": good.getvalue(), "json": b"{oops"},
        {"__key__": "nopng", "txt": "no image at all"},
        {"__key__": "ok2", "png": good.getvalue(), "txt": "fine too"},
    ]
    write_shards(items, tmp_path, shard_size=100)
    ds = WebDatasetShards(tmp_path, size=4, fields=["png"], shuffle_buffer=0, rank=0, world_size=1)
    assert [s["__key__"] for s in ds] == ["ok1", "badjson", "ok2"]
    assert ds.stats.as_dict() == {
        "empty": 1,
        "missing_field": 1,
        "not_image": 1,
        "too_large": 1,
        "truncated": 1,
    }
    everything = WebDatasetShards(tmp_path, shuffle_buffer=0, rank=0, world_size=1)
    assert [s["__key__"] for s in everything] == ["ok1", "nopng", "ok2"]
    assert everything.stats.counts["bad_field"] == 1

    # A shard cut off mid-way: earlier samples are kept, the rest of the shard is skipped.
    data = (tmp_path / "shard-000000.tar").read_bytes()
    (tmp_path / "shard-000000.tar").write_bytes(data[: len(data) // 2])
    cut = WebDatasetShards(tmp_path, fields=["txt"], shuffle_buffer=0, rank=0, world_size=1)
    keys = [s["__key__"] for s in cut]
    assert keys and keys[0] == "ok1" and "ok2" not in keys
    assert cut.stats.counts["bad_shard"] == 1


def test_decode_field_types() -> None:
    assert decode_field("seg.txt", b" hi \n") == "hi"
    assert decode_field("cls", b"7\n") == 7
    assert decode_field("other.bin", b"\x00\x01") == b"\x00\x01"
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="npy"):
        decode_field("npy", buf.getvalue())  # pickles are never loaded from shards


def test_url_expansion(shard_dir: Path) -> None:
    eight = [str(shard_dir / f"shard-{i:06d}.tar") for i in range(8)]
    assert expand_urls(shard_dir) == eight
    assert expand_urls(str(shard_dir / "shard-{000000..000007}.tar")) == eight
    assert expand_urls(str(shard_dir / "shard-00000{1,3}.tar")) == [eight[1], eight[3]]
    assert expand_urls(str(shard_dir / "*.tar")) == eight
    assert expand_urls([eight[2], Path(eight[0])]) == [eight[2], eight[0]]
    with pytest.raises(UserError, match="not found"):
        expand_urls(str(shard_dir / "shard-{000000..000009}.tar"))
    with pytest.raises(UserError):
        expand_urls(str(shard_dir / "nothing-*.tar"))


def test_pipe_urls_through_webdataset(shard_dir: Path) -> None:
    pytest.importorskip("webdataset")
    ds = WebDatasetShards(
        f"pipe:cat {shard_dir / 'shard-000000.tar'}", fields=["txt"], shuffle_buffer=0, rank=0, world_size=1
    )
    assert [s["__key__"] for s in ds] == [f"s{i:04d}" for i in range(6)]


def test_damaged_tar_is_reported_wherever_it_is_cut(tmp_path: Path) -> None:
    write_shards(
        ({"__key__": s["__key__"], "txt": s["txt"], "cls": s["cls"]} for s in samples(6)), tmp_path / "src"
    )
    data = (tmp_path / "src" / "shard-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "src" / "shard-000000.tar") as tar:
        m = tar.getmembers()[6]  # first member of the 4th sample
    garbage = bytearray(data)
    garbage[m.offset : m.offset + 512] = b"\xff" * 512
    variants = {
        "at a block boundary": data[: m.offset],
        "inside a header": data[: m.offset + 100],
        "inside member data": data[: m.offset_data + 1],
        "garbage header": bytes(garbage),
        "empty file": b"",
    }
    for what, content in variants.items():
        (tmp_path / "x.tar").write_bytes(content)
        ds = WebDatasetShards(tmp_path / "x.tar", shuffle_buffer=0, rank=0, world_size=1)
        keys = [s["__key__"] for s in ds]
        assert keys == ["s0000", "s0001", "s0002"][: len(keys)], what
        assert ds.stats.as_dict() == {"bad_shard": 1}, what
    (tmp_path / "x.tar").write_bytes(data)
    ok = WebDatasetShards(tmp_path / "x.tar", shuffle_buffer=0, rank=0, world_size=1)
    assert len(list(ok)) == 6 and ok.stats.total == 0
