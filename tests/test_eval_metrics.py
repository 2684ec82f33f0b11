"""Metric functions of the evaluation suites on inputs with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from unclip.eval import metrics as M


def test_fd_of_a_set_with_itself_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_rises_monotonically_with_noise() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 6))
    noise = rng.normal(size=x.shape)
    fds = [M.frechet_distance(x, x + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert fds[0] == pytest.approx(0.0, abs=1e-8)
    assert all(b > a for a, b in itertools.pairwise(fds)), fds


def test_fd_closed_form_gaussians() -> None:
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # Non-diagonal: a rotation applied to both covariances leaves the distance unchanged.
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    got = M.frechet_from_stats(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)
    # And from samples: large samples of those Gaussians approach the closed form.
    rng = np.random.default_rng(3)
    xa = mu1 + rng.normal(size=(200_000, 3)) * np.sqrt(a)
    xb = mu2 + rng.normal(size=(200_000, 3)) * np.sqrt(b)
    assert M.frechet_distance(xa, xb) == pytest.approx(expected, rel=0.02)


def test_entropy_of_known_distributions() -> None:
    assert M.entropy(["a"] * 10) == 0.0
    assert M.entropy(["a", "b"] * 5) == pytest.approx(1.0)
    assert M.entropy(list("abcdefgh")) == pytest.approx(3.0)
    assert M.entropy({"x": 0.5, "y": 0.25, "z": 0.25}) == pytest.approx(1.5)
    assert M.entropy(list("ab"), base=math.e) == pytest.approx(math.log(2))
    assert M.entropy_ratio(list("aabb"), list("abcd")) == pytest.approx(0.5)
    assert math.isnan(M.entropy_ratio(list("ab"), list("aa")))


def test_coverage_spread_pairwise() -> None:
    assert M.coverage(["a", "b", "zz"], ["a", "b", "c", "d"]) == 0.5
    assert M.position_spread(np.array([[0.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)
    assert M.mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == pytest.approx(10 / 3)
    assert math.isnan(M.mean_pairwise_distance(np.zeros((1, 3))))


def test_monotone_and_spearman() -> None:
    assert M.monotone_fraction([[0, 0.5, 1], [1, 0.2, 0], [0, 1, 0]]) == pytest.approx(2 / 3)
    assert M.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_oracle_scores_real_renders_perfectly_through_the_suite() -> None:
    """Real renders of the suite's own prompt sets score 1.0 through its scoring path.

    At 64 px exactly; at the suite's 32 px the oracle's own error (0.4 % on shape, mostly small
    outlined shapes, docs/data-shapes.md) may cost an image, which is why the report carries a
    real-renders row as the ceiling.
    """
    from unclip.eval.shapes_suite import Settings, diversity, fidelity, make_prompt_sets, render_specs

    s = Settings.quick(seed=3, n=8)
    sets = make_prompt_sets(s)
    for name in ("single", "two", "heldout", "diversity"):
        ps = sets[name]
        for real in (ps.real, ps.real2):
            f = fidelity(render_specs(real, 64), ps.prompts)
            assert f["all_correct"] == 1.0, (name, f)
            assert f["attr_acc"] == 1.0
        assert fidelity(render_specs(ps.real, 32), ps.prompts)["all_correct"] >= 0.85
    assert fidelity(render_specs(sets["two"].real, 64), sets["two"].prompts)["binding"] == 1.0
    # Renders of the diversity prompts read as diverse as the data (ratio near 1, not 0).
    dv = sets["diversity"]
    imgs = render_specs(dv.real, 32)
    d = diversity(imgs, dv.prompts, imgs.flatten(1).numpy(), s)
    assert 0.5 < d["entropy_ratio"] < 1.5
    # A collapsed generator (every sample the same image) has no diversity.
    same = imgs[:1].repeat(len(imgs), 1, 1, 1)
    assert diversity(same, dv.prompts, same.flatten(1).numpy(), s)["entropy_ratio"] == 0.0


def test_eval_cnn_loads_and_features_have_the_documented_shape() -> None:
    from unclip.eval.features import FEATURE_DIM, extract_features, feature_info, load_features

    model = load_features()
    x = torch.zeros(5, 3, 32, 32)
    assert model.features(x).shape == (5, FEATURE_DIM)
    assert extract_features(model, x).shape == (5, FEATURE_DIM)
    info = feature_info()
    assert info["feature_dim"] == FEATURE_DIM
    assert info["training"]["test_accuracy"]["single/shape"] > 0.9


def test_eval_cnn_reads_renders() -> None:
    """The shipped CNN classifies fresh single-object renders (a check that weights loaded right)."""
    from unclip.data.shapes import SHAPES
    from unclip.eval.features import load_features, make_dataset

    model = load_features()
    x, y, specs = make_dataset(64, seed=12345)
    single = (y["count"] == 0).nonzero().flatten()
    with torch.no_grad():
        pred = model(x[single])["shape"].argmax(1)
    truth = torch.tensor([SHAPES.index(specs[i].objects[0].shape) for i in single.tolist()])
    assert (pred == truth).float().mean() > 0.8


def test_claim_verdicts_use_two_standard_errors() -> None:
    from unclip.eval.report import _diff_verdict

    assert _diff_verdict(0.9, 0.1, 100, 100, True) == "holds"
    assert _diff_verdict(0.1, 0.9, 100, 100, True) == "does not hold"
    assert _diff_verdict(0.55, 0.45, 10, 10, True) == "within noise"  # 10 samples cannot tell
    assert _diff_verdict(0.55, 0.45, 10_000, 10_000, True) == "holds"
    assert _diff_verdict(float("nan"), 0.5, 10, 10, True) == "not measured"
