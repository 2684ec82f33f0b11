"""Beta schedules: golden values from the published formulas, recomputed here independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unclip.diffusion.schedules import get_betas, list_schedules


def _cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    # iDDPM eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi / 2).
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


@pytest.mark.parametrize("num_timesteps", [1000, 250, 50])
@pytest.mark.parametrize("index", [0, 1, 7, 25, 49])
def test_cosine_golden_values_from_formula(num_timesteps, index):
    T = num_timesteps
    i = index * T // 50
    expected = min(1 - _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T), 0.999)
    assert get_betas("cosine", T)[i] == pytest.approx(expected, rel=1e-12)


def test_cosine_pinned_values():
    # Pinned once; if these move, a released schedule changed (never allowed: add a new name).
    betas = get_betas("cosine", 1000)
    assert betas[0] == pytest.approx(4.128422482196914e-05, rel=1e-12)
    assert betas[500] == pytest.approx(3.155691441585007e-03, rel=1e-12)
    assert betas[998] == pytest.approx(0.7499993929011166, rel=1e-12)
    assert betas[999] == 0.999  # clipped at max_beta
    abar = np.cumprod(1 - betas)
    assert abar[500] == pytest.approx(0.49228517244880304, rel=1e-12)
    assert abar[-1] == pytest.approx(2.4287669070348567e-09, rel=1e-9)


@pytest.mark.parametrize("num_timesteps", [1000, 250, 100])
def test_linear_golden_values(num_timesteps):
    T = num_timesteps
    betas = get_betas("linear", T)
    scale = 1000 / T
    assert betas[0] == pytest.approx(1e-4 * scale, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * scale, rel=1e-12)
    for i in (1, T // 3, T // 2, T - 2):
        expected = 1e-4 * scale + i / (T - 1) * (0.02 - 1e-4) * scale
        assert betas[i] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("num_timesteps", [1000, 64])
def test_schedule_properties(name, num_timesteps):
    betas = get_betas(name, num_timesteps)
    assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
    assert np.all(betas > 0) and np.all(betas < 1)
    abar = np.cumprod(1 - betas)
    assert np.all(np.diff(abar) < 0), "alphas_cumprod must be strictly decreasing"
    assert abar[0] > 0.99 and abar[-1] < 0.01


def test_cosine_beta_capped():
    assert get_betas("cosine", 1000).max() == 0.999
    assert get_betas("cosine", 1).tolist() == [0.999]


def test_list_and_unknown_names():
    assert list_schedules() == ["cosine", "linear"]
    with pytest.raises(ValueError, match=r"unknown beta schedule 'cosin'.*cosine, linear"):
        get_betas("cosin", 1000)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "10"])
def test_bad_num_timesteps(bad):
    with pytest.raises(ValueError, match="num_timesteps"):
        get_betas("cosine", bad)


def test_linear_needs_enough_steps():
    with pytest.raises(ValueError, match="num_timesteps > 20"):
        get_betas("linear", 20)
    assert get_betas("linear", 21)[-1] < 1
