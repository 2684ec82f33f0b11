"""Respacing: which steps are kept, and that the respaced chain keeps the base marginals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unclip.diffusion import GaussianDiffusion, respace, space_timesteps


def _base(**kw) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 1000, **kw)


def test_count_is_evenly_strided_with_both_ends():
    steps = space_timesteps(1000, 10)
    assert steps == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "10") == steps
    assert space_timesteps(1000, 250)[:3] == [0, 4, 8] and space_timesteps(1000, 250)[-1] == 999
    assert len(space_timesteps(1000, 250)) == 250
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 1) == [999]
    assert space_timesteps(1000, 2) == [0, 999]


def test_ddim_stride():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim27") == list(range(0, 1000, 38))
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")


def test_glide_sections():
    steps = space_timesteps(1000, "10,10,3,2,2")
    assert len(steps) == 27
    counts = [sum(lo <= s < lo + 200 for s in steps) for lo in range(0, 1000, 200)]
    assert counts == [10, 10, 3, 2, 2]
    assert steps[:10] == [round(i * 199 / 9) for i in range(10)]
    assert steps[-2:] == [800, 999]
    # uneven division: the first sections get one more step
    assert space_timesteps(10, "1,1,1") == [0, 4, 7]


def test_logsnr_spacing():
    base = _base()
    steps = space_timesteps(1000, "logsnr20", alphas_cumprod=base.alphas_cumprod)
    assert len(steps) == 20 and steps[0] == 0 and steps[-1] == 999
    assert steps == sorted(set(steps))
    lam = 0.5 * np.log(base.alphas_cumprod / (1 - base.alphas_cumprod))[steps]
    gaps = -np.diff(lam)[:-4]  # away from t = T - 1, where integer steps cannot resolve lambda
    assert gaps.max() / gaps.min() < 1.25
    with pytest.raises(ValueError, match="alphas_cumprod"):
        space_timesteps(1000, "logsnr20")


def test_sequence_spec_and_errors():
    assert space_timesteps(1000, [5, 1, 5, 999]) == [1, 5, 999]
    for bad in (0, 1001, "fast", "ddim", "1,,2", "0,0", True, [1000], []):
        with pytest.raises(ValueError):
            space_timesteps(1000, bad)


@pytest.mark.parametrize("spec", [10, 250, "ddim50", "10,10,3,2,2", "logsnr15"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_respaced_alphas_cumprod_equal_base_at_kept_steps(spec, schedule):
    base = GaussianDiffusion.from_schedule(schedule, 1000, variance="learned_range", prediction="v")
    kept = space_timesteps(1000, spec, alphas_cumprod=base.alphas_cumprod)
    d = respace(base, kept)
    assert d.num_timesteps == len(kept)
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-13, atol=0)
    assert d.timestep_map.tolist() == kept
    assert d.prediction == "v" and d.variance == "learned_range"
    assert np.all(d.betas > 0) and np.all(d.betas < 1)


def test_respaced_q_sample_matches_base():
    base = _base()
    kept = space_timesteps(1000, 25)
    d = respace(base, kept)
    x0 = torch.randn(25, 3, dtype=torch.float64)
    noise = torch.randn(25, 3, dtype=torch.float64)
    torch.testing.assert_close(
        d.q_sample(x0, torch.arange(25), noise), base.q_sample(x0, torch.tensor(kept), noise)
    )
    assert d.model_timesteps(torch.arange(25)).tolist() == kept


def test_respace_composes_to_original_timesteps():
    base = _base()
    first = respace(base, space_timesteps(1000, 100))
    second = respace(first, [0, 50, 99])
    assert second.timestep_map.tolist() == [first.timestep_map[i] for i in (0, 50, 99)] == [0, 505, 999]
    np.testing.assert_allclose(second.alphas_cumprod, base.alphas_cumprod[[0, 505, 999]], rtol=1e-13)


def test_respace_keeping_everything_is_identity_and_bad_sets_fail():
    base = _base()
    assert respace(base, range(1000)) is base
    with pytest.raises(ValueError):
        respace(base, [])
    with pytest.raises(ValueError):
        respace(base, [0, 1000])
