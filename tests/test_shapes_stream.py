"""Shapes world serving: the in-memory stream and `unclip data shapes` shards."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.cli import main
from unclip.data.shapes import SceneSpec, is_held_out, render
from unclip.data.shapes.stream import ShapesStream, collate_shapes, make_sample


def test_stream_items_and_determinism():
    items = list(itertools.islice(iter(ShapesStream(size=32, seed=3, extra_sizes=(64,))), 4))
    again = list(itertools.islice(iter(ShapesStream(size=32, seed=3, extra_sizes=(64,))), 4))
    for a, b in zip(items, again):
        assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.float32
        assert a["image_64"].shape == (3, 64, 64)
        assert a["image"].min() >= -1 and a["image"].max() <= 1
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
        spec = SceneSpec.from_dict(a["spec"])
        png = torch.from_numpy(np.asarray(render(spec, 32)).copy()).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(a["image"], png, atol=1e-6)
    assert [it["index"] for it in items] == [0, 1, 2, 3]


def test_stream_splits_ranks_and_resumes():
    def indices(**kw):
        return [it["index"] for it in itertools.islice(iter(ShapesStream(size=16, seed=1, **kw)), 3)]

    assert indices(rank=0, world_size=2) == [0, 2, 4]
    assert indices(rank=1, world_size=2) == [1, 3, 5]
    assert indices(start=10) == [10, 11, 12]
    first = next(iter(ShapesStream(size=16, seed=1, start=7)))
    spec, text = make_sample(1, 7)
    assert first["caption"] == text and first["spec"] == spec.to_dict()


def test_stream_workers_get_distinct_samples():
    loader = torch.utils.data.DataLoader(
        ShapesStream(size=16, seed=2, split="heldout"), batch_size=4, num_workers=2, collate_fn=collate_shapes
    )
    seen = []
    for batch in itertools.islice(loader, 4):
        assert batch["image"].shape == (4, 3, 16, 16)
        assert all(is_held_out(SceneSpec.from_dict(s)) for s in batch["spec"])
        seen += batch["index"]
    assert sorted(seen) == list(range(16))


def _shapes(tmp, name, *extra):
    out = tmp / name
    argv = ["-q", "data", "shapes", "--num", "12", "--sizes", "32,64", "--seed", "5", "--out", str(out)]
    assert main([*argv, "--shard-size", "5", *extra]) == 0
    return out


def test_cli_writes_reproducible_shards(tmp_path):
    a, b = _shapes(tmp_path, "a"), _shapes(tmp_path, "b")
    names = sorted(p.name for p in a.glob("shapes-*.tar"))
    assert names == ["shapes-000000.tar", "shapes-000001.tar", "shapes-000002.tar"]
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    with tarfile.open(a / names[0]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["000000000.32.png", "000000000.64.png", "000000000.json"]
        assert all(m.mtime == 0 and m.uid == 0 for m in members)
        meta = json.loads(tar.extractfile("000000000.json").read())
        png = Image.open(io.BytesIO(tar.extractfile("000000000.64.png").read()))
    spec = SceneSpec.from_dict(meta["spec"])
    assert meta["seed"] == 5 and meta["index"] == 0 and meta["split"] == "train"
    assert png.size == (64, 64) and png.tobytes() == render(spec, 64).tobytes()
    assert (spec, meta["caption"]) == make_sample(5, 0)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["num"] == 12 and manifest["shards"] == names


def test_cli_shards_read_with_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    out = _shapes(tmp_path, "w")
    urls = [str(p) for p in sorted(out.glob("shapes-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 12
    assert samples[0]["32.png"].size == (32, 32) and samples[0]["64.png"].size == (64, 64)
    assert samples[3]["json"]["index"] == 3


def test_cli_single_size_uses_png_key(tmp_path):
    out = tmp_path / "one"
    argv = ["-q", "data", "shapes", "--num", "3", "--size", "32", "--out", str(out), "--split", "heldout"]
    assert main(argv) == 0
    with tarfile.open(out / "shapes-000000.tar") as tar:
        assert tar.getnames() == [f"00000000{i}.{e}" for i in range(3) for e in ("png", "json")]
        meta = json.loads(tar.extractfile("000000001.json").read())
    assert is_held_out(SceneSpec.from_dict(meta["spec"]))


@pytest.mark.parametrize(
    "extra",
    [
        ["--num", "0"],
        ["--num", "3", "--size", "4"],
        ["--num", "3", "--sizes", "32,x"],
        ["--num", "3", "--shard-size", "0"],
        ["--num", "3", "--split", "test"],
        ["--num", "3", "--texture-prob", "2"],
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as e:  # argparse errors exit directly
        code = main(["data", "shapes", "--out", str(tmp_path / "x"), *extra])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err


def test_cli_refuses_to_mix_shards(tmp_path, capsys):
    out = _shapes(tmp_path, "m")
    argv = ["-q", "data", "shapes", "--num", "2", "--out", str(out)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("shapes-*.tar")) == ["shapes-000000.tar"]
