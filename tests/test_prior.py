"""The diffusion prior (paper §2.2) with tiny configs: shapes, condition dropout, guidance,
best-of-N, scaling, overfitting and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unclip.checkpoint import load_component, save_component
from unclip.clip.interface import TextEncoding
from unclip.models.prior import DiffusionPrior, DiffusionPriorConfig, EmbeddingScaler, best_of_n

D, W, L = 16, 12, 8


def make_text(b: int, seed: int = 0, length: int = 6) -> TextEncoding:
    """A random TextEncoding with right-padded masks of varying length."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i in range(b):
        mask[i, : 2 + (i % (length - 1))] = True
    tokens = torch.randn(b, length, W, generator=g) * mask[..., None]
    return TextEncoding(F.normalize(torch.randn(b, D, generator=g), dim=-1), tokens, mask)


def make_images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A cone, like real CLIP embeddings: a shared mean direction plus spread.
    return F.normalize(torch.randn(n, D, generator=g) * 0.3 + torch.ones(D), dim=-1)


def tiny_prior(**kw) -> DiffusionPrior:
    torch.manual_seed(0)
    cfg = DiffusionPriorConfig(embed_dim=D, text_width=W, max_text_len=L, width=32, layers=2, heads=2, **kw)
    prior = DiffusionPrior(cfg)
    prior.scaler.fit(make_images(256))
    # Non-zero output layer so outputs depend on the inputs (it is zero-initialised).
    torch.nn.init.normal_(prior.out.weight, std=0.1)
    return prior.eval()


def test_forward_shape_and_zero_init():
    cfg = DiffusionPriorConfig(embed_dim=D, text_width=W, max_text_len=L, width=32, layers=2, heads=2)
    prior = DiffusionPrior(cfg)
    text = make_text(3)
    out = prior(
        torch.randn(3, D), torch.tensor([0, 10, 999]), text.text_tokens, text.text_mask, text.text_emb
    )
    assert out.shape == (3, D)
    assert torch.all(out == 0)  # zero-initialised output layer


def test_padding_does_not_change_outputs():
    prior = tiny_prior()
    text = make_text(4)
    x, t = torch.randn(4, D), torch.tensor([5, 50, 500, 900])
    a = prior(x, t, text.text_tokens, text.text_mask, text.text_emb)
    pad_tok = torch.cat([text.text_tokens, torch.randn(4, 2, W)], 1)  # garbage in padded slots
    pad_mask = torch.cat([text.text_mask, torch.zeros(4, 2, dtype=torch.bool)], 1)
    b = prior(x, t, pad_tok, pad_mask, text.text_emb)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cached_prefix_matches_full_forward():
    # Sampling caches the caption prefix and re-runs only [t, x_t, query] at each step.
    prior = tiny_prior()
    text = make_text(4)
    drop = torch.tensor([False, True, False, False])
    kw = {
        "text_tokens": text.text_tokens,
        "text_mask": text.text_mask,
        "text_emb": text.text_emb,
        "drop": drop,
    }
    fn = prior._cached_forward("fp32", torch.device("cpu"))
    for step in range(3):
        x, t = torch.randn(4, D), torch.tensor([999, 500, 20, 0]) - step
        torch.testing.assert_close(fn(x, t, **kw), prior(x, t, **kw), atol=1e-5, rtol=1e-4)


def test_drop_rate_and_x_t_never_dropped():
    prior = tiny_prior(cond_drop_prob=0.1)
    n = 4000
    text = make_text(n)
    img = make_images(n)
    seen = {}

    def hook(module, args, kwargs, output):
        seen["x_t"], seen["t"] = args[0].detach().clone(), args[1]
        seen.update({k: v for k, v in kwargs.items()})

    def x_in_hook(module, args, output):
        seen["x_in"] = args[0].detach().clone()

    h1 = prior.register_forward_hook(hook, with_kwargs=True)
    h2 = prior.x_in.register_forward_hook(x_in_hook)
    g = torch.Generator().manual_seed(3)
    out = prior.training_loss(img, text.text_tokens, text.text_mask, text.text_emb, generator=g)
    h1.remove(), h2.remove()
    drop = out["drop"]
    # The rate measured on the batch: 4000 draws, 10% +- 5 sigma.
    assert abs(drop.float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    assert torch.equal(seen["drop"], drop)
    # x_t is q_sample(scaled x_0) for EVERY sample, dropped ones included, and reaches x_in as is.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn(n, D, generator=g)
    expected = prior.diffusion.q_sample(prior.scaler.scale(img), t, noise)
    torch.testing.assert_close(seen["x_t"], expected)
    torch.testing.assert_close(seen["x_in"][drop], expected[drop])
    assert drop.any() and (~drop).any()


def test_dropped_samples_ignore_text_only():
    prior = tiny_prior()
    text, other = make_text(4, seed=0), make_text(4, seed=9)
    x, t = torch.randn(4, D), torch.tensor([100, 200, 300, 400])
    drop = torch.tensor([True, True, False, False])
    a = prior(x, t, text.text_tokens, text.text_mask, text.text_emb, drop=drop)
    b = prior(x, t, other.text_tokens, other.text_mask, other.text_emb, drop=drop)
    torch.testing.assert_close(a[:2], b[:2])  # the null replaced the text
    assert not torch.allclose(a[2:], b[2:])  # the text is used when kept
    c = prior(x + 1.0, t, text.text_tokens, text.text_mask, text.text_emb, drop=drop)
    assert not torch.allclose(a[:2], c[:2])  # x_t still drives the dropped samples


def test_scaler_round_trip_and_stats():
    x = make_images(512)
    for scheme in ("center_scale", "sqrt_dim", "standardize"):
        s = EmbeddingScaler(D, scheme, 1.0)
        s.fit(x)
        y = s.scale(x)
        torch.testing.assert_close(s.unscale(y), x, atol=1e-5, rtol=1e-5)
        if scheme != "sqrt_dim":
            assert abs(y.pow(2).mean().sqrt().item() - 1.0) < 1e-3  # unit variance inputs
            assert y.mean(0).abs().max() < 1e-4


def test_best_of_n_picks_max_dot():
    text_emb = F.normalize(torch.randn(3, D), dim=-1)
    cand = F.normalize(torch.randn(3 * 2 * 4, D), dim=-1)
    out = best_of_n(cand, text_emb, n=2, k=4)
    c = cand.reshape(3, 2, 4, D)
    for b in range(3):
        for i in range(2):
            scores = c[b, i] @ text_emb[b]
            assert torch.equal(out[b * 2 + i], c[b, i, scores.argmax()])


def test_sample_best_of_matches_candidates():
    prior = tiny_prior()
    text = make_text(2)
    # best_of=4, n=1 draws the same x_T as n=4, best_of=1 (prompt-major), and DDIM eta=0 is
    # deterministic, so best-of must return the candidate with the largest dot product.
    cands = prior.sample(
        text, num_samples_per_prompt=4, best_of=1, steps=8, generator=torch.Generator().manual_seed(1)
    )
    best = prior.sample(
        text, num_samples_per_prompt=1, best_of=4, steps=8, generator=torch.Generator().manual_seed(1)
    )
    for b in range(2):
        c = cands[b * 4 : (b + 1) * 4]
        torch.testing.assert_close(best[b], c[(c @ text.text_emb[b]).argmax()])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_per_sample_generators_make_samples_batch_independent(sampler):
    """One generator per returned sample: sample j of a batch equals a lone call with generator j,
    also with best-of-3 and a stochastic sampler (fp32, so only rounding may differ)."""
    prior = tiny_prior()
    text = make_text(3)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    kw = {"steps": 6, "best_of": 3, "precision": "fp32", "sampler": sampler, "guidance_scale": 2.0}
    batch = prior.sample(text, num_samples_per_prompt=2, generator=gens(range(10, 16)), **kw)
    for j in range(6):
        alone = prior.sample(text[j // 2], generator=gens([10 + j]), **kw)
        torch.testing.assert_close(alone[0], batch[j], atol=1e-5, rtol=0)
    # Different generators give different samples; the count must match.
    assert not torch.allclose(batch[0], batch[1])
    with pytest.raises(ValueError, match="generators"):
        prior.sample(text, generator=gens(range(2)), **kw)


def test_sample_shapes_guidance_and_negative():
    prior = tiny_prior()
    text = make_text(3)

    def run(**kw):
        return prior.sample(
            text, num_samples_per_prompt=2, steps=6, generator=torch.Generator().manual_seed(0), **kw
        )

    plain = run(guidance_scale=1.0)
    assert plain.shape == (6, D)
    torch.testing.assert_close(plain.norm(dim=-1), torch.ones(6))  # renormalised on output
    torch.testing.assert_close(run(guidance_scale=1.0), plain)  # deterministic
    guided = run(guidance_scale=3.0)
    assert not torch.allclose(guided, plain)
    neg = run(guidance_scale=3.0, negative=make_text(1, seed=5))
    assert neg.shape == (6, D) and not torch.allclose(neg, guided)
    assert run(sampler="dpmpp_2m").shape == (6, D)


def test_bad_inputs():
    prior = tiny_prior()
    text = make_text(2)
    with pytest.raises(ValueError, match="text_emb"):
        prior.sample(TextEncoding(torch.randn(2, D + 1), text.text_tokens, text.text_mask))
    with pytest.raises(ValueError, match="text_tokens"):
        prior.sample(TextEncoding(text.text_emb, torch.randn(2, 4, W + 1), text.text_mask[:, :4]))
    with pytest.raises(TypeError):
        prior.sample(text.text_emb)
    with pytest.raises(ValueError):
        prior.sample(text, negative=make_text(3))
    with pytest.raises(ValueError):
        DiffusionPriorConfig(width=30, heads=4)


def test_loss_falls_on_tiny_overfit_set():
    prior = tiny_prior()
    prior.train()
    text, img = make_text(8), make_images(8)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def eval_loss() -> float:
        with torch.no_grad():
            gg = torch.Generator().manual_seed(123)
            return sum(
                prior.training_loss(img, text.text_tokens, text.text_mask, text.text_emb, generator=gg)[
                    "loss"
                ].item()
                for _ in range(8)
            )

    before = eval_loss()
    for _ in range(150):
        loss = prior.training_loss(img, text.text_tokens, text.text_mask, text.text_emb, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.5 * before


def test_save_load_identical(tmp_path):
    prior = tiny_prior()
    save_component(prior, prior.config, "diffusion_prior", tmp_path / "p")
    loaded, cfg, header = load_component(tmp_path / "p")
    assert header["kind"] == "diffusion_prior" and cfg == prior.config
    assert torch.equal(loaded.scaler.mult, prior.scaler.mult)  # scaling stats travel in the checkpoint
    text = make_text(2)
    a = prior.sample(text, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = loaded.sample(text, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
