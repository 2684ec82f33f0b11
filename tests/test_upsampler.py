"""Upsamplers: any-size forward, zero init, noise augmentation, degradations, crops, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_unet import randomize
from unclip.checkpoint import load_component, save_component
from unclip.config import ConfigError
from unclip.models.degrade import blur, degrade, degrade_blur, degrade_bsr, jpeg
from unclip.models.upsampler import Upsampler, UpsamplerConfig
from unclip.presets import get_preset
from unclip.train.upsampler import CropBatches, psnr


def tiny_config(**kw) -> UpsamplerConfig:
    return UpsamplerConfig.from_dict({**get_preset("upsampler-tiny-test")["model"], **kw})


def test_runs_at_sizes_it_was_not_trained_at():
    torch.manual_seed(0)
    up = randomize(Upsampler(tiny_config()), std=0.05).eval()
    assert up.config.crop_size == 8 and up.config.target_size == 32
    for h, w in ((8, 8), (32, 32), (40, 24)):  # crops, full size, a non-square size
        x = torch.randn(2, 3, h, w)
        out = up(x, torch.tensor([10, 500]), torch.rand(2, 3, h // 4, w // 4) * 2 - 1, torch.tensor([0, 5]))
        assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()
    g = torch.Generator().manual_seed(0)
    assert up.sample(torch.rand(1, 3, 10, 6) * 2 - 1, steps=3, generator=g).shape == (1, 3, 40, 24)


def test_zero_output_at_init_and_sampling_shape():
    torch.manual_seed(0)
    up = Upsampler(tiny_config())
    out = up(torch.randn(2, 3, 32, 32), torch.tensor([1, 999]), torch.randn(2, 3, 8, 8))
    assert torch.count_nonzero(out) == 0
    g = torch.Generator().manual_seed(0)
    low = torch.rand(3, 3, 8, 8) * 2 - 1
    hi = up.sample(low, steps=4, generator=g, noise_level=50)
    assert hi.shape == (3, 3, 32, 32) and hi.abs().max() <= 1.0


def test_residual_target_round_trip():
    up = Upsampler(tiny_config(residual_scale=0.25))
    img, base = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(up.from_target(up.to_target(img, base), base), img)
    plain = Upsampler(tiny_config())
    assert torch.equal(plain.to_target(img, base), img)
    out = up.sample(torch.rand(1, 3, 8, 8) * 2 - 1, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 32, 32) and out.abs().max() <= 1.0


def test_noise_augmentation():
    torch.manual_seed(0)
    up = Upsampler(tiny_config())
    cond = torch.rand(4, 3, 32, 32) * 2 - 1
    level = torch.tensor([0, 1, 100, 299])
    out = up.augment(cond, level, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], cond[0])
    err = (out - cond).flatten(1).pow(2).mean(1)
    assert err[1] < 1e-3 < err[2] < err[3]  # monotone in the level
    assert up.config.max_noise_level == round(0.3 * 999)
    # The level reaches the network: two levels give two outputs once weights are non-zero.
    randomize(up, std=0.05)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([300, 300])
    a = up(x, t, cond[:2], torch.tensor([0, 0]))
    b = up(x, t, cond[:2], torch.tensor([0, 200]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_degradations():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(blur(flat, torch.tensor([0.6, 1.2])), flat)  # reflect padding: no dark border
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(blur(x, torch.full((4,), 1e-3)), x)  # sigma -> 0 is the identity
    b = degrade_blur(x, g)
    assert b.shape == x.shape and (b - x).abs().mean() > 0.01
    assert b.var() < x.var()  # blur removes high-frequency energy
    r = degrade_bsr(x, torch.Generator().manual_seed(1))
    assert r.shape == x.shape and r.min() >= -1 and r.max() <= 1
    torch.testing.assert_close(degrade_bsr(x, torch.Generator().manual_seed(1)), r)  # reproducible
    j = jpeg(x, torch.tensor([90, 90, 30, 30]))
    assert j.shape == x.shape and (j - x).abs().mean() < 0.5
    assert torch.equal(degrade(x, "none"), x)
    # The configured sigma range reaches the blur: a range at 0 is the identity, a wide one is not.
    torch.testing.assert_close(degrade(x, "blur", g, blur_sigma=(0.0, 0.0)), x)
    weak = degrade(x, "blur", torch.Generator().manual_seed(2), blur_sigma=(0.1, 0.2))
    strong = degrade(x, "blur", torch.Generator().manual_seed(2), blur_sigma=(1.0, 1.5))
    assert (weak - x).abs().mean() < 0.5 * (strong - x).abs().mean()
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(x, "sharpen")  # type: ignore[arg-type]


def test_crops_match_the_low_res_region():
    """Crops of the target and of the resized low-res image cover the same region."""
    cfg = tiny_config(degradation="none", resize="bilinear")
    up = Upsampler(cfg)
    s = cfg.target_size
    ramp = torch.arange(s, dtype=torch.float32) / s * 2 - 1
    coords = torch.stack([ramp[:, None].expand(s, s), ramp[None, :].expand(s, s), torch.zeros(s, s)])
    hi = coords[None].repeat(3, 1, 1, 1)

    class Inner:
        batch_size = 3

        def __next__(self):
            return {"image": hi.clone(), "caption": ["x"] * 3}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    torch.manual_seed(0)
    batch = next(CropBatches(Inner(), up, 4))
    assert batch["image"].shape == (12, 3, 8, 8) and batch["low_res"].shape == (12, 3, 8, 8)
    # Rows (channel 0) and columns (channel 1) are contiguous windows of the ramp.
    rows, cols = batch["image"][:, 0, :, 0], batch["image"][:, 1, 0, :]
    step = 2 / s
    torch.testing.assert_close(rows[:, 1:] - rows[:, :-1], torch.full((12, 7), step))
    torch.testing.assert_close(cols[:, 1:] - cols[:, :-1], torch.full((12, 7), step))
    # The low-res crop is the same region, up to the down/up-sampling blur of a linear ramp.
    inner = (slice(None), slice(0, 2), slice(2, 6), slice(2, 6))
    assert (batch["low_res"][inner] - batch["image"][inner]).abs().max() < 4 * step


def test_save_load_identical_outputs(tmp_path):
    torch.manual_seed(0)
    up = randomize(Upsampler(tiny_config()), std=0.05).eval()
    save_component(up, up.config, "upsampler", tmp_path / "up")
    loaded, cfg, _ = load_component(tmp_path / "up")
    x, t, low = torch.randn(1, 3, 32, 32), torch.tensor([7]), torch.randn(1, 3, 8, 8)
    assert cfg == up.config and torch.equal(loaded(x, t, low), up(x, t, low))


def test_config_validation_and_psnr():
    with pytest.raises(ConfigError, match="convolution-only"):
        tiny_config(unet={**tiny_config().unet.to_dict(), "attention_resolutions": [8]})
    with pytest.raises(ConfigError, match="multiples"):
        tiny_config(crop_fraction=0.15)
    with pytest.raises(ValueError, match="noise_level"):
        Upsampler(tiny_config()).sample(torch.zeros(1, 3, 8, 8), noise_level=5000)
    a = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(a, a) > 90
    assert 10 < psnr(a, F.avg_pool2d(a, 3, 1, 1)) < 40
