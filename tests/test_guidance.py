"""Classifier-free guidance: one batched call per step, exact ends, negative prompts, variance."""

from __future__ import annotations

import pytest
import torch

from unclip.diffusion import GaussianDiffusion
from unclip.sampling import guided_model_fn, sample


class CountingModel:
    """out = x * a + t / 1000 + emb-dependent shift; records every call."""

    def __init__(self, out_channels_factor: int = 1) -> None:
        self.calls: list[dict] = []
        self.factor = out_channels_factor

    def __call__(self, x, t, *, image_emb=None, text_mask=None, tag=None):
        self.calls.append({"batch": x.shape[0], "image_emb": image_emb, "text_mask": text_mask, "tag": tag})
        shift = image_emb.sum(dim=1) if image_emb is not None else torch.zeros(x.shape[0])
        shift = shift.reshape(-1, *([1] * (x.ndim - 1)))
        out = 0.5 * x + t.reshape(-1, *([1] * (x.ndim - 1))) / 1000 + shift
        if self.factor == 2:  # learned variance: variance channels depend on the condition too
            out = torch.cat([out, torch.tanh(shift).expand_as(x)], dim=1)
        return out


def _inputs(batch=3, shape=(4,)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g)
    t = torch.tensor([999, 500, 3][:batch])
    cond = {"image_emb": torch.randn(batch, 8, generator=g), "text_mask": None, "tag": "a"}
    uncond = {"image_emb": torch.zeros(batch, 8), "text_mask": None, "tag": "a"}
    return x, t, cond, uncond


def _branch(model, x, t, kw):
    return model(x, t, **kw)  # one branch on its own, for reference


@pytest.mark.parametrize("shape", [(4,), (2, 3, 3)])  # prior embeddings (B, D) and decoder images
def test_guidance_formula_and_single_batched_call(shape):
    model = CountingModel()
    x, t, cond, uncond = _inputs(shape=shape)
    fn = guided_model_fn(model, cond=cond, uncond=uncond, guidance_scale=3.0)
    out = fn(x, t)
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 6
    assert model.calls[0]["text_mask"] is None and model.calls[0]["tag"] == "a"
    c, u = _branch(CountingModel(), x, t, cond), _branch(CountingModel(), x, t, uncond)
    torch.testing.assert_close(out, u + 3.0 * (c - u))


def test_scale_one_is_exactly_conditional_and_skips_uncond():
    model = CountingModel()
    x, t, cond, uncond = _inputs()
    out = guided_model_fn(model, cond=cond, uncond=uncond, guidance_scale=1.0)(x, t)
    assert torch.equal(out, _branch(CountingModel(), x, t, cond))
    assert model.calls[0]["batch"] == 3  # the unconditional half is skipped


def test_scale_zero_is_exactly_unconditional():
    x, t, cond, uncond = _inputs()
    out = guided_model_fn(CountingModel(), cond=cond, uncond=uncond, guidance_scale=0.0)(x, t)
    assert torch.equal(out, _branch(CountingModel(), x, t, uncond))


def test_per_sample_scales_are_exact_at_the_ends():
    x, t, cond, uncond = _inputs()
    c, u = _branch(CountingModel(), x, t, cond), _branch(CountingModel(), x, t, uncond)
    for scale in ([1.0, 0.0, 4.0], torch.tensor([1.0, 0.0, 4.0])):
        out = guided_model_fn(CountingModel(), cond=cond, uncond=uncond, guidance_scale=scale)(x, t)
        assert torch.equal(out[0], c[0]) and torch.equal(out[1], u[1])
        torch.testing.assert_close(out[2], u[2] + 4.0 * (c[2] - u[2]))
    with pytest.raises(ValueError, match="one value per sample"):
        guided_model_fn(CountingModel(), cond=cond, uncond=uncond, guidance_scale=[1.0, 2.0])(x, t)


def test_negative_condition_replaces_the_null():
    model = CountingModel()
    x, t, cond, _ = _inputs()
    negative = {"image_emb": torch.full((3, 8), 0.3), "text_mask": None, "tag": "a"}
    out = guided_model_fn(model, cond=cond, uncond=negative, guidance_scale=2.0)(x, t)
    torch.testing.assert_close(model.calls[0]["image_emb"][3:], negative["image_emb"])
    c, n = _branch(CountingModel(), x, t, cond), _branch(CountingModel(), x, t, negative)
    torch.testing.assert_close(out, n + 2.0 * (c - n))


def test_variance_channels_come_from_the_conditional_branch():
    x, t, cond, uncond = _inputs(shape=(2, 3, 3))
    out = guided_model_fn(
        CountingModel(2), cond=cond, uncond=uncond, guidance_scale=5.0, prediction_channels=2
    )(x, t)
    c = _branch(CountingModel(2), x, t, cond)
    u = _branch(CountingModel(2), x, t, uncond)
    assert out.shape == (3, 4, 3, 3)
    torch.testing.assert_close(out[:, :2], u[:, :2] + 5.0 * (c[:, :2] - u[:, :2]))
    assert torch.equal(out[:, 2:], c[:, 2:])


def test_one_model_call_per_sampler_step():
    d = GaussianDiffusion.from_schedule("cosine", 1000, variance="learned_range")
    model = CountingModel(2)
    _, _, cond, uncond = _inputs(batch=2)
    fn = guided_model_fn(model, cond=cond, uncond=uncond, guidance_scale=3.0, prediction_channels=4)
    x = sample(fn, (2, 4), diffusion=d, sampler="ddpm", steps=12, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    assert len(model.calls) == 12 and all(call["batch"] == 4 for call in model.calls)


def test_bad_conditioning():
    x, t, cond, uncond = _inputs()
    with pytest.raises(ValueError, match="same keys"):
        guided_model_fn(
            CountingModel(), cond=cond, uncond={"image_emb": uncond["image_emb"]}, guidance_scale=2.0
        )
    bad = dict(uncond, text_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="text_mask"):
        guided_model_fn(CountingModel(), cond=cond, uncond=bad, guidance_scale=2.0)(x, t)
    bad = dict(uncond, tag="b")
    with pytest.raises(ValueError, match="differ"):
        guided_model_fn(CountingModel(), cond=cond, uncond=bad, guidance_scale=2.0)(x, t)
    bad = dict(uncond, image_emb=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="batch"):
        guided_model_fn(CountingModel(), cond=cond, uncond=bad, guidance_scale=2.0)(x, t)
