"""`unclip train decoder|upsampler`: checkpoints, sample grids, resume, embedding shards, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from clip_helpers import tiny_clip
from unclip.checkpoint import load_component
from unclip.cli import main
from unclip.presets import get_preset
from unclip.train.config import TrainConfig
from unclip.train.decoder import train_decoder
from unclip.train.upsampler import train_upsampler


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip"
    tiny_clip().save(path)
    return path


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_train_decoder_shapes(clip_dir, tmp_path):
    out = tmp_path / "run"
    args = ["-q", "train", "decoder", "--data", "shapes", "--clip", str(clip_dir), "--out", str(out)]
    args += ["--preset", "decoder-tiny-test", "--eval-samples", "4", "--sample-steps", "3"]
    assert main(args) == 0
    dec, cfg, header = load_component(out / "decoder")
    assert header["kind"] == "decoder" and cfg.clip_dim == 32 and cfg.text_dim == 32
    assert (out / "state.pt").is_file() and (out / "samples" / "step-000004.png").is_file()
    assert len(rows(out / "log.csv")) == 4
    evals = rows(out / "eval.csv")
    assert [r["step"] for r in evals] == ["2", "4"] and "oracle_color" in evals[0]
    # The exported model decodes from an embedding alone.
    assert dec.sample(torch.randn(1, 32), steps=2, generator=torch.Generator()).shape == (1, 3, 16, 16)


def test_cli_train_upsampler(tmp_path):
    out = tmp_path / "up"
    args = ["-q", "train", "upsampler", "--data", "synthetic:16", "--out", str(out)]
    args += ["--preset", "upsampler-tiny-test", "--eval-samples", "2", "--sample-steps", "2", "--fp32"]
    assert main(args) == 0
    _, cfg, header = load_component(out / "upsampler")
    assert header["kind"] == "upsampler" and cfg.target_size == 32
    assert (out / "samples" / "step-000004.png").is_file()
    assert float(rows(out / "eval.csv")[-1]["psnr_bicubic"]) > 10
    assert json.loads((out / "run.json").read_text())["train"]["precision"] == "fp32"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("stage", ["decoder", "upsampler"])
def test_resume_continues_identically(clip_dir, tmp_path, stage):
    base = TrainConfig.from_dict(
        {**get_preset(f"{stage}-tiny-test")["train"], "sample_every": 0, "save_every": 2}
    )
    model = get_preset(f"{stage}-tiny-test")["model"]

    def run(out, steps, resume):
        cfg = base.replace(steps=steps)
        if stage == "decoder":
            return train_decoder(model, cfg, "synthetic:16", out, clip=str(clip_dir), resume=resume)
        return train_upsampler(model, cfg, "synthetic:16", out, resume=resume, crops_per_image=2)

    run(tmp_path / "straight", 4, False)
    run(tmp_path / "split", 2, False)
    res = run(tmp_path / "split", 4, True)
    assert res.step == 4
    a, b = _weights(tmp_path / "straight" / stage), _weights(tmp_path / "split" / stage)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_from_embedding_shards(clip_dir, tmp_path):
    """--data pointing at shapes-world embedding shards: images are re-rendered from the specs."""
    from unclip.clip import load_encoder
    from unclip.data.embeddings import EmbeddingShardWriter
    from unclip.data.shapes import image_tensor
    from unclip.data.shapes.stream import make_sample

    clip = load_encoder(clip_dir)
    specs, captions = zip(*(make_sample(0, i) for i in range(24)))
    images = torch.stack([image_tensor(s, clip.image_size) for s in specs])
    enc = clip.encode_text(list(captions))
    with EmbeddingShardWriter(tmp_path / "emb", shard_size=16) as w:
        w.write(
            {
                "image_emb": clip.encode_image(images),
                "text_emb": enc.text_emb,
                "text_tokens": enc.text_tokens,
                "text_mask": enc.text_mask,
                "caption": list(captions),
                "spec": [json.dumps(s.to_dict()) for s in specs],
            }
        )
    out = tmp_path / "run"
    args = ["-q", "train", "decoder", "--data", str(tmp_path / "emb"), "--out", str(out)]
    args += ["--preset", "decoder-tiny-test", "--steps", "2", "--eval-samples", "2", "--sample-steps", "2"]
    assert main(args) == 0
    assert (out / "decoder" / "component.json").is_file() and (out / "samples" / "step-000002.png").is_file()


def test_bad_inputs_exit_2(clip_dir, tmp_path, capsys):
    base = ["-q", "train", "decoder", "--out", str(tmp_path / "r"), "--preset", "decoder-tiny-test"]
    assert main([*base, "--data", "shapes"]) == 2  # no CLIP and no embedding shards
    assert main([*base, "--data", str(tmp_path / "missing"), "--clip", str(clip_dir)]) == 2
    assert main([*base, "--data", "shapes", "--clip", str(tmp_path / "no-clip")]) == 2
    assert main([*base, "--data", "shapes:64", "--clip", str(clip_dir)]) == 2  # decoder renders at its size
    assert main([*base[:-1], "nope", "--data", "shapes", "--clip", str(clip_dir)]) == 2
    wrong_kind = [*base[:-2], "--preset", "upsampler-tiny-test"]
    assert main([*wrong_kind, "--data", "shapes", "--clip", str(clip_dir)]) == 2
    up = ["-q", "train", "upsampler", "--out", str(tmp_path / "u"), "--preset", "upsampler-tiny-test"]
    assert main([*up, "--data", "synthetic:16", "--crops-per-image", "3"]) == 2
    assert main([*up, "--data", "synthetic:16", "--steps", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") >= 8
    # An existing run is not overwritten without --resume.
    run = ["-q", "train", "upsampler", "--out", str(tmp_path / "u2"), "--preset", "upsampler-tiny-test"]
    run += ["--data", "synthetic:16", "--steps", "1", "--sample-every", "0"]
    assert main(run) == 0
    assert main(run) == 2


def test_clip_sees_full_resolution_images_of_folder_data():
    """Non-shapes data: the decoder learns a downsized copy, CLIP embeds the image at its own size."""
    from unclip.train.decoder import image_stream

    stream, key = image_stream("synthetic:8", 16, 32, 4, 0, 0)
    batch = next(stream)
    assert key == "image_32" and batch["image"].shape == (4, 3, 16, 16) and batch[key].shape == (4, 3, 32, 32)
    down = torch.nn.functional.interpolate(batch[key], size=16, mode="area")
    assert torch.allclose(batch["image"], down)
    same, key = image_stream("synthetic:8", 16, 16, 4, 0, 0)
    assert key == "image" and next(same)["image"].shape == (4, 3, 16, 16)


def test_cli_compile_is_for_the_diffusion_stages(tmp_path, capsys):
    args = ["-q", "train", "clip", "--data", "synthetic:16", "--preset", "clip-tiny-test", "--compile"]
    assert main([*args, "--out", str(tmp_path / "c")]) != 0
    assert "--compile applies to decoder and upsampler training, not clip" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_cli_train_upsampler_compiled_matches_eager(tmp_path):
    """A real torch.compile run (fp32) trains to the same weights as the eager one."""
    base = ["-q", "train", "upsampler", "--data", "synthetic:16", "--preset", "upsampler-tiny-test"]
    base += ["--steps", "2", "--sample-every", "0", "--fp32"]
    assert main([*base, "--out", str(tmp_path / "eager")]) == 0
    assert main([*base, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert json.loads((tmp_path / "compiled" / "run.json").read_text())["train"]["compile"] is True
    eager, compiled = (
        _weights(tmp_path / "eager" / "upsampler"),
        _weights(tmp_path / "compiled" / "upsampler"),
    )
    assert eager.keys() == compiled.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-4, rtol=1e-3)
