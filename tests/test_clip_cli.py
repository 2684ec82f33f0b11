"""`unclip train clip`, `unclip embed`, `unclip evaluate --clip` end to end with the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from unclip.cli import main
from unclip.clip import load_clip
from unclip.data.embeddings import EmbeddingShards


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["-q", "train", "clip", "--data", "synthetic:64", "--out", str(run), "--preset", "clip-tiny-test"]
    assert main([*args, "--steps", "4", "--save-every", "2"]) == 0
    assert main([*args, "--steps", "6", "--resume"]) == 0
    return run


def test_train_clip_writes_outputs(trained):
    for name in (
        "state.pt",
        "log.csv",
        "run.json",
        "tokenizer.json",
        "clip/component.json",
        "clip/tokenizer.json",
    ):
        assert (trained / name).is_file(), name
    rows = (trained / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and rows[-1].startswith("6,")
    clip = load_clip(trained / "clip")
    assert clip.encode_text(["a red square on the left"]).text_emb.shape == (1, 32)


def test_train_refuses_existing_run_without_resume(trained, capsys):
    code = main(
        ["train", "clip", "--data", "synthetic:64", "--out", str(trained), "--preset", "clip-tiny-test"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "/no/such/dir"], "data not found"),
        (["--data", "synthetic:64", "--preset", "no-such-preset"], "unknown preset"),
        (["--data", "synthetic:64", "--steps", "-3"], "steps"),
    ],
)
def test_bad_inputs_exit_2(tmp_path, capsys, extra, message):
    args = ["train", "clip", "--out", str(tmp_path / "r"), *extra]
    if "--preset" not in extra:
        args += ["--preset", "clip-tiny-test"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_config_key_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"vision": {"patchsize": 4}}}))
    assert (
        main(["train", "clip", "--data", "synthetic:8", "--out", str(tmp_path / "r"), "--config", str(cfg)])
        == 2
    )
    err = capsys.readouterr().err
    assert "patchsize" in err and err.count("\n") == 1
    cfg.write_text(json.dumps({"modle": {}}))
    assert (
        main(["train", "clip", "--data", "synthetic:8", "--out", str(tmp_path / "r"), "--config", str(cfg)])
        == 2
    )
    assert "modle" in capsys.readouterr().err


def test_embed_round_trip_and_resume(trained, tmp_path):
    clip_dir = trained / "clip"
    full, part = tmp_path / "full", tmp_path / "part"
    assert (
        main(
            [
                "-q",
                "embed",
                "--clip",
                str(clip_dir),
                "--data",
                "synthetic:20",
                "--out",
                str(full),
                "--batch-size",
                "8",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    args = [
        "-q",
        "embed",
        "--clip",
        str(clip_dir),
        "--data",
        "synthetic:20",
        "--out",
        str(part),
        "--batch-size",
        "8",
        "--dtype",
        "float32",
        "--shard-size",
        "4",
    ]
    assert main([*args, "--limit", "12"]) == 0
    assert main([*args, "--resume"]) == 0
    a, b = EmbeddingShards(full), EmbeddingShards(part)
    assert len(a) == len(b) == 20
    ra, rb = a.get_batch(range(20)), b.get_batch(range(20))
    for k in ("image_emb", "text_emb", "text_tokens", "text_mask"):
        assert torch.equal(ra[k], rb[k]), k
    assert ra["caption"] == rb["caption"] and len(set(ra["key"])) == 20
    clip = load_clip(clip_dir)
    from unclip.train.data import SyntheticCaptions

    ds = SyntheticCaptions(20, clip.image_size)
    x = torch.stack([ds[i]["image"] for i in range(3)])
    torch.testing.assert_close(ra["image_emb"][:3], clip.encode_image(x))
    enc = clip.encode_text(ra["caption"][:3])
    torch.testing.assert_close(ra["text_tokens"][:3], enc.text_tokens)
    assert torch.equal(ra["text_mask"][:3], enc.text_mask)


def test_embed_shapes_stores_specs(trained, tmp_path, capsys):
    from unclip.data.shapes import SceneSpec

    out = tmp_path / "e"
    assert (
        main(
            [
                "-q",
                "embed",
                "--clip",
                str(trained / "clip"),
                "--data",
                "shapes:16",
                "--out",
                str(out),
                "--limit",
                "5",
            ]
        )
        == 0
    )
    rows = EmbeddingShards(out).get_batch(range(5))
    spec = SceneSpec.from_dict(json.loads(rows["spec"][0]))
    assert len(spec.objects) >= 1
    assert (
        main(["embed", "--clip", str(trained / "clip"), "--data", "shapes", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "--limit" in capsys.readouterr().err


def test_embed_workers_write_the_same_shards(trained, tmp_path):
    outs = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        args = ["-q", "embed", "--clip", str(trained / "clip"), "--data", "shapes:16", "--out", str(out)]
        assert (
            main([*args, "--limit", "9", "--batch-size", "4", "--workers", workers, "--device", "cpu"]) == 0
        )
        outs.append(EmbeddingShards(out).get_batch(range(9)))
    a, b = outs
    assert a["key"] == b["key"] and a["caption"] == b["caption"]
    assert torch.equal(a["image_emb"], b["image_emb"]) and torch.equal(a["text_tokens"], b["text_tokens"])


def test_evaluate_shapes_writes_report(trained, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--clip",
                str(trained / "clip"),
                "--suite",
                "shapes",
                "--n",
                "12",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert set(res["zero_shot"]) == {"color", "shape", "size", "fill", "position", "background"}
    assert 0 <= res["binding"]["binding"] <= 1 and "val" in res["retrieval"]
    assert "| color |" in (out / "results.md").read_text().replace("| color | shape", "| color |")


def test_init_from_keeps_the_models_tokenizer(trained, tmp_path):
    """Fine-tuning a CLIP (--init-from) with another seed keeps its BPE vocabulary."""
    run = tmp_path / "ft"
    args = ["-q", "train", "clip", "--data", "synthetic:32", "--out", str(run), "--preset", "clip-tiny-test"]
    assert main([*args, "--steps", "2", "--seed", "5", "--init-from", str(trained / "clip")]) == 0
    assert (run / "tokenizer.json").read_bytes() == (trained / "clip" / "tokenizer.json").read_bytes()
