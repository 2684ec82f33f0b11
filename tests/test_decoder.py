"""The decoder: shapes, zero init, condition dropout and nulls, guidance modes, save/load, overfitting."""

from __future__ import annotations

import math

import pytest
import torch

from test_unet import randomize
from unclip.checkpoint import load_component, save_component
from unclip.config import ConfigError
from unclip.models.decoder import Decoder, DecoderConfig
from unclip.models.unet import UNetConfig
from unclip.presets import get_preset

D, W, L = 16, 12, 6


def tiny_config(**kw) -> DecoderConfig:
    model = get_preset("decoder-tiny-test")["model"]
    return DecoderConfig.from_dict({**model, "clip_dim": D, "text_dim": W, **kw})


def cond(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    emb = torch.randn(b, D, generator=g)
    tok = torch.randn(b, L, W, generator=g)
    mask = torch.arange(L)[None] < torch.randint(1, L + 1, (b, 1), generator=g)
    return x, t, emb, tok, mask


def test_forward_shapes_and_zero_init():
    torch.manual_seed(0)
    dec = Decoder(tiny_config())
    x, t, emb, tok, mask = cond(3)
    out = dec(x, t, emb, tok, mask)
    assert out.shape == (3, 3, 16, 16) and torch.count_nonzero(out) == 0
    learned = Decoder(tiny_config(variance="learned_range", prediction="eps", loss_weighting="none"))
    assert learned(x, t, emb).shape == (3, 6, 16, 16)
    losses = learned.diffusion.training_losses(learned, x.clamp(-1, 1), t, model_kwargs={"image_emb": emb})
    assert torch.isfinite(losses["loss"]).all() and "vb" in losses
    image_only = Decoder(tiny_config(text_dim=0))
    assert image_only(x, t, emb, tok, mask).shape == (3, 3, 16, 16)  # caption ignored


def test_drop_rates_are_independent_bernoullis():
    dec = Decoder(tiny_config())
    n = 40_000
    g = torch.Generator().manual_seed(0)
    di, dt = dec.sample_drop_masks(n, generator=g)
    for observed, p in ((di, 0.1), (dt, 0.5), (di & dt, 0.05), (di & ~dt, 0.05)):
        rate = observed.float().mean().item()
        tol = 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations
        assert abs(rate - p) < tol, (rate, p)


def test_null_embeddings_used_exactly_when_dropped():
    torch.manual_seed(0)
    dec = randomize(Decoder(tiny_config()))
    b = 8
    x, t, emb, tok, mask = cond(b)
    drop_i = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    drop_t = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    ref = dec(x, t, emb, tok, mask, drop_i, drop_t)
    # Changing a dropped input changes nothing in that sample; changing a kept one changes it.
    out = dec(x, t, emb + 3.0, tok, mask, drop_i, drop_t)
    assert torch.equal(out[drop_i], ref[drop_i])
    assert (out[~drop_i] - ref[~drop_i]).flatten(1).abs().amax(1).min() > 1e-4
    out = dec(x, t, emb, tok + 3.0, mask, drop_i, drop_t)
    assert torch.equal(out[drop_t], ref[drop_t])
    assert (out[~drop_t] - ref[~drop_t]).flatten(1).abs().amax(1).min() > 1e-4
    # None means "dropped for every sample".
    everything = torch.ones(b, dtype=torch.bool)
    torch.testing.assert_close(dec(x, t, None, None), dec(x, t, emb, tok, mask, everything, everything))
    # The conditioning module substitutes the learned vectors themselves.
    _, ctx, cmask = dec.cond(b, emb, tok, mask, drop_i, drop_t)
    _, null_ctx, _ = dec.cond(b, None, None)
    torch.testing.assert_close(ctx[drop_i, :4], null_ctx[drop_i, :4])
    assert torch.equal(cmask[:, -1], drop_t)  # the null caption token is attended only when dropped
    assert not cmask[drop_t, 4:-1].any()


def test_guidance_modes_and_determinism():
    torch.manual_seed(0)
    dec = randomize(Decoder(tiny_config()), std=0.05).eval()
    _, _, emb, tok, mask = cond(2)
    kw = {"steps": 4, "precision": "fp32"}
    a = dec.sample(emb, tok, mask, generator=torch.Generator().manual_seed(1), **kw)
    b = dec.sample(emb, tok, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1.0
    # Scale 1 is the conditional branch alone; image-only and caption-only modes differ.
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    one = dec.sample(emb, tok, mask, guidance_scale=1.0, generator=g(), **kw)
    x_T = torch.randn(2, 3, 16, 16, generator=g())
    manual = dec.sample(emb, tok, mask, guidance_scale=1.0, x_T=x_T, **kw)
    torch.testing.assert_close(one, manual)
    image_only = dec.sample(emb, guidance_scale=3.0, generator=g(), **kw)
    text_only = dec.sample(None, tok, mask, guidance_scale=3.0, generator=g(), **kw)
    assert not torch.allclose(image_only, text_only)
    assert dec.sample(num_images=3, generator=g(), **kw).shape == (3, 3, 16, 16)


def test_save_load_identical_outputs(tmp_path):
    torch.manual_seed(0)
    dec = randomize(Decoder(tiny_config()), std=0.05).eval()
    x, t, emb, tok, mask = cond(2)
    save_component(dec, dec.config, "decoder", tmp_path / "dec")
    loaded, cfg, header = load_component(tmp_path / "dec")
    assert header["kind"] == "decoder" and cfg == dec.config
    assert torch.equal(loaded(x, t, emb, tok, mask), dec(x, t, emb, tok, mask))


def test_overfits_one_batch():
    torch.manual_seed(0)
    dec = Decoder(tiny_config(drop_image_prob=0.0, drop_text_prob=0.0))
    x, t, emb, tok, mask = cond(4)
    x = x.clamp(-1, 1)
    noise = torch.randn_like(x)
    kw = {"image_emb": emb, "text_tokens": tok, "text_mask": mask}

    def loss():
        return dec.diffusion.training_losses(dec, x, t, noise, kw, loss_weighting="min_snr")["loss"].mean()

    opt = torch.optim.Adam(dec.parameters(), lr=2e-3)
    first = loss().item()
    for _ in range(25):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_bad_inputs():
    dec = Decoder(tiny_config())
    x, t, emb, tok, _ = cond(2)
    with pytest.raises(ValueError, match="image_emb"):
        dec(x, t, emb[:, :5])
    with pytest.raises(ValueError, match="drop_image"):
        dec(x, t, emb, drop_image=torch.zeros(2))
    with pytest.raises(ValueError, match="text_tokens"):
        dec(x, t, emb, tok[..., :5])
    with pytest.raises(ValueError, match="give image_emb"):
        dec.sample(steps=2)
    with pytest.raises(ConfigError):
        tiny_config(drop_image_prob=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        tiny_config(guidance_scale=3.0)  # sampling options are not config fields
    with pytest.raises(ConfigError, match="divisible"):
        UNetConfig.from_dict({"image_size": 30, "channel_mult": [1, 2, 2]})
