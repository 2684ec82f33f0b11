"""GaussianDiffusion: forward process, posterior, parameterisations, variance and losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unclip.diffusion import (
    DynamicThreshold,
    GaussianDiffusion,
    clip_xstart,
    discretized_gaussian_log_likelihood,
    normal_kl,
    respace,
)

F64 = torch.float64


def _diffusion(**kw) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 1000, **kw)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SHAPES = [(5, 3, 4, 4), (5, 7)]  # images (B, C, H, W) and embeddings (B, D)
T_IDX = torch.tensor([0, 1, 250, 998, 999])


@pytest.mark.parametrize("shape", SHAPES)
def test_q_sample_closed_form(shape):
    d = _diffusion()
    x0 = torch.randn(shape, generator=_gen(1), dtype=F64)
    noise = torch.randn(shape, generator=_gen(2), dtype=F64)
    xt = d.q_sample(x0, T_IDX, noise)
    abar = np.cumprod(1 - d.betas)
    for b, t in enumerate(T_IDX.tolist()):
        expected = math.sqrt(abar[t]) * x0[b] + math.sqrt(1 - abar[t]) * noise[b]
        torch.testing.assert_close(xt[b], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_eps_xstart_v_round_trips(shape):
    d = _diffusion()
    x0 = torch.randn(shape, generator=_gen(1), dtype=F64)
    eps = torch.randn(shape, generator=_gen(2), dtype=F64)
    xt = d.q_sample(x0, T_IDX, eps)
    v = d.predict_v(x0, eps, T_IDX)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, T_IDX, eps), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, T_IDX, x0), eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.predict_xstart_from_v(xt, T_IDX, v), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.predict_eps_from_v(xt, T_IDX, v), eps, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_model_output_to_every_parameterisation(prediction):
    d = _diffusion(prediction=prediction)
    x0 = torch.randn(5, 3, 4, 4, generator=_gen(1), dtype=F64)
    eps = torch.randn(5, 3, 4, 4, generator=_gen(2), dtype=F64)
    xt = d.q_sample(x0, T_IDX, eps)
    output = d.target(x0, eps, T_IDX)
    pred_xstart, pred_eps = d.model_output_to(xt, T_IDX, output)
    torch.testing.assert_close(pred_xstart, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(pred_eps, eps, rtol=0, atol=1e-10)


def test_posterior_against_hand_computed_values():
    d = GaussianDiffusion.from_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    x0 = torch.tensor([[0.3, -0.7]], dtype=F64)
    xt = torch.tensor([[1.1, 0.2]], dtype=F64)
    for t in (1, 10, 500, 999):
        abar_t = np.prod(1 - betas[: t + 1])
        abar_prev = np.prod(1 - betas[:t])
        beta_t = betas[t]
        # DDPM eq. 7
        mean = (
            math.sqrt(abar_prev) * beta_t / (1 - abar_t) * x0
            + math.sqrt(1 - beta_t) * (1 - abar_prev) / (1 - abar_t) * xt
        )
        var = (1 - abar_prev) / (1 - abar_t) * beta_t
        m, v, log_v = d.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
        torch.testing.assert_close(m, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v, torch.full_like(xt, var), rtol=1e-10, atol=0)
        torch.testing.assert_close(log_v, torch.full_like(xt, math.log(var)), rtol=1e-10, atol=0)
    # t = 0: the variance is 0 and its clipped log uses the t = 1 value.
    _, v0, log_v0 = d.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    assert float(v0[0, 0]) == 0.0
    assert float(log_v0[0, 0]) == pytest.approx(math.log(d.posterior_variance[1]))


def test_posterior_matches_bayes_rule_numerically():
    # q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0); check on a 1-D grid.
    d = _diffusion()
    t, x0, xt = 300, 0.4, -0.2
    a_t, abar_prev = 1 - d.betas[t], d.alphas_cumprod[t - 1]
    grid = np.linspace(-3, 3, 200001)
    log_p = -((xt - math.sqrt(a_t) * grid) ** 2) / (2 * d.betas[t]) - (
        grid - math.sqrt(abar_prev) * x0
    ) ** 2 / (2 * (1 - abar_prev))
    w = np.exp(log_p - log_p.max())
    w /= w.sum()
    mean, var = (w * grid).sum(), (w * grid**2).sum() - (w * grid).sum() ** 2
    m, v, _ = d.q_posterior_mean_variance(torch.tensor([[x0]], dtype=F64), torch.tensor([[xt]], dtype=F64), t)
    assert float(m) == pytest.approx(mean, rel=1e-6)
    assert float(v) == pytest.approx(var, rel=1e-5)


def test_coefficients_are_float64_and_read_only():
    d = _diffusion()
    assert d.alphas_cumprod.dtype == np.float64
    with pytest.raises(ValueError):
        d.alphas_cumprod[0] = 0.5
    # Gathered per t and cast to the input's dtype only at use.
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    assert d.q_sample(x, torch.tensor([3, 4]), torch.randn_like(x)).dtype == torch.bfloat16
    assert d.q_sample(x.float(), 3, torch.randn(2, 3)).dtype == torch.float32


def test_fixed_variances():
    x = torch.zeros(2, 3, dtype=F64)
    t = torch.tensor([0, 500])
    small = _diffusion(variance="fixed_small").p_mean_variance(x, x, t)
    large = _diffusion(variance="fixed_large").p_mean_variance(x, x, t)
    d = _diffusion()
    assert float(small.variance[1, 0]) == pytest.approx(d.posterior_variance[500])
    assert float(large.variance[1, 0]) == pytest.approx(d.betas[500])
    # ADM: at t = 0 the large variance uses the posterior variance of t = 1 (beta_0 is tiny).
    assert float(large.variance[0, 0]) == pytest.approx(d.posterior_variance[1])
    torch.testing.assert_close(large.log_variance, large.variance.log())


def test_learned_range_interpolates_between_bounds():
    d = _diffusion(variance="learned_range")
    x = torch.zeros(3, 2, dtype=F64)
    t = torch.tensor([100, 100, 100])
    v = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)
    out = d.p_mean_variance(torch.cat([x, v], dim=1), x, t)
    lo, hi = d.posterior_log_variance_clipped[100], math.log(d.betas[100])
    assert out.log_variance[:, 0].tolist() == pytest.approx([lo, hi, 0.5 * (lo + hi)], rel=1e-12)
    torch.testing.assert_close(out.variance, out.log_variance.exp())


@pytest.mark.parametrize("raw", [1e6, -1e6, float("inf"), float("-inf"), 3.0e38])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_learned_range_never_nan_or_inf(raw, dtype):
    d = _diffusion(variance="learned_range")
    x0 = torch.randn(4, 3, 8, 8, generator=_gen(0)).to(dtype)
    t = torch.tensor([0, 1, 500, 999])
    noise = torch.randn(x0.shape, generator=_gen(1)).to(dtype)
    xt = d.q_sample(x0, t, noise)
    output = torch.cat([noise, torch.full_like(noise, raw)], dim=1)
    out = d.p_mean_variance(output, xt, t)
    for name in ("mean", "variance", "log_variance", "pred_xstart", "eps"):
        assert torch.isfinite(getattr(out, name)).all(), name
    terms = d.training_losses(lambda x, ts: output, x0, t, noise=noise)
    assert torch.isfinite(terms["loss"]).all() and torch.isfinite(terms["vb"]).all()


def test_learned_sigma_kl_vanishes_at_true_posterior():
    # A model whose mean and variance equal the true posterior has KL = 0 for t > 0: eps = the true
    # noise gives pred_xstart = x_start, and v = -1 selects log(beta_tilde_clipped).
    d = _diffusion(variance="learned_range")
    x0 = torch.randn(6, 3, 4, 4, generator=_gen(0), dtype=F64)
    noise = torch.randn(x0.shape, generator=_gen(1), dtype=F64)
    t = torch.tensor([1, 2, 10, 300, 900, 999])

    def model(x, ts):
        return torch.cat([noise, -torch.ones_like(noise)], dim=1)

    terms = d.training_losses(model, x0, t, noise=noise)
    assert terms["vb"].abs().max() < 1e-9
    assert terms["mse"].abs().max() < 1e-20
    # A wrong variance gives a positive KL, scaled by lambda * T (= T / 1000 at lambda = 0.001).
    wrong = d.training_losses(
        lambda x, ts: torch.cat([noise, torch.ones_like(noise)], dim=1), x0, t, noise=noise
    )
    assert (wrong["vb"] > 0).all()
    true_mean, _, true_log_var = d.q_posterior_mean_variance(x0, d.q_sample(x0, t, noise), t)
    log_beta = torch.log(torch.tensor(d.betas[t.numpy()], dtype=F64)).reshape(-1, 1, 1, 1)
    kl_bits = normal_kl(true_mean, true_log_var, true_mean, log_beta.expand_as(true_mean)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(wrong["vb"], kl_bits / math.log(2.0) * (0.001 * 1000))


def test_decoder_nll_at_t0():
    d = _diffusion(variance="learned_range")
    x0 = (torch.randint(0, 256, (2, 3, 4, 4), generator=_gen(0)).double() / 127.5) - 1
    noise = torch.randn(x0.shape, generator=_gen(1), dtype=F64)
    t = torch.tensor([0, 0])
    terms = d.training_losses(
        lambda x, ts: torch.cat([noise, -torch.ones_like(noise)], dim=1), x0, t, noise=noise
    )
    # At t = 0 the VLB term is the discretised NLL: positive, and small for an exact mean.
    assert (terms["vb"] > 0).all() and (terms["vb"] < 1.0).all()


def test_discretized_likelihood_sums_to_one():
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in ((0.1, math.log(0.3)), (-0.97, math.log(0.01)), (0.0, math.log(2.0))):
        ll = discretized_gaussian_log_likelihood(
            levels, torch.tensor(mean, dtype=F64), torch.tensor(log_scale, dtype=F64)
        )
        assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-6)
        assert torch.isfinite(ll).all()


def test_normal_kl_values():
    zero = torch.zeros(3, dtype=F64)
    assert normal_kl(zero, zero, zero, zero).abs().max() == 0
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(torch.tensor(0.0, dtype=F64), 0.0, 1.0, math.log(4.0))
    assert float(kl) == pytest.approx(math.log(2.0) + 0.25 - 0.5, rel=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_losses_mse_on_target(prediction):
    d = _diffusion(prediction=prediction)
    x0 = torch.randn(4, 5, generator=_gen(0), dtype=F64)
    noise = torch.randn(4, 5, generator=_gen(1), dtype=F64)
    t = torch.tensor([3, 100, 600, 990])
    target = {"eps": noise, "x0": x0, "v": d.predict_v(x0, noise, t)}[prediction]
    terms = d.training_losses(lambda x, ts: target + 0.5, x0, t, noise=noise)
    torch.testing.assert_close(terms["mse"], torch.full((4,), 0.25, dtype=F64))
    torch.testing.assert_close(terms["loss"], terms["mse"])
    assert "vb" not in terms


def test_min_snr_weighting_is_the_same_x0_weight_for_every_parameterisation():
    # Hang et al. 2023: every parameterisation must weight its implied x_0 error by min(SNR, gamma).
    x0 = torch.randn(6, 5, generator=_gen(0), dtype=F64)
    noise = torch.randn(6, 5, generator=_gen(1), dtype=F64)
    delta = 0.1 * torch.randn(6, 5, generator=_gen(2), dtype=F64)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    losses = {}
    for prediction in ("eps", "x0", "v"):
        d = _diffusion(prediction=prediction)
        xt = d.q_sample(x0, t, noise)
        bad_x0 = x0 + delta
        bad_eps = d.predict_eps_from_xstart(xt, t, bad_x0)
        out = {"eps": bad_eps, "x0": bad_x0, "v": d.predict_v(bad_x0, bad_eps, t)}[prediction]
        losses[prediction] = d.training_losses(
            lambda x, ts, o=out: o, x0, t, noise=noise, loss_weighting="min_snr"
        )["loss"]
    snr = torch.tensor(d.alphas_cumprod / (1 - d.alphas_cumprod))[t]
    expected = snr.clamp(max=5.0) * (delta**2).mean(dim=1)
    for prediction, loss in losses.items():
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-12, msg=prediction)


def test_model_called_with_original_timesteps():
    base = _diffusion()
    d = respace(base, [0, 100, 500, 999])
    seen = []

    def model(x, ts):
        seen.append(ts.tolist())
        return torch.zeros_like(x)

    d.training_losses(model, torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]))
    assert seen == [[0, 100, 500, 999]]


def test_sample_timesteps_reproducible_and_in_range():
    d = _diffusion()
    a = d.sample_timesteps(1000, _gen(3))
    b = d.sample_timesteps(1000, _gen(3))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 1000


def test_clip_modes():
    x = torch.tensor([[0.5, -3.0, 2.0, 0.25]])
    assert clip_xstart(x, None) is x and clip_xstart(x, "none") is x
    assert clip_xstart(x, "static").tolist() == [[0.5, -1.0, 1.0, 0.25]]
    # Dynamic thresholding with percentile 1: s = max |x| = 3, so x / 3.
    torch.testing.assert_close(clip_xstart(x, DynamicThreshold(1.0)), x / 3.0)
    # Small values are left alone (s = max(1, quantile)).
    small = torch.tensor([[0.2, -0.4]])
    torch.testing.assert_close(clip_xstart(small, "dynamic"), small)
    with pytest.raises(ValueError, match="clip must be"):
        clip_xstart(x, "sometimes")
    with pytest.raises(ValueError, match="percentile"):
        DynamicThreshold(1.5)


def test_clipped_xstart_keeps_eps_consistent():
    d = _diffusion(prediction="x0")
    xt = torch.randn(3, 4, generator=_gen(0), dtype=F64)
    t = torch.tensor([10, 20, 30])
    pred_xstart, eps = d.model_output_to(xt, t, 5 * torch.ones_like(xt), clip="static")
    assert pred_xstart.max() == 1.0
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), pred_xstart)


def test_bad_arguments():
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(np.full(10, 0.1), prediction="score")
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion(np.full(10, 0.1), variance="learned")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, 0.0]))
    d = _diffusion(variance="learned_range")
    with pytest.raises(ValueError, match="learned-variance model output"):
        d.p_mean_variance(torch.zeros(2, 3), torch.zeros(2, 3), 5)
    with pytest.raises(ValueError, match="loss_weighting"):
        _diffusion().training_losses(
            lambda x, t: x, torch.zeros(2, 3), torch.tensor([1, 2]), loss_weighting="snr"
        )


def test_float_clip_range_and_unclamped_learned_variance():
    """A float clip clamps x0 to [-r, r]; clamp_variance=False interpolates the log variance with
    raw values (diffusers' UnCLIPScheduler) and survives respacing."""
    from unclip.diffusion.gaussian import clip_xstart
    from unclip.diffusion.respace import respace

    x = torch.tensor([[-7.0, -2.0, 3.0, 9.0]])
    assert torch.equal(clip_xstart(x, 5.0), torch.tensor([[-5.0, -2.0, 3.0, 5.0]]))
    with pytest.raises(ValueError, match="range must be > 0"):
        clip_xstart(x, 0.0)
    betas = GaussianDiffusion.from_schedule("cosine", 50).betas
    clamped = GaussianDiffusion(betas, variance="learned_range")
    raw = respace(GaussianDiffusion(betas, variance="learned_range", clamp_variance=False), range(0, 50, 5))
    assert raw.clamp_variance is False
    x_t = torch.zeros(1, 1, 2, 2)
    out = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)], dim=1)  # v = 2, outside [-1, 1]
    raw_full = GaussianDiffusion(betas, variance="learned_range", clamp_variance=False)
    lv_raw = raw_full.p_mean_variance(out, x_t, 10).log_variance
    lv_clamped = clamped.p_mean_variance(out, x_t, 10).log_variance
    max_log = float(np.log(betas[10]))
    min_log = float(clamped.posterior_log_variance_clipped[10])
    assert torch.allclose(lv_clamped, torch.full_like(lv_clamped, max_log))
    assert torch.allclose(lv_raw, torch.full_like(lv_raw, 1.5 * max_log - 0.5 * min_log), rtol=1e-6)
