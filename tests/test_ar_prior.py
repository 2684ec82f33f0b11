"""The autoregressive prior (paper §2.2) with tiny configs: PCA + quantiser round trip, the
dot-product token, condition dropout, guidance, overfitting and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unclip.checkpoint import load_component, save_component
from unclip.clip.interface import TextEncoding
from unclip.models.ar_prior import ARPrior, ARPriorConfig, choose_num_components
from unclip.models.pca import PCAQuantizer, fit_pca

D, W, L = 16, 12, 8


def make_text(b: int, seed: int = 0, length: int = 6) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i in range(b):
        mask[i, : 2 + (i % (length - 1))] = True
    tokens = torch.randn(b, length, W, generator=g) * mask[..., None]
    return TextEncoding(F.normalize(torch.randn(b, D, generator=g), dim=-1), tokens, mask)


def make_images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(1.0, 0.05, D)  # a decaying spectrum, like CLIP embeddings
    return F.normalize(torch.randn(n, D, generator=g) * scales + 2.0 * torch.ones(D) / D**0.5, dim=-1)


def tiny_ar(**kw) -> ARPrior:
    torch.manual_seed(0)
    base = dict(embed_dim=D, text_width=W, max_text_len=L, width=32, layers=2, heads=2)
    base |= dict(num_components=6, num_buckets=32, num_dot_buckets=4) | kw
    prior = ARPrior(ARPriorConfig(**base))
    prior.fit_statistics(make_images(512), make_text(512).text_emb)
    torch.nn.init.normal_(prior.head.weight, std=0.5)  # the head is zero-initialised
    return prior.eval()


@pytest.mark.parametrize("scheme", ["quantile", "uniform"])
def test_pca_quantize_round_trip_within_bound(scheme):
    x = make_images(600)
    q = PCAQuantizer(D, 8, 64)
    stats = q.fit(x, scheme=scheme)
    # Orthonormal components, sorted by decreasing variance.
    torch.testing.assert_close(q.components @ q.components.T, torch.eye(8), atol=1e-5, rtol=0)
    var = q.project(x).var(0)
    assert torch.all(var[:-1] >= var[1:] - 1e-6)
    # Per embedding: ||x - x_hat||^2 <= ||x - P_K x||^2 + sum_k (w_k / 2)^2 (module docstring).
    pca_err = ((x - q.unproject(q.project(x))) ** 2).sum(1)
    rt_err = ((x - q.decode(q.encode(x))) ** 2).sum(1)
    assert torch.all(rt_err <= pca_err + stats["bound_sq"] + 1e-6)
    # Per coefficient: |c - dequantize(quantize(c))| <= half the widest bucket of its component.
    c = q.project(x)
    assert torch.all((c - q.dequantize(q.quantize(c))).abs() <= q.error_bound() + 1e-6)
    assert stats["roundtrip_rel_mse"] >= stats["pca_rel_mse"] - 1e-9
    tokens = q.encode(x)
    assert tokens.dtype == torch.long and tokens.min() >= 0 and tokens.max() < 64


def test_choose_num_components_by_variance():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:3]
    x = torch.randn(2000, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0]) @ basis
    x = x + 0.01 * torch.randn(2000, D, generator=g)
    k, kept = choose_num_components(x, 0.99)
    assert k == 3 and kept >= 0.99
    _, comps, evals = fit_pca(x, num_components=5)
    assert comps.shape == (5, D) and torch.all(evals[:-1] >= evals[1:])


def test_forward_shapes_and_drop_rate():
    prior = tiny_ar(cond_drop_prob=0.1)
    text = make_text(3)
    logits = prior(
        text.text_tokens, text.text_mask, text.text_emb, torch.tensor([0, 1, 3]), torch.zeros(3, 4).long()
    )
    assert logits.shape == (3, 5, 32)
    n = 4000
    big = make_text(n)
    out = prior.training_loss(make_images(n), big.text_tokens, big.text_mask, big.text_emb)
    assert abs(out["drop"].float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5


def test_dropped_samples_keep_dot_and_image_tokens():
    prior = tiny_ar()
    text, other = make_text(2, seed=0), make_text(2, seed=7)
    dot, comps = torch.tensor([3, 3]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    drop = torch.tensor([True, False])
    a = prior(text.text_tokens, text.text_mask, text.text_emb, dot, comps, drop)
    b = prior(other.text_tokens, other.text_mask, other.text_emb, dot, comps, drop)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    c = prior(text.text_tokens, text.text_mask, text.text_emb, torch.tensor([0, 0]), comps, drop)
    assert not torch.allclose(a[0], c[0])  # the dot token still conditions dropped samples


def test_kv_cache_matches_full_forward():
    prior = tiny_ar()
    text = make_text(3)
    dot = torch.tensor([0, 2, 3])
    drop = torch.tensor([False, True, False])
    tokens = torch.randint(0, 32, (3, 6))
    kw = {
        "text_tokens": text.text_tokens,
        "text_mask": text.text_mask,
        "text_emb": text.text_emb,
        "drop": drop,
    }
    full = prior(dot_token=dot, comp_tokens=tokens[:, :-1], **kw)  # (3, 6, NB)
    fn = prior._cached_logits_fn("fp32", torch.device("cpu"))
    for m in range(6):
        torch.testing.assert_close(fn(tokens[:, :m], dot, **kw), full[:, m], atol=1e-4, rtol=1e-4)


def _dot_world(n: int = 64) -> tuple[TextEncoding, torch.Tensor]:
    """One caption; half the images align with its text_emb (high dot), half are orthogonal."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    t0, e2 = basis[0], basis[1]
    noise = 0.05 * torch.randn(n, D, generator=g)
    img = F.normalize(torch.where(torch.arange(n)[:, None] % 2 == 0, t0, e2) + noise, dim=-1)
    tokens = torch.randn(1, 4, W, generator=g).expand(n, -1, -1)
    return TextEncoding(t0.expand(n, -1), tokens, torch.ones(n, 4, dtype=torch.bool)), img


def test_sampling_follows_the_dot_product_token():
    text, img = _dot_world()
    torch.manual_seed(0)
    cfg = ARPriorConfig(
        embed_dim=D, text_width=W, max_text_len=L, width=32, layers=2, heads=2,
        num_components=3, num_buckets=16, num_dot_buckets=4,
    )  # fmt: skip
    prior = ARPrior(cfg)
    prior.fit_statistics(img, text.text_emb)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = prior.training_loss(img, text.text_tokens, text.text_mask, text.text_emb, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    one = text[:1]
    hi = prior.sample(one, num_samples_per_prompt=32, dot_token=3, generator=torch.Generator().manual_seed(1))
    lo = prior.sample(one, num_samples_per_prompt=32, dot_token=0, generator=torch.Generator().manual_seed(1))
    t0 = one.text_emb[0]
    assert (hi @ t0).mean() > 0.8  # conditioned on a top-quantile dot product: aligned images
    assert (lo @ t0).mean() < 0.3  # bottom quantile: the orthogonal ones
    # The default draws the dot token from the top half of the training distribution.
    default = prior.sample(one, num_samples_per_prompt=32, generator=torch.Generator().manual_seed(2))
    assert (default @ t0).mean() > 0.8


def test_loss_falls_on_tiny_overfit_set():
    prior = tiny_ar()
    prior.train()
    text, img = make_text(8), make_images(8)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        loss = prior.training_loss(img, text.text_tokens, text.text_mask, text.text_emb, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.3 * sum(losses[:10])


def test_sample_shapes_guidance_negative_and_options():
    prior = tiny_ar()
    text = make_text(3)

    def run(**kw):
        return prior.sample(text, num_samples_per_prompt=2, generator=torch.Generator().manual_seed(0), **kw)

    plain = run(guidance_scale=1.0)
    assert plain.shape == (6, D)
    torch.testing.assert_close(plain.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(run(guidance_scale=1.0), plain)
    torch.testing.assert_close(run(steps=64, guidance_scale=1.0), plain)  # steps ignored
    assert not torch.allclose(run(), plain)  # guided by default
    assert run(guidance_scale=3.0, negative=make_text(1, seed=4), top_k=4, temperature=0.7).shape == (6, D)
    assert run(best_of=3).shape == (6, D)
    with pytest.raises(ValueError):
        run(temperature=0.0)
    with pytest.raises(ValueError):
        run(dot_token=99)
    with pytest.raises(ValueError, match="text_emb"):
        prior.sample(TextEncoding(torch.randn(2, D + 1), text.text_tokens[:2], text.text_mask[:2]))


def test_save_load_identical(tmp_path):
    prior = tiny_ar()
    save_component(prior, prior.config, "ar_prior", tmp_path / "p")
    loaded, cfg, header = load_component(tmp_path / "p")
    assert header["kind"] == "ar_prior" and cfg == prior.config
    for name in ("pca.mean", "pca.components", "pca.edges", "dot_edges"):
        assert torch.equal(loaded.state_dict()[name], prior.state_dict()[name])
    text = make_text(2)
    a = prior.sample(text, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = loaded.sample(text, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
