"""The shapes world's auxiliary attribute probe for CLIP training (``--aux-attributes``)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from unclip.cli import main
from unclip.train.clip import AttributeProbe


def _spec(*objects):
    return {"objects": [dict(o) for o in objects], "background": "white"}


def test_probe_targets_name_each_cell():
    probe = AttributeProbe(16)
    circle = {"shape": "circle", "color": "red", "size": "large", "fill": "solid", "x": 0.15, "y": 0.15}
    star = {"shape": "star", "color": "blue", "size": "small", "fill": "outline", "x": 0.85, "y": 0.5}
    t = probe.targets([_spec(circle, star), _spec()])
    top_left, right = probe.cells.index("top left"), probe.cells.index("right")
    v = probe.values
    assert t[0, top_left].tolist() == [
        v["shape"].index("circle") + 1,
        v["color"].index("red") + 1,
        v["size"].index("large") + 1,
        v["fill"].index("solid") + 1,
    ]
    assert t[0, right, 0] == v["shape"].index("star") + 1
    assert int((t[0] > 0).any(-1).sum()) == 2  # the other seven cells are empty
    assert not t[1].any()


def test_probe_loss_is_learnable():
    """The probe's loss falls when its head fits fixed features (it can fail: random labels would not)."""
    torch.manual_seed(0)
    probe = AttributeProbe(32)
    obj = {"shape": "square", "color": "green", "size": "small", "fill": "solid", "x": 0.5, "y": 0.5}
    specs = [_spec(obj), _spec()]
    feats = torch.randn(2, 32)
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    first = probe.loss(feats, specs).item()
    for _ in range(30):
        opt.zero_grad()
        loss = probe.loss(feats, specs)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    # The shape term's weight moves the loss toward the shape cross-entropy.
    heavy = AttributeProbe(32, shape_weight=100.0)
    heavy.load_state_dict(probe.state_dict())
    assert heavy.loss(feats, specs).item() != pytest.approx(probe.loss(feats, specs).item())


def test_train_with_probe_exports_clip_only(tmp_path):
    run = tmp_path / "run"
    args = ["-q", "train", "clip", "--data", "shapes:16", "--out", str(run), "--preset", "clip-tiny-test"]
    assert main([*args, "--steps", "3", "--aux-attributes", "0.5"]) == 0
    header = (run / "log.csv").read_text().splitlines()[0]
    assert "aux_loss" in header
    with safe_open(str(run / "clip" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "probe" in k]  # noqa: SIM118
    # Resuming without the probe is refused; with other weights (loss weights, like the lr) it continues.
    assert main([*args, "--steps", "4", "--resume"]) == 2
    assert main([*args, "--steps", "4", "--resume", "--aux-attributes", "1", "--aux-shape-weight", "3"]) == 0
    assert '"aux_shape_weight": 3.0' in (run / "run.json").read_text()
    # Fine-tuning the exported CLIP with the probe: the weights load into the CLIP inside the
    # probe wrapper (the probe head starts fresh).
    ft = [*args[:6], str(tmp_path / "ft"), *args[7:], "--steps", "2", "--aux-attributes", "1"]
    assert main([*ft, "--init-from", str(run / "clip")]) == 0


def test_probe_first_trains_the_probe_alone_then_adds_infonce(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["-q", "train", "clip", "--data", "shapes:16", "--out", str(run), "--preset", "clip-tiny-test"]
    assert main([*args, "--steps", "2", "--probe-first", "1"]) == 2  # needs the probe
    assert "--probe-first" in capsys.readouterr().err
    assert (
        main([*args, "--steps", "4", "--aux-attributes", "1", "--probe-first", "2", "--log-every", "1"]) == 0
    )
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()]
    col = {name: i for i, name in enumerate(rows[0])}
    loss, aux, nce = ([float(r[col[k]]) for r in rows[1:]] for k in ("loss", "aux_loss", "infonce"))
    assert loss[:2] == pytest.approx(aux[:2])  # steps 1-2: the probe alone
    assert loss[2:] == pytest.approx([a + n for a, n in zip(aux[2:], nce[2:])], rel=1e-4)
    assert min(nce) > 0


@pytest.mark.parametrize("data", ["synthetic:8"])
def test_probe_needs_shapes(tmp_path, data, capsys):
    args = ["train", "clip", "--data", data, "--out", str(tmp_path / "r"), "--preset", "clip-tiny-test"]
    assert main([*args, "--aux-attributes", "1"]) == 2
    assert "shapes world" in capsys.readouterr().err


def test_background_head_learns_the_background_and_is_optional():
    torch.manual_seed(0)
    obj = {"shape": "square", "color": "green", "size": "small", "fill": "solid", "x": 0.5, "y": 0.5}
    specs = [{"objects": [obj], "background": bg} for bg in ("navy", "beige", "brown")]
    feats = torch.randn(3, 32)
    plain = AttributeProbe(32)
    assert plain.background_head is None
    with pytest.raises(ValueError, match="background head"):
        plain.background_logits(feats)
    probe = AttributeProbe(32, background_weight=2.0)
    opt = torch.optim.SGD(probe.background_head.parameters(), lr=0.5)
    for _ in range(40):
        opt.zero_grad()
        probe.loss(feats, specs).backward()
        opt.step()
    pred = probe.background_logits(feats).argmax(1).tolist()
    assert [probe.backgrounds[i] for i in pred] == ["navy", "beige", "brown"]


def test_background_weight_cli_and_resume_rules(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["-q", "train", "clip", "--data", "shapes:16", "--out", str(run), "--preset", "clip-tiny-test"]
    assert main([*args, "--steps", "2", "--aux-background-weight", "1"]) == 2  # needs the probe
    assert "--aux-background-weight" in capsys.readouterr().err
    assert main([*args, "--steps", "2", "--aux-attributes", "1", "--aux-background-weight", "1"]) == 0
    # Turning the head off on resume changes the trained modules: refused in one line.
    assert main([*args, "--steps", "3", "--resume", "--aux-attributes", "1"]) == 2
    assert "--aux-background-weight" in capsys.readouterr().err
    assert (
        main([*args, "--steps", "3", "--resume", "--aux-attributes", "1", "--aux-background-weight", "4"])
        == 0
    )


def test_global_color_path_starts_at_zero_and_fine_tunes_from_a_run_without_it(tmp_path):
    from unclip.clip.config import ClipConfig
    from unclip.clip.model import ClipModel

    torch.manual_seed(0)
    base = ClipConfig.from_dict(
        {"embed_dim": 16, "vision": {"arch": "resnet", "image_size": 16, "width": 8, "layers": 1, "heads": 2}}
    )
    colored = ClipConfig.from_dict(
        {**base.to_dict(), "vision": {**base.to_dict()["vision"], "global_color": True}}
    )
    a, b = ClipModel(base), ClipModel(colored)
    missing, unexpected = b.load_state_dict(a.state_dict(), strict=False)
    assert sorted(missing) == ["visual.global_color.bias", "visual.global_color.weight"] and not unexpected
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(b.encode_image(x, preprocessed=True), a.encode_image(x, preprocessed=True))
    # Two flat images that differ only in colour: the path sees them once it has weights.
    with torch.no_grad():
        b.visual.global_color.weight.normal_()
    flat = torch.stack([torch.full((3, 16, 16), -0.5), torch.full((3, 16, 16), 0.5)])
    ea, eb = a.encode_image(flat, preprocessed=True), b.encode_image(flat, preprocessed=True)
    assert (eb[0] - eb[1]).abs().max() > 3 * (ea[0] - ea[1]).abs().max()
    with pytest.raises(ValueError, match="resnet"):
        ClipConfig.from_dict({"vision": {"arch": "vit", "global_color": True}})

    # --init-from a run without the path: strict for every other key, the new path starts at zero.
    import json

    from unclip.presets import get_preset

    recipe = get_preset("clip-tiny-test")
    recipe["model"]["vision"] = {"arch": "resnet", "image_size": 16, "width": 8, "layers": 1, "heads": 2}
    (tmp_path / "plain.json").write_text(json.dumps(recipe))
    recipe["model"]["vision"]["global_color"] = True
    (tmp_path / "color.json").write_text(json.dumps(recipe))
    args = ["-q", "train", "clip", "--data", "shapes:16", "--steps", "2"]
    assert main([*args, "--config", str(tmp_path / "plain.json"), "--out", str(tmp_path / "a")]) == 0
    ft = [*args, "--config", str(tmp_path / "color.json"), "--init-from", str(tmp_path / "a" / "clip")]
    assert (
        main([*ft, "--out", str(tmp_path / "b"), "--aux-attributes", "1", "--aux-background-weight", "2"])
        == 0
    )
    from unclip.clip import load_encoder

    tuned = load_encoder(tmp_path / "b" / "clip")
    assert tuned.visual.global_color.weight.abs().sum() > 0  # trained from its zeros
    # The reverse (a checkpoint with the path into a model without it) stays an error.
    assert (
        main(
            [
                *args,
                "--config",
                str(tmp_path / "plain.json"),
                "--init-from",
                str(tmp_path / "b" / "clip"),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
