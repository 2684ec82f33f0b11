"""Embedding shards: round trip, low-precision storage, batched reads, resume, corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from unclip.data.embeddings import INDEX_NAME, EmbeddingShards, EmbeddingShardWriter, shard_name
from unclip.errors import UserError

D, L, W = 8, 5, 6


def make_batch(start: int, size: int) -> dict:
    g = torch.Generator().manual_seed(start)
    idx = torch.arange(start, start + size)
    return {
        "image_emb": torch.randn(size, D, generator=g),
        "text_emb": idx[:, None].float().expand(size, D).clone(),
        "text_tokens": torch.randn(size, L, W, generator=g),
        "text_mask": (torch.arange(L)[None] <= (idx[:, None] % L)),
        "caption": [f"caption ü {i}" for i in idx.tolist()],
        "key": [f"k{i:05d}" for i in idx.tolist()],
    }


def write_all(root: Path, total: int, batch: int, shard_size: int, **kw) -> dict:
    """Write samples 0..total-1 in batches; return the concatenated reference data."""
    chunks = []
    with EmbeddingShardWriter(root, shard_size=shard_size, **kw) as w:
        for start in range(0, total, batch):
            b = make_batch(start, min(batch, total - start))
            w.write(b)
            chunks.append(b)
    return concat(chunks)


def concat(chunks: list[dict]) -> dict:
    out = {}
    for name in chunks[0]:
        if isinstance(chunks[0][name], list):
            out[name] = [s for c in chunks for s in c[name]]
        else:
            out[name] = torch.cat([c[name] for c in chunks])
    return out


def assert_matches(ds: EmbeddingShards, ref: dict, atol: float = 0.0) -> None:
    batch = ds.get_batch(list(range(len(ds))))
    for name, value in ref.items():
        if isinstance(value, list):
            assert batch[name] == value, name
        elif value.is_floating_point():
            assert batch[name].dtype == torch.float32
            torch.testing.assert_close(batch[name], value, atol=atol, rtol=atol)
        else:
            assert torch.equal(batch[name], value), name


def test_roundtrip_index_and_single_items(tmp_path: Path) -> None:
    ref = write_all(tmp_path, total=23, batch=4, shard_size=10)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["num_samples"] == 23
    assert [(s["file"], s["num_samples"]) for s in index["shards"]] == [
        ("emb-000000.safetensors", 10),
        ("emb-000001.safetensors", 10),
        ("emb-000002.safetensors", 3),
    ]
    assert index["fields"]["text_tokens"] == {"dtype": "float32", "shape": [L, W]}
    assert index["fields"]["text_mask"] == {"dtype": "bool", "shape": [L]}
    assert index["fields"]["caption"] == {"dtype": "str"}
    ds = EmbeddingShards(tmp_path)
    assert len(ds) == 23 and ds.num_shards == 3
    assert_matches(ds, ref)
    item = ds[13]
    assert item["image_emb"].shape == (D,) and item["text_tokens"].shape == (L, W)
    assert torch.equal(item["image_emb"], ref["image_emb"][13]) and item["caption"] == "caption ü 13"
    assert ds[-1]["key"] == "k00022"
    with pytest.raises(IndexError):
        ds[23]


@pytest.mark.parametrize(("dtype", "atol"), [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_low_precision_storage_is_upcast(tmp_path: Path, dtype: str, atol: float) -> None:
    ref = write_all(tmp_path, total=12, batch=5, shard_size=8, float_dtype=dtype)
    assert json.loads((tmp_path / INDEX_NAME).read_text())["fields"]["image_emb"]["dtype"] == dtype
    ds = EmbeddingShards(tmp_path)
    ref = {k: v for k, v in ref.items() if k != "text_tokens"}
    assert_matches(ds, ref, atol=atol)
    assert ds[0]["text_tokens"].dtype == torch.float32
    assert EmbeddingShards(tmp_path, float_dtype=torch.float16)[0]["image_emb"].dtype == torch.float16


def test_get_batch_any_order_and_dataloader(tmp_path: Path) -> None:
    ref = write_all(tmp_path, total=30, batch=7, shard_size=8)
    ds = EmbeddingShards(tmp_path, fields=["text_emb", "caption"])
    order = [29, 0, 8, 8, -2, 15, 3]
    batch = ds[order]
    assert set(batch) == {"text_emb", "caption"}
    want = [i % 30 for i in order]
    assert torch.equal(batch["text_emb"], ref["text_emb"][want])
    assert batch["caption"] == [ref["caption"][i] for i in want]
    assert torch.equal(ds.get_batch(torch.tensor(order))["text_emb"], batch["text_emb"])
    with pytest.raises(UserError, match="no field"):
        EmbeddingShards(tmp_path, fields=["nope"])

    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 4, drop_last=False)
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)
    got = torch.cat([b["text_emb"] for b in loader])
    assert torch.equal(got, ref["text_emb"])


def test_resume_after_interrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = write_all(tmp_path / "ref", total=25, batch=3, shard_size=6)

    root = tmp_path / "run"
    w = EmbeddingShardWriter(root, shard_size=6)
    for start in range(0, 15, 3):
        w.write(make_batch(start, 3))
    # Killed here: 12 samples in two shards, 3 buffered and lost, never closed. Also simulate a
    # kill during the next shard's write (a .tmp) and one between its rename and the index update.
    del w
    (root / (shard_name(2) + ".tmp")).write_bytes(b"half a shard")
    shutil.copy(root / shard_name(0), root / shard_name(2))
    (root / (INDEX_NAME + ".tmp")).write_text("{")
    assert len(EmbeddingShards(root)) == 12  # readers only see indexed shards

    with pytest.raises(UserError, match="resume=True"):
        EmbeddingShardWriter(root, shard_size=6)
    with EmbeddingShardWriter(root, shard_size=6, resume=True) as w:
        assert w.num_existing == 12
        assert sorted(p.name for p in root.iterdir()) == [shard_name(0), shard_name(1), INDEX_NAME]
        for start in range(w.num_existing, 25, 3):
            w.write(make_batch(start, min(3, 25 - start)))
    ds = EmbeddingShards(root)
    assert len(ds) == 25
    assert_matches(ds, reference)
    # Resuming a finished folder appends nothing and changes nothing.
    before = (root / INDEX_NAME).read_bytes()
    EmbeddingShardWriter(root, shard_size=6, resume=True).close()
    assert (root / INDEX_NAME).read_bytes() == before


def test_resume_drops_a_damaged_shard_and_the_ones_after(tmp_path: Path) -> None:
    write_all(tmp_path, total=20, batch=5, shard_size=5)
    data = (tmp_path / shard_name(1)).read_bytes()
    (tmp_path / shard_name(1)).write_bytes(data[:-7])
    w = EmbeddingShardWriter(tmp_path, shard_size=5, resume=True)
    assert w.num_existing == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(0), INDEX_NAME]


def test_orphan_shards_without_index(tmp_path: Path) -> None:
    write_all(tmp_path, total=5, batch=5, shard_size=5)
    (tmp_path / INDEX_NAME).unlink()  # killed before the first index was written
    with pytest.raises(UserError, match=r"no index\.json"):
        EmbeddingShardWriter(tmp_path, shard_size=5)
    with pytest.raises(UserError, match=r"no index\.json"):
        EmbeddingShards(tmp_path)
    assert EmbeddingShardWriter(tmp_path, shard_size=5, resume=True).num_existing == 0
    assert not list(tmp_path.glob("emb-*"))


def test_corrupt_or_missing_shards_are_clear_errors(tmp_path: Path) -> None:
    write_all(tmp_path, total=12, batch=4, shard_size=4)
    path = tmp_path / shard_name(1)
    original = path.read_bytes()

    path.write_bytes(original[:-10])
    with pytest.raises(UserError, match=r"emb-000001\.safetensors: embedding shard truncated"):
        EmbeddingShards(tmp_path)

    path.write_bytes(b"\x00" * len(original))  # same size, garbage header
    ds = EmbeddingShards(tmp_path)
    assert ds[0]["key"] == "k00000"  # other shards still read
    with pytest.raises(UserError, match=r"emb-000001\.safetensors: corrupt embedding shard"):
        ds[5]

    flipped = bytearray(original)
    flipped[-1] ^= 0xFF  # payload damage only a checksum notices
    path.write_bytes(bytes(flipped))
    EmbeddingShards(tmp_path)
    with pytest.raises(UserError, match="checksum mismatch"):
        EmbeddingShards(tmp_path, verify="checksum")

    path.unlink()
    with pytest.raises(UserError, match=r"emb-000001\.safetensors: embedding shard missing"):
        EmbeddingShards(tmp_path)

    path.write_bytes(original)
    (tmp_path / INDEX_NAME).write_text("{not json")
    with pytest.raises(UserError, match="corrupt index"):
        EmbeddingShards(tmp_path)


def test_newer_format_and_schema_mismatches(tmp_path: Path) -> None:
    write_all(tmp_path, total=4, batch=4, shard_size=4)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["version"] = 99
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(UserError, match="newer"):
        EmbeddingShards(tmp_path / "new")

    with EmbeddingShardWriter(tmp_path, shard_size=4, resume=True) as w:
        with pytest.raises(UserError, match="image_emb"):
            w.write({**make_batch(4, 2), "image_emb": torch.zeros(2, D + 1)})
        with pytest.raises(UserError, match="fields"):
            w.write({k: v for k, v in make_batch(4, 2).items() if k != "caption"})
        with pytest.raises(ValueError, match="batch size"):
            w.write({**make_batch(4, 2), "key": ["only one"]})
        with pytest.raises(UserError, match="float16"):
            w.write({**make_batch(4, 2), "image_emb": torch.zeros(2, D, dtype=torch.float16)})
    assert len(EmbeddingShards(tmp_path)) == 4  # nothing half-written by the failed calls
