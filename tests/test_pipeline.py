"""UnCLIPPipeline and the model directory format, on a tiny random-weight model.

The model is untrained, so these tests check plumbing, formats, errors and invariants
(determinism, callbacks, shapes), never image quality.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_helpers import TINY_DEFAULTS, make_tiny_model, tiny_components
from unclip.errors import UserError
from unclip.pipeline import UnCLIPOutput, UnCLIPPipeline, list_bundles, register_bundle, save_model
from unclip.pipeline import model_dir as model_dir_mod

PROMPTS = ["a red circle", "a big blue square"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pipe(model_dir) -> UnCLIPPipeline:
    return UnCLIPPipeline.from_pretrained(model_dir)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg, msg
    return msg


# ---------------------------------------------------------------------------- outputs


def test_outputs_for_every_output_type(pipe):
    pt = pipe(PROMPTS, num_images_per_prompt=2, seed=0, output_type="pt")
    assert isinstance(pt, UnCLIPOutput)
    assert pt.images.shape == (4, 3, 64, 64) and pt.images.dtype == torch.float32
    assert pt.images.min() >= 0.0 and pt.images.max() <= 1.0 and pt.images.std() > 0.01
    assert pt.image_embeds.shape == (4, 32) and pt.text_embeds.shape == (4, 32)
    torch.testing.assert_close(pt.image_embeds.norm(dim=-1), torch.ones(4))
    # Prompt-major: images 0, 1 belong to prompt 0; their text embedding is CLIP's.
    z_t = pipe.clip.encode_text(PROMPTS).text_emb
    torch.testing.assert_close(pt.text_embeds, z_t.repeat_interleave(2, 0))
    assert pt.seeds == (0, 1, 2, 3)
    assert not torch.equal(pt.images[0], pt.images[1])  # different noise per image

    arr = pipe(PROMPTS, num_images_per_prompt=2, seed=0, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (4, 64, 64, 3) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, pt.images.permute(0, 2, 3, 1).numpy())

    pil = pipe(PROMPTS, num_images_per_prompt=2, seed=0).images
    assert len(pil) == 4 and all(isinstance(im, Image.Image) and im.size == (64, 64) for im in pil)
    assert pil[0].mode == "RGB"
    expected = (pt.images[3] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(pil[3]), expected)


def test_model_without_upsampler_or_ar_prior(tmp_path):
    pipe = UnCLIPPipeline.from_pretrained(
        make_tiny_model(tmp_path / "m", with_ar=False, with_upsampler=False)
    )
    out = pipe("a red circle", seed=0, output_type="pt")
    assert out.images.shape == (1, 3, 16, 16) and pipe.image_size == 16
    with pytest.raises(UserError, match="no autoregressive prior") as e:
        pipe("a red circle", prior="ar")
    one_line(e)


def test_ar_prior_path(pipe):
    ar = pipe(PROMPTS, seed=0, prior="ar", output_type="pt")
    diff = pipe(PROMPTS, seed=0, output_type="pt")
    assert ar.images.shape == diff.images.shape
    torch.testing.assert_close(ar.image_embeds.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(ar.image_embeds, diff.image_embeds)
    again = pipe(PROMPTS, seed=0, prior="ar", output_type="pt")
    assert torch.equal(ar.images, again.images)


# ---------------------------------------------------------------------------- save / load


def test_save_load_gives_identical_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model.json").read_text())
    assert index["format"] == "unclip-model" and index["format_version"] == 1
    assert set(index["components"]) == {"clip", "prior", "prior_ar", "decoder", "upsampler1"}
    assert index["defaults"]["decoder_steps"] == TINY_DEFAULTS.decoder_steps
    assert (tmp_path / "copy" / "clip" / "tokenizer.json").is_file()
    loaded = UnCLIPPipeline.from_pretrained(tmp_path / "copy")
    assert loaded.defaults == pipe.defaults
    a = pipe(PROMPTS, seed=5, output_type="pt")
    b = loaded(PROMPTS, seed=5, output_type="pt")
    assert torch.equal(a.images, b.images) and torch.equal(a.image_embeds, b.image_embeds)


def test_save_model_rejects_bad_component_sets(tmp_path):
    comps = tiny_components(with_ar=False, with_upsampler=False)
    with pytest.raises(UserError, match="unknown component name"):
        save_model(tmp_path / "a", {**comps, "upsampler3": comps["decoder"]})
    with pytest.raises(UserError, match="needs the component"):
        save_model(tmp_path / "b", {"clip": comps["clip"], "prior": comps["prior"]})
    with pytest.raises(UserError, match="must be of kind"):
        save_model(tmp_path / "c", {**comps, "prior": comps["decoder"]})


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _break(kind: str, d: Path) -> None:
    index = d / "model.json"
    if kind == "no_index":
        index.unlink()
    elif kind == "unknown_index_key":
        _edit_json(index, lambda j: j.update(colour="red"))
    elif kind == "unknown_component":
        _edit_json(index, lambda j: j["components"].update(vae={"kind": "decoder", "path": "decoder"}))
    elif kind == "unknown_entry_key":
        _edit_json(index, lambda j: j["components"]["decoder"].update(dtype="bf16"))
    elif kind == "missing_required":
        _edit_json(index, lambda j: j["components"].pop("decoder"))
    elif kind == "wrong_kind":
        _edit_json(index, lambda j: j["components"]["prior"].update(kind="decoder"))
    elif kind == "path_escape":
        _edit_json(index, lambda j: j["components"]["decoder"].update(path="../elsewhere"))
    elif kind == "unknown_default":
        _edit_json(index, lambda j: j.update(defaults={"decoder_stepz": 3}))
    elif kind == "newer_format":
        _edit_json(index, lambda j: j.update(format_version=2))
    elif kind == "not_json":
        index.write_text("{not json")
    elif kind == "missing_dir":
        shutil.rmtree(d / "upsampler1")
    elif kind == "unknown_config_key":
        _edit_json(d / "decoder" / "component.json", lambda j: j["config"].update(guidance_scale=3.0))
    elif kind == "pickle":
        torch.save({"w": torch.zeros(2)}, d / "decoder" / "model.safetensors")
    elif kind == "corrupt_safetensors":
        data = (d / "decoder" / "model.safetensors").read_bytes()
        (d / "decoder" / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no_index", "no model.json"),
        ("unknown_index_key", "unknown key.*colour"),
        ("unknown_component", "unknown component 'vae'"),
        ("unknown_entry_key", "exactly the keys kind, path"),
        ("missing_required", "missing required component.*decoder"),
        ("wrong_kind", "must be of kind 'diffusion_prior'"),
        ("path_escape", "relative folder inside"),
        ("unknown_default", "unknown key.*decoder_stepz"),
        ("newer_format", "newer unclip.*upgrade"),
        ("not_json", "corrupt"),
        ("missing_dir", "folder not found"),
        ("unknown_config_key", "unknown key.*guidance_scale"),
        ("pickle", "pickle"),
        ("corrupt_safetensors", "corrupt safetensors"),
    ],
)
def test_bad_model_directories_are_one_line_user_errors(model_dir, tmp_path, kind, message):
    d = Path(shutil.copytree(model_dir, tmp_path / "m"))
    _break(kind, d)
    with pytest.raises(UserError, match=message) as e:
        UnCLIPPipeline.from_pretrained(d)
    one_line(e)


def test_bundle_names(model_dir, monkeypatch):
    monkeypatch.setattr(model_dir_mod, "_BUNDLES", {})
    with pytest.raises(UserError, match="known bundles") as e:
        UnCLIPPipeline.from_pretrained("no-such-bundle")
    one_line(e)
    register_bundle("tiny-test", model_dir)
    assert "tiny-test" in list_bundles()
    with pytest.raises(UserError, match=r"known bundles: .*tiny-test"):
        UnCLIPPipeline.from_pretrained("no-such-bundle")
    assert UnCLIPPipeline.from_pretrained("tiny-test").defaults == TINY_DEFAULTS
    with pytest.raises(UserError, match=r"no model\.json"):
        register_bundle("broken", model_dir / "decoder")


def test_shipped_bundle_folder_is_found(model_dir, tmp_path, monkeypatch):
    """Bundles shipped at unclip/bundles/<name>/model.json resolve by name (folder may be absent)."""
    monkeypatch.setattr(model_dir_mod, "BUNDLE_DIR", tmp_path / "absent")
    assert list_bundles() == sorted(model_dir_mod._BUNDLES)  # no shipped folder: registered names only
    shutil.copytree(model_dir, tmp_path / "bundles" / "shipped")
    monkeypatch.setattr(model_dir_mod, "BUNDLE_DIR", tmp_path / "bundles")
    assert "shipped" in list_bundles()
    assert model_dir_mod.resolve_model("shipped") == tmp_path / "bundles" / "shipped"


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_images_and_different_seed_different(pipe):
    a = pipe(PROMPTS, num_images_per_prompt=2, seed=11, output_type="pt")
    b = pipe(PROMPTS, num_images_per_prompt=2, seed=11, output_type="pt")
    c = pipe(PROMPTS, num_images_per_prompt=2, seed=12, output_type="pt")
    assert torch.equal(a.images, b.images) and torch.equal(a.image_embeds, b.image_embeds)
    assert not torch.equal(a.images, c.images)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        pipe(PROMPTS, generator=g1, output_type="pt").images,
        pipe(PROMPTS, generator=g2, output_type="pt").images,
    )


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_image_i_regenerates_alone_with_its_seed(pipe, precision):
    """Per-image generators: image i of a batch is image 0 of a call with seed=seeds[i].

    Prompts are encoded one at a time. The diffusion prior and the decoder run batched, each
    sample drawing its noise from its own generator, so what differs is float rounding of
    batch-size-dependent kernels. Measured on the shapes bundle (docs/pipeline.md): fp32 within
    3e-7 (embeddings) and 5e-5 (pixels); bf16 mostly identical, at worst 1.1e-3 in an embedding
    and a mean pixel difference of 1.8e-3. This tiny model measures identical; drawing the noise
    as one batch would differ by ~1.
    """
    batch = pipe(PROMPTS, num_images_per_prompt=3, seed=20, output_type="pt", precision=precision)
    for i in (0, 4):
        alone = pipe(PROMPTS[i // 3], seed=batch.seeds[i], output_type="pt", precision=precision)
        assert (alone.image_embeds[0] - batch.image_embeds[i]).abs().max() <= 5e-3
        diff = (alone.images[0] - batch.images[i]).abs()
        assert diff.mean() <= 2e-3 and diff.max() <= 0.15


# ---------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("prior", ["diffusion", "ar"])
def test_callback_reports_every_step_of_every_stage(pipe, prior):
    calls: list[tuple[str, int, int]] = []
    pipe(PROMPTS, num_images_per_prompt=2, seed=0, prior=prior, callback=lambda *a: calls.append(a))
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["prior", "decoder", "upsampler1"]
    totals = {
        # The diffusion prior runs once for all four images; the AR prior once per image.
        "prior": TINY_DEFAULTS.prior_steps if prior == "diffusion" else 4,
        "decoder": 4,
        "upsampler1": 3,
    }
    for stage in stages:
        steps = [s for st, s, _ in calls if st == stage]
        assert steps == list(range(1, totals[stage] + 1)), (stage, steps)
        assert {t for st, _, t in calls if st == stage} == {totals[stage]}


def test_callback_totals_follow_step_arguments(pipe):
    calls: list[tuple[str, int, int]] = []
    pipe(
        "a red circle",
        seed=0,
        prior_steps=2,
        decoder_steps=5,
        upsampler_steps=2,
        callback=lambda *a: calls.append(a),
    )
    last = {st: (s, t) for st, s, t in calls}
    assert last == {"prior": (2, 2), "decoder": (5, 5), "upsampler1": (2, 2)}


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoder_steps": 0}, "decoder_steps must be between"),
        ({"decoder_steps": -3}, "decoder_steps must be between"),
        ({"prior_steps": 1001}, "prior_steps must be between"),
        ({"decoder_steps": 2.5}, "whole number"),
        ({"upsampler_steps": 0}, "upsampler_steps must be between"),
        ({"upsampler_steps": [2, 2]}, "one per upsampler"),
        ({"prior_guidance_scale": -1.0}, "prior_guidance_scale must be >= 0"),
        ({"decoder_guidance_scale": float("nan")}, "finite"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt must be >= 1"),
        ({"output_type": "jpg"}, "output_type"),
        ({"prior": "gan"}, "prior must be"),
        ({"precision": "fp8"}, "precision must be"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 1, "generator": torch.Generator()}, "not both"),
        ({"negative_prompt": ["x", "y", "z"]}, "negative_prompt"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(pipe, kwargs, message):
    with pytest.raises(UserError, match=message) as e:
        pipe(PROMPTS, **kwargs)
    one_line(e)


@pytest.mark.parametrize("prompt", ["", "   ", [], ["ok", ""], 3])
def test_bad_prompts(pipe, prompt):
    with pytest.raises(UserError) as e:
        pipe(prompt)
    one_line(e)


def test_over_long_prompt_is_truncated_with_a_warning(pipe, caplog):
    long = " ".join(["big red circle"] * 40)
    with caplog.at_level(logging.WARNING):
        out = pipe(long, seed=0, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64)
    assert any("trunc" in r.getMessage().lower() for r in caplog.records)


def test_negative_prompt_moves_the_prior(pipe):
    base = pipe("a red circle", seed=0, output_type="pt")
    none = pipe("a red circle", seed=0, output_type="pt", negative_prompt="")
    neg = pipe("a red circle", seed=0, output_type="pt", negative_prompt="a blue square")
    assert torch.equal(base.image_embeds, none.image_embeds)
    assert not torch.allclose(base.image_embeds, neg.image_embeds)
    # At guidance 1 only the conditional branch runs, so the negative caption cannot matter.
    one = pipe("a red circle", seed=0, output_type="pt", prior_guidance_scale=1.0)
    one_neg = pipe(
        "a red circle", seed=0, output_type="pt", prior_guidance_scale=1.0, negative_prompt="a blue square"
    )
    assert torch.equal(one.image_embeds, one_neg.image_embeds)


# ---------------------------------------------------------------------------- package surface


def test_import_unclip_stays_light():
    code = (
        "import sys, unclip; assert 'torch' not in sys.modules, 'torch imported'; "
        "P = unclip.UnCLIPPipeline; assert 'torch' in sys.modules and P.__name__ == 'UnCLIPPipeline'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipeline_rejects_mismatched_components():
    comps = tiny_components(with_ar=False, with_upsampler=False)
    other = tiny_components(with_ar=False, with_upsampler=False)
    UnCLIPPipeline(comps["clip"], other["decoder"])  # same widths: fine
    bad = comps["decoder"].__class__(comps["decoder"].config.replace(clip_dim=16))
    with pytest.raises(UserError, match="does not match"):
        UnCLIPPipeline(comps["clip"], bad)


def test_prior_settings_fill_defaults_per_prior():
    d = TINY_DEFAULTS.replace(prior_guidance_scale=2.0, ar_guidance_scale=4.0)
    assert d.prior_settings() == {"prior": "diffusion", "prior_steps": 4, "prior_guidance": 2.0}
    assert d.prior_settings("ar") == {"prior": "ar", "prior_steps": None, "prior_guidance": 4.0}
    assert d.prior_settings("diffusion", 7, 0.0) == {
        "prior": "diffusion",
        "prior_steps": 7,
        "prior_guidance": 0.0,
    }
