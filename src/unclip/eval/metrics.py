"""Pure metric functions of the evaluation suites (numpy only, no models).

* :func:`frechet_distance` / :func:`gaussian_stats`: the Fréchet distance between Gaussians fitted
  to two feature sets (FID's formula [Heusel et al. 2017], on our own evaluation network's
  features; paper §5, Table 2 reports FID).
* :func:`entropy`, :func:`entropy_ratio`, :func:`coverage`: diversity of categorical attributes.
* :func:`mean_pairwise_distance`, :func:`position_spread`: diversity of continuous quantities.
* :func:`mean_or_nan`, :func:`monotone_fraction`, :func:`spearman`: small helpers the suites share.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np


# --------------------------------------------------------------------------- Fréchet distance
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, F), got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), which is stable for the
    rank-deficient covariances that small sample sets give.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F)."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


# --------------------------------------------------------------------------- categorical diversity
def distribution(values: Iterable[Hashable]) -> dict[Hashable, float]:
    """Empirical distribution of values (value -> probability)."""
    counts = Counter(values)
    total = sum(counts.values())
    return {k: c / total for k, c in counts.items()} if total else {}


def entropy(values: Iterable[Hashable] | dict[Hashable, float], base: float = 2.0) -> float:
    """Shannon entropy (bits by default) of a sample of values or of a distribution dict."""
    probs = values if isinstance(values, dict) else distribution(values)
    p = np.asarray([v for v in probs.values() if v > 0], dtype=np.float64)
    if p.size == 0:
        return 0.0
    p = p / p.sum()
    return float(-(p * np.log(p)).sum() / math.log(base))


def entropy_ratio(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """H(generated) / H(reference); NaN when the reference has no entropy."""
    h_ref = entropy(reference)
    return entropy(generated) / h_ref if h_ref > 0 else float("nan")


def coverage(generated: Iterable[Hashable], reference: Iterable[Hashable]) -> float:
    """Fraction of the distinct reference values that occur in the generated sample."""
    ref = set(reference)
    return len(ref & set(generated)) / len(ref) if ref else float("nan")


# --------------------------------------------------------------------------- continuous diversity
def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over unordered pairs of rows of (N, F); NaN for N < 2."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    sq = (x * x).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0, None)
    iu = np.triu_indices(n, k=1)
    return float(np.sqrt(d2[iu]).mean())


def position_spread(xy: np.ndarray) -> float:
    """Root of the summed variance of positions (N, 2) (canvas units); NaN for N < 2."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return float(np.sqrt(xy.var(0).sum())) if len(xy) >= 2 else float("nan")


# --------------------------------------------------------------------------- helpers
def mean_or_nan(values: Iterable[float | bool | None]) -> float:
    """Mean of the non-None values, NaN when there are none."""
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def monotone_fraction(sequences: Sequence[Sequence[float]]) -> float:
    """Fraction of sequences that are monotone (non-decreasing or non-increasing)."""
    if not sequences:
        return float("nan")
    ok = 0
    for s in sequences:
        d = np.diff(np.asarray(s, dtype=np.float64))
        ok += bool(np.all(d >= 0) or np.all(d <= 0))
    return ok / len(sequences)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN if either is constant)."""
    ra = np.argsort(np.argsort(np.asarray(a, dtype=np.float64), kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(np.asarray(b, dtype=np.float64), kind="stable"), kind="stable")
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
