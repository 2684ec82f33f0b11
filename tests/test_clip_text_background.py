"""Text-side background: forced background captions, background edits and --freeze-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unclip.cli import main
from unclip.data.shapes import caption, is_held_out, parse_caption, sample_scene
from unclip.train.data import ShapesBatches


def test_forced_background_caption_names_it_and_keeps_the_draws():
    named_anyway = 0
    for seed in range(60):
        spec = sample_scene(np.random.default_rng(seed))
        plain = caption(spec, np.random.default_rng([seed, 1]))
        forced = caption(spec, np.random.default_rng([seed, 1]), with_background=True)
        assert parse_caption(forced).background == spec.background, forced
        if parse_caption(plain).background is not None:
            named_anyway += 1
            assert forced == plain  # same random draws: only the phrase is added
        else:
            assert forced != plain
    assert 5 < named_anyway < 50  # "full" captions and a fifth of the others name it anyway


def _pairs(batch):
    half = len(batch["caption"]) // 2
    return [
        ((batch["caption"][i], batch["spec"][i]), (batch["caption"][i + half], batch["spec"][i + half]))
        for i in range(half)
    ]


def test_background_edits_change_only_the_background_and_name_it():
    from unclip.data.shapes import SceneSpec

    batch = next(ShapesBatches(16, 16, seed=2, counterfactual=True, background_edits=1.0))
    for (cap_a, spec_a), (cap_b, spec_b) in _pairs(batch):
        assert spec_a["background"] != spec_b["background"]
        assert spec_a["objects"] == spec_b["objects"]  # layout untouched
        assert parse_caption(cap_a).background == spec_a["background"]
        assert parse_caption(cap_b).background == spec_b["background"]
        assert not is_held_out(SceneSpec.from_dict(spec_b))
    # Without background edits, twins keep the background (one object attribute changes).
    plain = next(ShapesBatches(16, 16, seed=2, counterfactual=True))
    assert all(a[1]["background"] == b[1]["background"] for a, b in _pairs(plain))
    mixed = next(ShapesBatches(16, 64, seed=2, counterfactual=True, background_edits=0.5))
    edited = sum(a[1]["background"] != b[1]["background"] for a, b in _pairs(mixed))
    assert 6 <= edited <= 26


def test_background_edits_need_counterfactual_batches():
    from unclip.errors import UserError

    with pytest.raises(UserError, match="background edits"):
        ShapesBatches(16, 8, background_edits=0.5)
    with pytest.raises(UserError, match="background edits"):
        ShapesBatches(16, 8, counterfactual=True, background_edits=1.5)


def test_freeze_image_trains_the_text_tower_only(tmp_path, capsys):
    args = ["-q", "train", "clip", "--data", "shapes:16", "--preset", "clip-tiny-test", "--steps", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    # Needs a CLIP to start from, and cannot run the image-side probe.
    assert main([*args, "--out", str(tmp_path / "x"), "--freeze-image"]) == 2
    assert "--freeze-image" in capsys.readouterr().err
    init = ["--init-from", str(tmp_path / "a" / "clip")]
    bad = [*args, "--out", str(tmp_path / "y"), *init, "--freeze-image", "--aux-attributes", "1"]
    assert main(bad) == 2
    assert (
        main([*args, "--out", str(tmp_path / "z"), "--no-counterfactual", "--background-edits", "0.5"]) == 2
    )
    assert "--background-edits" in capsys.readouterr().err

    run = [*args, "--out", str(tmp_path / "b"), *init, "--freeze-image", "--background-edits", "0.5"]
    assert main(run) == 0
    before = load_file(str(tmp_path / "a" / "clip" / "model.safetensors"))
    after = load_file(str(tmp_path / "b" / "clip" / "model.safetensors"))
    assert before.keys() == after.keys()
    visual = [k for k in before if k.startswith("visual.")]
    text = [k for k in before if k.startswith("text.")]
    assert visual and text
    for k in visual:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert any(not torch.equal(after[k], before[k]) for k in text)
    # The settings are part of the run: resuming without them is refused.
    assert main([*args[:-1], "4", "--out", str(tmp_path / "b"), *init, "--resume"]) == 2
    assert (
        main(
            [
                *args[:-1],
                "4",
                "--out",
                str(tmp_path / "b"),
                *init,
                "--resume",
                "--freeze-image",
                "--background-edits",
                "0.5",
            ]
        )
        == 0
    )
