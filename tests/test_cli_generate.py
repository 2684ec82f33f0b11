"""End-to-end tests of `unclip generate | vary | interpolate | mix | edit | inspect` on a tiny model."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline_helpers import make_tiny_model
from unclip.cli import main
from unclip.cli.generate import DEFAULT_MODEL
from unclip.cli.outputs import read_manifest, read_png_record
from unclip.pipeline import resolve_model
from unclip.pipeline.model_dir import BUNDLE_DIR


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch):
    # `unclip -q` sets UNCLIP_QUIET in os.environ; monkeypatch restores it after each test.
    monkeypatch.setenv("UNCLIP_QUIET", "0")


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "pic.png"
    Image.new("RGB", (24, 20), (200, 40, 40)).save(p)
    return p


def run(capsys, *argv: str) -> tuple[int, str, str]:
    os.environ["UNCLIP_QUIET"] = "0"  # main() sets it for -q and never unsets it
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def check_outputs(out: Path, printed: str, count: int, side: int, command: str) -> list[dict]:
    """PNGs valid and of the right size, printed, listed in the manifest with matching chunks."""
    paths = [Path(line) for line in printed.splitlines()]
    assert len(paths) == count and all(p.parent == out and p.name.startswith(command) for p in paths)
    entries = read_manifest(out / "manifest.json")["images"]
    assert [e["file"] for e in entries[-count:]] == [p.name for p in paths]
    for p, e in zip(paths, entries[-count:]):
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size == (side, side) and im.mode == "RGB"
        record = read_png_record(p)
        assert record == {k: v for k, v in e.items() if k not in ("file", "sha256")}
        assert record["command"] == command and record["unclip_version"]
        assert "seed" in record["job"] and "decoder_steps" in record["job"]
    return entries[-count:]


def regenerates(capsys, tmp_path: Path, out: Path, index: int | None = None) -> None:
    """`generate --from-manifest` writes byte-identical PNGs."""
    again = tmp_path / f"again{index}"
    argv = ["-q", "generate", "--from-manifest", str(out / "manifest.json"), "--out", str(again)]
    if index is not None:
        argv += ["--index", str(index)]
    assert run(capsys, *argv)[0] == 0
    entries = read_manifest(out / "manifest.json")["images"]
    entries = entries if index is None else [entries[index]]
    new = read_manifest(again / "manifest.json")["images"]
    assert len(new) == len(entries)
    for old, fresh in zip(entries, new):
        assert (again / fresh["file"]).read_bytes() == (out / old["file"]).read_bytes()
        assert fresh["sha256"] == old["sha256"]


# ---------------------------------------------------------------------------- commands


def test_generate_end_to_end(capsys, tmp_path, model):
    out = tmp_path / "gen"
    code, printed, err = run(
        capsys, "generate", "a red circle", "a big blue square", "--model", str(model),
        "--num-images", "2", "--seed", "5", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 4, 64, "generate")
    assert [e["job"]["prompt"] for e in entries] == ["a red circle"] * 2 + ["a big blue square"] * 2
    assert [e["seed"] for e in entries] == [5, 6, 7, 8]
    assert entries[0]["model"]["dir"] == str(model.resolve())
    assert entries[0]["job"]["upsampler_steps"] == [3] and entries[0]["job"]["size"] == 64
    regenerates(capsys, tmp_path, out)
    with Image.open(out / "grid-generate-0000.png") as grid:  # 4 tiles of 64 px, 2 px apart
        assert grid.size == (4 * 64 + 5 * 2, 64 + 2 * 2)
    timing = [line for line in err.splitlines() if line.startswith("time: ")]
    assert len(timing) == 1 and all(
        k in timing[0] for k in ("load", "prior", "decoder", "upsampler1", "total")
    )
    # a second run into the same folder adds numbered files and manifest entries
    code, printed, err = run(capsys, "generate", "a red circle", "--model", str(model), "--out", str(out))
    assert code == 0 and printed.strip().endswith("generate-0004.png")
    assert "grid:" not in err  # one image: no contact sheet
    assert len(read_manifest(out / "manifest.json")["images"]) == 5


def test_generate_inputs_size_prior_and_quiet(capsys, tmp_path, model, monkeypatch):
    out = tmp_path / "g"
    f = tmp_path / "prompts.txt"
    f.write_text("a small green triangle\n\n   \n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a red circle\n\na blue square\n"))
    code, printed, _ = run(
        capsys, "generate", "-", "--prompts-file", str(f), "--model", str(model), "--size", "16",
        "--prior", "ar", "--decoder-steps", "2", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 3, 16, "generate")
    assert [e["job"]["prompt"] for e in entries] == [
        "a red circle",
        "a blue square",
        "a small green triangle",
    ]
    assert entries[0]["job"]["prior"] == "ar" and entries[0]["job"]["upsampler_steps"] == []
    regenerates(capsys, tmp_path, out, index=2)
    code, printed, _ = run(capsys, "-q", "generate", "a red circle", "--model", str(model), "--out", str(out))
    assert code == 0 and printed == ""


def test_vary(capsys, tmp_path, model, picture):
    out = tmp_path / "v"
    code, printed, _ = run(
        capsys, "vary", str(picture), "--num-images", "2", "--eta", "0.5", "--seed", "1",
        "--model", str(model), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 2, 64, "vary")
    job = entries[0]["job"]
    assert job["image"]["image"] == str(picture.resolve()) and len(job["image"]["sha256"]) == 64
    assert job["eta"] == 0.5 and job["mode"] == "inverted"
    regenerates(capsys, tmp_path, out, index=1)


def test_interpolate_image_and_prompt(capsys, tmp_path, model, picture):
    out = tmp_path / "i"
    code, printed, _ = run(
        capsys, "interpolate", str(picture), "a blue square", "--frames", "3", "--seed", "2",
        "--model", str(model), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 3, 64, "interpolate")
    assert "image" in entries[0]["job"]["a"] and entries[0]["job"]["b"] == {"prompt": "a blue square"}
    regenerates(capsys, tmp_path, out)


def test_mix_and_edit(capsys, tmp_path, model, picture):
    out = tmp_path / "m"
    code, printed, _ = run(
        capsys, "mix", f"{picture}:0.25", "a big red circle:0.75", "--size", "16", "--model", str(model),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 1, 16, "mix")
    assert entries[0]["job"]["weights"] == [0.25, 0.75]
    regenerates(capsys, tmp_path, out)
    out = tmp_path / "e"
    code, printed, _ = run(
        capsys, "edit", str(picture), "--to", "a blue circle", "--from", "a red circle", "--frames", "2",
        "--model", str(model), "--out", str(out),
    )  # fmt: skip
    assert code == 0
    entries = check_outputs(out, printed, 2, 64, "edit")
    assert entries[0]["job"]["to"] == "a blue circle" and entries[0]["job"]["from"] == "a red circle"
    regenerates(capsys, tmp_path, out, index=1)


def test_other_modes(capsys, tmp_path, model, picture):
    out = tmp_path / "modes"
    argv = ["--model", str(model), "--out", str(out), "--size", "16", "--seed", "4"]
    assert run(capsys, "-q", "vary", str(picture), "--mode", "noise", "--num-images", "1", *argv)[0] == 0
    other = tmp_path / "other.png"
    Image.new("RGB", (16, 16), (0, 0, 255)).save(other)
    code, printed, _ = run(
        capsys, "interpolate", str(picture), str(other), "--latent", "interpolate", "--frames", "2", *argv
    )
    assert code == 0
    entries = check_outputs(out, printed, 2, 16, "interpolate")
    assert entries[0]["job"]["latent"] == "interpolate" and "image" in entries[0]["job"]["b"]
    assert read_manifest(out / "manifest.json")["images"][0]["job"]["mode"] == "noise"
    regenerates(capsys, tmp_path, out)


def test_inspect(capsys, model):
    code, printed, _ = run(capsys, "inspect", str(model))
    assert code == 0
    for word in (
        "clip",
        "prior",
        "prior_ar",
        "decoder",
        "upsampler1",
        "params=",
        "format_version",
        "defaults",
    ):
        assert word in printed
    code, printed, _ = run(capsys, "inspect", str(model), "--json")
    d = json.loads(printed)
    assert d["format_version"] == 1 and d["defaults"]["decoder_steps"] == 4
    assert d["total_parameters"] == sum(c["parameters"] for c in d["components"].values()) > 0
    assert d["components"]["decoder"]["kind"] == "decoder" and "unet" in d["components"]["decoder"]["config"]


# ---------------------------------------------------------------------------- bad input


LONG = " ".join(["a red circle"] * 6)  # 18 words + start/end: over the tiny CLIP's 16 tokens


@pytest.fixture(scope="module")
def not_image(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bad") / "x.png"
    p.write_text("this is text")
    return p


BAD = [
    (["generate"], "no prompts"),
    (["generate", "a", "--index", "0"], "--index goes with --from-manifest"),
    (["generate", ""], "empty prompt"),
    (["generate", "   "], "empty prompt"),
    (["generate", LONG], "over this model's limit of 16"),
    (["generate", "a", "--decoder-steps", "0"], "--decoder-steps must be between 1 and 1000"),
    (["generate", "a", "--prior-steps", "-2"], "--prior-steps must be between 1 and 1000"),
    (["generate", "a", "--upsampler-steps", "1001"], "--upsampler-steps must be between 1 and 1000"),
    (["generate", "a", "--num-images", "0"], "--num-images must be between 1 and 64"),
    (["generate", "a", "--num-images", "65"], "--num-images must be between 1 and 64"),
    (["generate", "a", "--size", "32"], "valid --size values: 16, 64"),
    (["generate", "a", "--decoder-guidance", "nan"], "--decoder-guidance"),
    (["vary", "{tmp}/missing.png"], "no such image file"),
    (["vary", "{notimage}"], "not an image file"),
    (["vary", "{picture}", "--eta", "2"], "--eta must be between 0 and 1"),
    (["interpolate", "{tmp}/missing.jpg", "a cat"], "no such image file"),
    (["interpolate", "a", "b", "--frames", "1"], "--frames must be between 2 and 256"),
    (["edit", "{picture}", "--to", "a cat", "--frames", "1"], "--frames must be between 2 and 256"),
    (["edit", "{picture}", "--to", " "], "empty prompt"),
    (["edit", "{picture}", "--to", "x", "--max-theta", "0"], "--max-theta"),
    (["mix", "a:1", "b"], "1 weights for 2 items"),
    (["mix", "a:heavy", "b:1"], "unparsable weight"),
    (["mix", "a:1"], "at least two"),
    (["mix", "{notimage}:1", "b:1"], "not an image file"),
    (["generate", "a", "--out", "{notimage}"], "exists and is not a folder"),
    (["generate", "a", "--out", "{notimage}/sub"], "cannot write to --out"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_exit_2(capsys, tmp_path, model, picture, not_image, argv, message):
    fill = {"tmp": str(tmp_path), "picture": str(picture), "notimage": str(not_image)}
    argv = [a.format(**fill) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, printed, err = run(capsys, *argv, "--model", str(model))
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and printed == ""
    assert not list(tmp_path.glob("out/*.png"))


def test_unknown_and_default_model(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "a cat", "--model", "no-such-model", "--out", str(tmp_path / "o"))
    assert code == 2 and "no model directory or bundle named 'no-such-model'" in err
    assert "known bundles: emoji, shapes" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    # without --model, the shipped bundle is used
    assert resolve_model(DEFAULT_MODEL) == BUNDLE_DIR / "shapes"
    code, _, err = run(capsys, "inspect", "no-such-model")
    assert code == 2 and "no-such-model" in err


def test_long_prompt_truncates_with_warning(capsys, caplog, tmp_path, model):
    out = tmp_path / "t"
    with caplog.at_level(logging.WARNING):
        code, printed, _ = run(
            capsys, "generate", LONG, "--truncate", "--model", str(model), "--out", str(out)
        )
    assert code == 0 and len(printed.splitlines()) == 1
    assert "truncated to 16 tokens" in caplog.text


def test_manifest_errors(capsys, tmp_path, model, picture):
    code, _, err = run(capsys, "generate", "--from-manifest", str(tmp_path / "none.json"))
    assert code == 2 and "no such manifest" in err
    out = tmp_path / "v"
    assert run(capsys, "-q", "mix", f"{picture}:1", "a:1", "--model", str(model), "--out", str(out))[0] == 0
    code, _, err = run(capsys, "generate", "--from-manifest", str(out / "manifest.json"), "--index", "3")
    assert code == 2 and "--index must be between 0 and 0" in err
    Image.new("RGB", (24, 20), (0, 0, 255)).save(tmp_path / "changed.png")
    picture_copy = tmp_path / "pic.png"
    picture_copy.write_bytes(picture.read_bytes())
    out2 = tmp_path / "v2"
    assert (
        run(capsys, "-q", "mix", f"{picture_copy}:1", "a:1", "--model", str(model), "--out", str(out2))[0]
        == 0
    )
    picture_copy.write_bytes((tmp_path / "changed.png").read_bytes())
    code, _, err = run(
        capsys, "generate", "--from-manifest", str(out2 / "manifest.json"), "--out", str(tmp_path / "r")
    )
    assert code == 2 and "changed since it was recorded" in err


def test_subprocess_bad_input_one_line(tmp_path, model):
    for argv in (["generate", "", "--model", str(model)], ["vary", str(tmp_path / "nope.png")]):
        proc = subprocess.run(
            [sys.executable, "-m", "unclip", *argv, "--out", str(tmp_path / "o")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"unclip {argv[0]}: error: ")
