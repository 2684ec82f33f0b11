"""PCA of CLIP image embeddings and a per-component scalar quantiser (the AR prior's tokens).

Paper §2.2: the autoregressive prior does not model the D-dim embedding directly. It projects the
embedding onto its leading principal components (319 of 1024 in the paper, "under 1% average
MSE"), sorted by decreasing eigenvalue, and quantises each component into 1024 buckets; a causal
transformer then predicts that token sequence. The bucket scheme is not given in the paper
(spec §9.6), so both are offered here:

- ``"quantile"`` (default): equal-mass buckets from the training distribution of each component.
  Every token is used about equally often, which is what a softmax classifier learns best from,
  and since bucket ``b`` is "the b-th quantile" in every component, the AR prior can share one
  token embedding table across components with a consistent meaning.
- ``"uniform"``: equal-width buckets between the component's training min and max.

Both decode a token to its bucket's midpoint, so the quantisation error of a coefficient that lies
inside the training range is at most half its bucket's width. :meth:`PCAQuantizer.error_bound`
returns that bound, and the round trip error of an embedding ``x`` obeys

    ||x - decode(encode(x))||^2 <= ||x - P_K x||^2 + sum_k (w_k / 2)^2

where ``P_K`` is the projection onto the kept components and ``w_k`` the widest bucket of
component ``k`` (the two terms are orthogonal: the first lies outside the kept subspace).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

BucketScheme = Literal["quantile", "uniform"]


def fit_pca(
    x: torch.Tensor, variance: float = 0.99, num_components: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of a set of embeddings.

    Args:
        x: (N, D) embeddings.
        variance: keep the fewest leading components whose eigenvalues sum to at least this
            fraction of the total variance (ignored when ``num_components`` is given).
        num_components: keep exactly this many components.

    Returns:
        mean (D,), components (K, D) orthonormal rows sorted by decreasing eigenvalue, and the
        eigenvalues (all D of them, decreasing) so callers can report the retained variance.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_pca needs an (N, D) tensor with N >= 2, got {tuple(x.shape)}")
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    if num_components is None:
        frac = evals.cumsum(0) / evals.sum().clamp_min(1e-30)
        num_components = int((frac < variance - 1e-12).sum().item()) + 1
    num_components = max(1, min(int(num_components), x.shape[1]))
    return mean.float(), evecs[:, :num_components].T.contiguous().float(), evals.float()


def fit_edges(values: torch.Tensor, num_buckets: int, scheme: BucketScheme = "quantile") -> torch.Tensor:
    """Bucket edges for each column of ``values``.

    Args:
        values: (N, K) training values (one column per quantised quantity).
        num_buckets: NB buckets per column.
        scheme: "quantile" (equal mass) or "uniform" (equal width between min and max).

    Returns:
        (K, NB + 1) non-decreasing edges; edges[:, 0] and edges[:, -1] are the training min/max.
    """
    if values.ndim != 2:
        raise ValueError(f"fit_edges needs (N, K) values, got {tuple(values.shape)}")
    v = values.double()
    if scheme == "quantile":
        q = torch.linspace(0.0, 1.0, num_buckets + 1, dtype=torch.float64)
        # torch.quantile refuses very large inputs; a sorted-index lookup is the same thing.
        s, _ = v.sort(0)
        idx = (q * (s.shape[0] - 1)).round().long()
        edges = s[idx].T
    elif scheme == "uniform":
        lo, hi = v.min(0).values, v.max(0).values
        w = torch.linspace(0.0, 1.0, num_buckets + 1, dtype=torch.float64)
        edges = lo[:, None] + (hi - lo)[:, None] * w[None]
    else:
        raise ValueError(f"unknown bucket scheme {scheme!r}; choose 'quantile' or 'uniform'")
    return edges.float().contiguous()


def bucketize(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Token of each value: the bucket it falls in, clamped to the outermost buckets.

    Args:
        values: (N, K).
        edges: (K, NB + 1).

    Returns:
        (N, K) long tokens in [0, NB).
    """
    nb = edges.shape[1] - 1
    inner = edges[:, 1:-1].contiguous()  # (K, NB-1): interior edges decide the bucket
    tok = torch.searchsorted(inner, values.T.contiguous().to(inner.dtype), right=True).T
    return tok.clamp_(0, nb - 1)


def bucket_centers(edges: torch.Tensor) -> torch.Tensor:
    """(K, NB + 1) edges -> (K, NB) bucket midpoints."""
    return 0.5 * (edges[:, 1:] + edges[:, :-1])


class PCAQuantizer(nn.Module):
    """PCA projection + per-component quantiser, with all statistics stored as buffers.

    Build it empty (shapes only) from a config, then fill it with :meth:`fit` during training;
    a checkpoint then carries the mean, components and edges, so sampling needs no data.

    Args:
        embed_dim: D, the CLIP embedding width.
        num_components: K, the kept principal components.
        num_buckets: NB, tokens per component (paper: 1024).
    """

    def __init__(self, embed_dim: int, num_components: int, num_buckets: int) -> None:
        super().__init__()
        self.embed_dim, self.num_components, self.num_buckets = embed_dim, num_components, num_buckets
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("components", torch.eye(num_components, embed_dim))
        self.register_buffer("edges", torch.linspace(-1, 1, num_buckets + 1).repeat(num_components, 1))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, scheme: BucketScheme = "quantile") -> dict[str, float]:
        """Fit PCA (K fixed by the constructor) and the bucket edges on embeddings ``x`` (N, D).

        Returns:
            Statistics: retained variance fraction, PCA-only and round-trip relative MSE on ``x``,
            and the quantisation error bound (see the module docstring).
        """
        mean, comps, evals = fit_pca(x, num_components=self.num_components)
        if comps.shape[0] != self.num_components:
            raise ValueError(f"cannot keep {self.num_components} components of {x.shape[1]}-dim data")
        self.mean.copy_(mean)
        self.components.copy_(comps)
        self.edges.copy_(fit_edges(self.project(x), self.num_buckets, scheme))
        return self.stats(x) | {"retained_variance": float(evals[: self.num_components].sum() / evals.sum())}

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> (N, K) PCA coefficients."""
        return (x.float() - self.mean) @ self.components.T

    def unproject(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(N, K) coefficients -> (N, D) embeddings in the kept subspace (plus the mean)."""
        return coeffs.float() @ self.components + self.mean

    def quantize(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(N, K) coefficients -> (N, K) long tokens in [0, NB)."""
        return bucketize(coeffs.float(), self.edges)

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, K) long tokens -> (N, K) coefficients (bucket midpoints)."""
        centers = bucket_centers(self.edges)  # (K, NB)
        return centers.gather(1, tokens.T.long()).T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> (N, K) tokens."""
        return self.quantize(self.project(x))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, K) tokens -> (N, D) embeddings (not renormalised)."""
        return self.unproject(self.dequantize(tokens))

    def error_bound(self) -> torch.Tensor:
        """(K,) largest possible |c - dequantize(quantize(c))| for c inside the training range."""
        return 0.5 * (self.edges[:, 1:] - self.edges[:, :-1]).max(1).values

    @torch.no_grad()
    def stats(self, x: torch.Tensor) -> dict[str, float]:
        """Reconstruction statistics on embeddings ``x`` (N, D).

        ``pca_rel_mse`` and ``roundtrip_rel_mse`` are mean squared errors divided by the mean
        squared norm of the centred data (the paper's "average MSE" reading); ``bound_sq`` is
        ``sum_k (w_k/2)^2``, the worst-case squared quantisation error per embedding.
        """
        x = x.float()
        c = self.project(x)
        denom = ((x - self.mean) ** 2).sum(1).mean().clamp_min(1e-30)
        pca_err = ((x - self.unproject(c)) ** 2).sum(1)
        rt_err = ((x - self.decode(self.quantize(c))) ** 2).sum(1)
        return {
            "pca_rel_mse": float(pca_err.mean() / denom),
            "roundtrip_rel_mse": float(rt_err.mean() / denom),
            "roundtrip_max_sq": float(rt_err.max()),
            "bound_sq": float((self.error_bound() ** 2).sum()),
        }
