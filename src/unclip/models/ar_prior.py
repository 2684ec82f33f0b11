"""The unCLIP autoregressive prior: caption -> PCA tokens of the image embedding (paper §2.2).

The image embedding is reduced by PCA to its K leading components (sorted by eigenvalue), each
quantised into NB buckets (:mod:`unclip.models.pca`). A decoder-only causal transformer reads

    [caption tokens (L), text_emb, dot-product token, c_1, ..., c_{K-1}]

and predicts c_1 .. c_K, one token per position, with cross-entropy. The caption and text_emb
form the prefix (paper §2.2: "encoded as a prefix"). The dot-product token holds the quantised
z_i . z_t of the training pair; at sampling it is drawn from the top half of the training
distribution (paper footnote 2: the 50th percentile was best of 50/70/85/95), which steers
samples towards embeddings that match their caption better.

Classifier-free guidance: 10% of training samples have the caption tokens and text_emb replaced
by learned nulls (the dot-product token and the image tokens are kept). At sampling the logits
of the conditional and the null (or negative) branch are mixed, one batched forward per token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import add_kind
from unclip.models.pca import PCAQuantizer, bucketize, fit_edges, fit_pca
from unclip.models.prior import (
    PrefixCache,
    TextConditioner,
    best_of_n,
    check_text,
    cpu_attention,
    expand_negative,
    pad_len,
    repeat_text,
)
from unclip.models.prior_config import ARPriorConfig
from unclip.nn.embeddings import zero_module
from unclip.nn.norms import LayerNorm32
from unclip.nn.precision import autocast
from unclip.nn.transformer import Transformer
from unclip.sampling import guided_model_fn

# Guidance on the logits: not reported in the paper; 4 was best of 1/2/4/8 on the shapes suite
# (the AR prior gains much more from guidance than the diffusion prior; docs/priors.md).
DEFAULT_AR_GUIDANCE = 4.0

__all__ = ["ARPrior", "ARPriorConfig", "choose_num_components"]


def choose_num_components(image_emb: torch.Tensor, variance: float = 0.99) -> tuple[int, float]:
    """The fewest principal components that keep ``variance`` of the embeddings' variance.

    Args:
        image_emb: (N, D) training image embeddings.
        variance: fraction of the total variance to keep (paper: 319 of 1024 keep "nearly all").

    Returns:
        (K, retained fraction).
    """
    _, comps, evals = fit_pca(image_emb, variance=variance)
    k = comps.shape[0]
    return k, float(evals[:k].sum() / evals.sum())


class ARPrior(nn.Module):
    """Autoregressive prior p(PCA tokens of image_emb | caption) (paper §2.2).

    Args:
        config: the architecture (see :class:`ARPriorConfig`).
    """

    def __init__(self, config: ARPriorConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.pca = PCAQuantizer(cfg.embed_dim, cfg.num_components, cfg.num_buckets)
        # Quantile edges of the training text_emb . image_emb values (filled by fit_statistics).
        self.register_buffer("dot_edges", torch.linspace(-1.0, 1.0, cfg.num_dot_buckets + 1))
        self.text = TextConditioner(cfg.embed_dim, cfg.text_width, cfg.max_text_len, d)
        self.dot_embed = nn.Embedding(cfg.num_dot_buckets, d)
        # One token table for all components: with quantile buckets, token b means "the b-th
        # quantile" in every component; the component index comes from comp_pos.
        self.tok_embed = nn.Embedding(cfg.num_buckets, d)
        self.comp_pos = nn.Parameter(torch.randn(cfg.num_components, d) * 0.02)
        self.special_pos = nn.Parameter(torch.randn(2, d) * 0.02)  # text_emb, dot token
        for emb in (self.dot_embed, self.tok_embed):
            nn.init.normal_(emb.weight, std=0.02)
        self.transformer = Transformer(d, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_out = LayerNorm32(d)
        self.head = zero_module(nn.Linear(d, cfg.num_buckets))  # uniform predictions at init

    # ------------------------------------------------------------------ statistics

    @torch.no_grad()
    def fit_statistics(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
        """Fit the PCA, the component buckets and the dot-product buckets on training pairs.

        Args:
            image_emb: (N, D) image embeddings; text_emb: (N, D) their captions' text embeddings.

        Returns:
            PCA / quantisation statistics (see :meth:`PCAQuantizer.fit`) and dot-product quantiles.
        """
        stats = self.pca.fit(image_emb.float(), scheme=self.config.bucket_scheme)
        dots = (image_emb.float() * text_emb.float()).sum(-1)
        self.dot_edges.copy_(fit_edges(dots[:, None], self.config.num_dot_buckets, "quantile")[0])
        return stats | {
            "dot_p50": float(dots.median()),
            "dot_min": float(dots.min()),
            "dot_max": float(dots.max()),
        }

    def dot_tokens(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, D), (B, D) -> (B,) quantised dot-product tokens of true pairs."""
        dots = (image_emb.float() * text_emb.float()).sum(-1)
        return bucketize(dots[:, None], self.dot_edges[None])[:, 0]

    # ------------------------------------------------------------------ network

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        dot_token: torch.Tensor,
        comp_tokens: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            text_tokens: (B, L, W); text_mask: (B, L) bool; text_emb: (B, D).
            dot_token: (B,) long, the quantised dot-product token.
            comp_tokens: (B, m) long, the first m component tokens (0 <= m < K).
            drop: (B,) bool, True where the text conditioning is replaced by the nulls.

        Returns:
            (B, m + 1, NB) logits for components 1 .. m + 1.
        """
        b, m = comp_tokens.shape
        if m >= self.config.num_components:
            raise ValueError(f"at most {self.config.num_components - 1} input tokens, got {m}")
        prefix, key_mask = self._prefix(text_tokens, text_mask, text_emb, dot_token, drop)
        comps = self.tok_embed(comp_tokens.long()) + self.comp_pos[:m]  # (B, m, d)
        h = torch.cat([prefix, comps.to(prefix.dtype)], dim=1)  # (B, L + 2 + m, d)
        key_mask = torch.cat([key_mask, key_mask.new_ones(b, m)], dim=1)
        with cpu_attention(h.device):
            h = self.transformer(h, key_mask=key_mask, causal=True)
        return self.head(self.ln_out(h[:, prefix.shape[1] - 1 :]))  # from the dot token on

    def _prefix(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        dot_token: torch.Tensor,
        drop: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[caption tokens, text_emb, dot token] embedded: (B, L + 2, d) and its key mask."""
        txt, key_mask, emb = self.text(text_tokens, text_mask, text_emb, drop)
        special = torch.stack([emb, self.dot_embed(dot_token.long())], dim=1) + self.special_pos
        h = torch.cat([txt, special.to(txt.dtype)], dim=1)
        return h, torch.cat([key_mask, key_mask.new_ones(h.shape[0], 2)], dim=1)

    def _cached_logits_fn(self, precision: str, device: torch.device) -> Any:
        """``fn(comps (B, m), dot (B,), **text) -> (B, NB)`` next-token logits, with a KV cache.

        Called once per token with the tokens so far; the first call runs the prefix, every later
        call only the newest token. The batch (and its order) must stay the same between calls.
        """
        cache = PrefixCache(self.transformer)

        def fn(comps: torch.Tensor, dot_tok: torch.Tensor, **kw: Any) -> torch.Tensor:
            with autocast(device, precision):
                if comps.shape[1] == 0:
                    h, key_mask = self._prefix(dot_token=dot_tok, **kw)
                    out = cache.start(h, key_mask)[:, -1]
                else:
                    m = comps.shape[1] - 1
                    new = self.tok_embed(comps[:, -1:]) + self.comp_pos[m]  # (B, 1, d)
                    out = cache.extend(new, commit=True)[:, -1]
                return self.head(self.ln_out(out)).float()

        return fn

    # ------------------------------------------------------------------ training

    def training_loss(
        self,
        image_emb: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy of the component tokens of one batch (teacher forcing).

        Args:
            image_emb: (B, D) unit-norm image embeddings (targets).
            text_tokens, text_mask, text_emb: the caption's CLIP text encoding.
            generator: RNG for the condition-drop mask.

        Returns:
            dict with "loss" (scalar, nats per token), "token_acc" (scalar) and "drop" (B,).
        """
        target = self.pca.encode(image_emb)  # (B, K)
        dot = self.dot_tokens(image_emb, text_emb)  # trained on the TRUE dot product (§2.2)
        b = target.shape[0]
        drop = torch.rand(b, generator=generator, device=target.device) < self.config.cond_drop_prob
        logits = self(text_tokens, text_mask, text_emb, dot, target[:, :-1], drop).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "token_acc": acc, "drop": drop}

    # ------------------------------------------------------------------ sampling

    @torch.inference_mode()
    def sample(
        self,
        text: Any,
        num_samples_per_prompt: int = 1,
        guidance_scale: float = DEFAULT_AR_GUIDANCE,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        negative: Any | None = None,
        best_of: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        dot_percentile: float = 0.5,
        dot_token: int | None = None,
        precision: str = "bf16",
        **unused: Any,
    ) -> torch.Tensor:
        """Sample image embeddings for captions, token by token.

        Args:
            text: a :class:`unclip.clip.TextEncoding` (text_emb (B, D), text_tokens, text_mask).
            num_samples_per_prompt: n embeddings per caption.
            guidance_scale: classifier-free guidance on the logits (1: none). Not reported in the
                paper; the default is the best of 1/2/4/8 on the shapes evaluation.
            steps: ignored (accepted so both priors share one signature).
            generator: RNG for the dot-product token and the token draws.
            negative: TextEncoding of 1 or B negative captions, used in place of the null.
            best_of: candidates per sample kept by dot product with text_emb (the paper's AR
                prior uses the dot-product token instead, hence 1).
            temperature: softmax temperature of the token draws.
            top_k: sample among the k most likely tokens only (None: all).
            dot_percentile: the dot-product token is drawn uniformly from the quantile buckets
                above this percentile of the training distribution (paper: 0.5, the top half).
            dot_token: force this dot-product bucket instead (overrides ``dot_percentile``).
            precision: "bf16" autocast (default) or "fp32".
            unused: sampler arguments of the diffusion prior (sampler, eta, callback), ignored.

        Returns:
            (B * n, D) unit-norm image embeddings, prompt-major.
        """
        cfg = self.config
        tokens, mask, emb = check_text(text, cfg, "text")
        if num_samples_per_prompt < 1 or best_of < 1:
            raise ValueError("num_samples_per_prompt and best_of must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= dot_percentile < 1.0:
            raise ValueError(f"dot_percentile must be in [0, 1), got {dot_percentile}")
        device = next(self.parameters()).device
        b, reps = emb.shape[0], num_samples_per_prompt * best_of
        total = b * reps
        cond_t = repeat_text(tokens, mask, emb, reps, device)
        nb_dot = cfg.num_dot_buckets
        if dot_token is not None:
            if not 0 <= dot_token < nb_dot:
                raise ValueError(f"dot_token must be in [0, {nb_dot}), got {dot_token}")
            dot = torch.full((total,), dot_token, dtype=torch.long, device=device)
        else:
            # Quantile buckets hold equal mass, so "above the p-th percentile" is a bucket range.
            lo = min(int(dot_percentile * nb_dot), nb_dot - 1)
            dot = torch.randint(lo, nb_dot, (total,), generator=generator, device=device)

        no_drop = torch.zeros(total, dtype=torch.bool, device=device)
        cond = {"text_tokens": cond_t[0], "text_mask": cond_t[1], "text_emb": cond_t[2], "drop": no_drop}
        if negative is not None:
            ntok, nmask, nemb = repeat_text(*expand_negative(negative, cfg, b), reps, device)
            length = max(cond_t[0].shape[1], ntok.shape[1])
            cond.update(text_tokens=pad_len(cond_t[0], length), text_mask=pad_len(cond_t[1], length))
            uncond = {"text_tokens": pad_len(ntok, length), "text_mask": pad_len(nmask, length)}
            uncond |= {"text_emb": nemb, "drop": no_drop}
        else:
            uncond = dict(cond, drop=torch.ones_like(no_drop))

        # The package's one CFG implementation, reused for logits: it batches both branches in one
        # forward (the "x_t" and "t" slots carry the tokens so far and the dot-product token,
        # which both branches share) and returns uncond + s * (cond - uncond).
        next_logits = self._cached_logits_fn(precision, device)
        logits_fn = guided_model_fn(next_logits, cond=cond, uncond=uncond, guidance_scale=guidance_scale)
        out = torch.zeros(total, 0, dtype=torch.long, device=device)
        for _ in range(cfg.num_components):
            logits = logits_fn(out, dot)
            nxt = _draw(logits / temperature, top_k, generator)
            out = torch.cat([out, nxt[:, None]], dim=1)
        image_emb = F.normalize(self.pca.decode(out), dim=-1)  # (B*n*k, D)
        return best_of_n(image_emb, emb.to(device).float(), num_samples_per_prompt, best_of)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _draw(logits: torch.Tensor, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from (B, NB) logits, optionally restricted to the top k."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


add_kind("ar_prior", ARPriorConfig, ARPrior)
