"""The self-check: exact Gaussian denoiser, the report, and the `unclip selfcheck` command."""

from __future__ import annotations

import math

import pytest
import torch

from unclip.cli import main
from unclip.diffusion import GaussianDiffusion
from unclip.selfcheck import DEFAULT_CHECKS, GaussianData, format_table, run_selfcheck


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_is_the_posterior_mean(prediction):
    # E[x_0 | x_t] by Monte Carlo on one dim: regress x_0 on x_t over many joint draws.
    d = GaussianDiffusion.from_schedule("cosine", 1000, prediction=prediction)
    data = GaussianData(mean=(0.7,), std=(0.4,))
    g = torch.Generator().manual_seed(0)
    x0 = data.sample(100_000, g)
    t = torch.full((100_000,), 400)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    pred_xstart, _ = d.model_output_to(xt, t, data.denoiser(d)(xt, t))
    slope = float(torch.cov(torch.stack([x0[:, 0], xt[:, 0]]))[0, 1] / xt[:, 0].var())
    intercept = float(x0.mean() - slope * xt.mean())
    ref = intercept + slope * xt
    assert float((pred_xstart - ref).abs().max()) < 0.02


def test_flow_map_is_exact_for_ode_invariant():
    data = GaussianData(mean=(0.5, -1.0), std=(0.2, 1.5))
    x = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    there = data.flow(x, 0.01, 0.9)
    back = data.flow(there, 0.9, 0.01)
    torch.testing.assert_close(back, x)


def test_learned_variance_channels_match_exact_reverse_variance():
    d = GaussianDiffusion.from_schedule("cosine", 1000, variance="learned_range")
    data = GaussianData(mean=(0.0,), std=(0.5,))
    t = torch.tensor([10, 500])
    out = data.denoiser(d)(torch.zeros(2, 1, dtype=torch.float64), t)
    assert out.shape == (2, 2) and out[:, 1].abs().max() <= 1
    log_var = d.p_mean_variance(out, torch.zeros(2, 1, dtype=torch.float64), t).log_variance[:, 0]
    abar = torch.tensor(d.alphas_cumprod[t.numpy()])
    var_x0 = 0.25 * (1 - abar) / (abar * 0.25 + 1 - abar)
    exact = (
        torch.tensor(d.posterior_variance[t.numpy()])
        + torch.tensor(d.posterior_mean_coef1[t.numpy()]) ** 2 * var_x0
    )
    torch.testing.assert_close(log_var, exact.log())


def test_run_selfcheck_quick_passes():
    report = run_selfcheck(num_samples=300, seed=0, quick=True)
    assert report.passed, report.failures
    assert report.checked == len(DEFAULT_CHECKS)
    table = format_table(report.runs)
    assert "dpmpp_2m" in table and "flow err" in table
    assert all(math.isfinite(r.var_err) for r in report.runs)


def test_cli_writes_figure(tmp_path, capsys):
    out = tmp_path / "sc"
    rc = main(["--quiet", "selfcheck", "--num-samples", "200", "--quick", "--seed", "1", "--out", str(out)])
    captured = capsys.readouterr().out
    assert rc == 0, captured
    png = out / "selfcheck.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in captured and "all" in captured and "ddpm" in captured


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["selfcheck", "--num-samples", "0"]) == 2
    assert "--num-samples" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["selfcheck", "--out", str(afile), "--quick"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["selfcheck", "--seed", "abc"])
    assert e.value.code == 2


@pytest.mark.slow
def test_full_selfcheck_passes(tmp_path):
    assert main(["--quiet", "selfcheck", "--out", str(tmp_path)]) == 0
