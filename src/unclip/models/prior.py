"""The unCLIP diffusion prior: CLIP text conditioning -> CLIP image embedding (paper §2.2).

A decoder-only transformer with a causal mask reads, in order,

    [caption tokens (L), text_emb, timestep, noised image_emb x_t, learned query]

and its output at the query predicts the clean (scaled) image embedding: the x0 objective with a
plain MSE, a cosine schedule over 1000 steps, strided fast sampling (64 steps by default), and
best-of-2 by dot product with text_emb at sampling time instead of the AR prior's dot-product token.

Classifier-free guidance (paper §2.2): 10% of training samples have their *text* conditioning (the
caption tokens and text_emb together) replaced by a learned null. The noised x_t and the timestep
are never dropped: dropping x_t (a bug seen in a peer) would teach the "unconditional" branch to
ignore its own input. At sampling, guidance goes through :mod:`unclip.sampling.guidance`, the one
CFG implementation; a negative caption's conditioning takes the null's place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from unclip.checkpoint import add_kind
from unclip.diffusion.gaussian import GaussianDiffusion
from unclip.models.prior_config import DiffusionPriorConfig, EmbeddingScaling
from unclip.nn.embeddings import TimestepMLP, zero_module
from unclip.nn.norms import LayerNorm32
from unclip.nn.precision import autocast
from unclip.nn.transformer import Transformer, attention_mask

# Prior guidance: not reported in the paper (Karlo uses 4). Chosen on the shapes suite, where 2
# gave the highest cosine to the true embedding on training-distribution captions (docs/priors.md).
DEFAULT_GUIDANCE = 2.0

__all__ = [
    "DEFAULT_GUIDANCE",
    "DiffusionPrior",
    "DiffusionPriorConfig",
    "EmbeddingScaler",
    "PrefixCache",
    "TextConditioner",
    "best_of_n",
]


# ---------------------------------------------------------------------- pieces shared with the AR prior


def cpu_attention(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """SDPA backend for the priors' full (training) forward on short masked sequences.

    On CPU the fused flash kernel with a boolean (causal + padding) mask spends most of a
    training step in its backward pass for ~40-token sequences; the plain math kernel needed
    about 30% less CPU time per step (measured: width 256, 6 layers, batch 256, bf16). Sampling
    (:class:`PrefixCache`, no backward) keeps the default kernel, which was 1.5x faster there.
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


class EmbeddingScaler(nn.Module):
    """Maps unit-norm CLIP image embeddings to the diffusion's space and back (paper App. C).

    The paper multiplies unit-norm 1024-d embeddings by 17.2 so that their per-dimension spread
    (std ~0.54) matches the [-1, 1] pixels the cosine schedule was tuned on. Three schemes, each
    an affine map ``y = (x - shift) * mult`` with ``shift`` and ``mult`` stored as buffers (so the
    checkpoint carries them):

    - "center_scale" (default): subtract the data mean, divide by ONE global scale so the mean
      per-dimension variance is ``target_std**2``. CLIP embeddings of one domain sit in a narrow
      cone; without centring the shared mean direction dominates the signal and the schedule's
      SNR is wrong for the part that distinguishes captions. One global scale (rather than one
      per dimension) keeps the Euclidean geometry, so the x0-MSE in this space is proportional
      to the MSE between unit embeddings, i.e. to (1 - cosine), the quantity the prior is judged
      by.
    - "sqrt_dim": multiply by ``target_std * sqrt(D)`` (the paper's rule: 17.2 = 0.54 * 32).
    - "standardize": per-dimension mean and std (Karlo). Blows up near-constant dimensions to unit
      variance and weights them equally in the loss.

    Output: :meth:`unscale` inverts the map and renormalises to unit norm, because CLIP image
    embeddings are unit vectors and every consumer (decoder, retrieval, dot-product best-of-N)
    expects them; the norm of the raw prediction carries no information (it shrinks under
    averaging over the posterior).

    Args:
        dim: D.
        scheme: the scaling scheme.
        target_std: the per-dimension RMS of scaled embeddings.
    """

    def __init__(self, dim: int, scheme: EmbeddingScaling, target_std: float) -> None:
        super().__init__()
        self.scheme, self.target_std = scheme, target_std
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("mult", torch.full((dim,), target_std * math.sqrt(dim)))

    @torch.no_grad()
    def fit(self, image_emb: torch.Tensor) -> dict[str, float]:
        """Compute shift and mult from training embeddings (N, D); returns summary statistics."""
        x = image_emb.double()
        dim = x.shape[1]
        mean, var = x.mean(0), x.var(0)
        if self.scheme == "sqrt_dim":
            shift = torch.zeros_like(mean)
            mult = torch.full_like(mean, self.target_std * math.sqrt(dim))
        elif self.scheme == "center_scale":
            shift = mean
            mult = torch.full_like(mean, self.target_std / math.sqrt(max(float(var.mean()), 1e-12)))
        elif self.scheme == "standardize":
            shift, mult = mean, self.target_std / var.sqrt().clamp_min(1e-6)
        else:
            raise ValueError(f"unknown embedding scaling {self.scheme!r}")
        self.shift.copy_(shift.float())
        self.mult.copy_(mult.float())
        y = self.scale(image_emb)
        return {
            "mean_norm": float(mean.norm()),
            "mean_dim_std": float(var.mean().sqrt()),
            "scaled_rms": float(y.pow(2).mean().sqrt()),
            "scaled_mean_abs": float(y.mean(0).abs().mean()),
        }

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings -> (B, D) diffusion-space values."""
        return (x.float() - self.shift) * self.mult

    def unscale(self, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, D) diffusion-space values -> (B, D) embeddings, unit-norm when ``normalize``."""
        x = y.float() / self.mult + self.shift
        return F.normalize(x, dim=-1) if normalize else x


class TextConditioner(nn.Module):
    """Embeds the caption conditioning and swaps in the learned null for dropped samples.

    The caption tokens (the CLIP text encoder's token outputs) are normalised and projected to
    the prior's width with learned positions; text_emb gets its own projection. Dropping (paper
    §2.2, classifier-free guidance) replaces BOTH with learned nulls: the caption becomes a single
    learned null token (the rest masked out, so the length of the dropped caption does not leak)
    and text_emb becomes a learned null vector. Nothing else is touched.

    Args:
        embed_dim: D of text_emb.
        text_width: W of text_tokens.
        max_len: most caption tokens.
        width: the prior's width.
    """

    def __init__(self, embed_dim: int, text_width: int, max_len: int, width: int) -> None:
        super().__init__()
        self.embed_dim, self.text_width, self.max_len = embed_dim, text_width, max_len
        self.token_norm = LayerNorm32(text_width)
        self.token_proj = nn.Linear(text_width, width)
        self.token_pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.emb_proj = nn.Linear(embed_dim, width)
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        self.null_emb = nn.Parameter(torch.randn(width) * 0.02)

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed the conditioning.

        Args:
            text_tokens: (B, L, W); text_mask: (B, L) bool; text_emb: (B, D);
            drop: (B,) bool, True where the conditioning is replaced by the nulls.

        Returns:
            tokens (B, L, width), key mask (B, L) bool, text_emb token (B, width).
        """
        if text_tokens.shape[1] > self.max_len:
            raise ValueError(
                f"caption has {text_tokens.shape[1]} tokens, more than max_text_len={self.max_len}"
            )
        # Drop the padding columns no sample uses: exact (they are masked out, and positions
        # count from the first token) and it shortens the sequence a lot for short captions.
        used = text_mask.bool().any(0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        text_tokens, text_mask = text_tokens[:, :length], text_mask[:, :length]
        b = text_tokens.shape[0]
        txt = self.token_proj(self.token_norm(text_tokens.float())) + self.token_pos[:length]
        # Unit-norm text_emb has entries ~1/sqrt(D); scale to unit entries before the projection.
        emb = self.emb_proj(text_emb.float() * math.sqrt(self.embed_dim))
        mask = text_mask.bool().clone()
        # CLIP tokenisers put a start token first, so it is always real; forcing it also keeps a
        # causal attention row from being fully masked (which gives NaN in SDPA).
        mask[:, 0] = True
        if drop is not None:
            drop = drop.bool().to(txt.device)
            null_seq = torch.zeros_like(txt)
            null_seq[:, 0] = (self.null_token + self.token_pos[0]).to(txt.dtype)
            txt = torch.where(drop[:, None, None], null_seq, txt)
            only_first = torch.zeros_like(mask)
            only_first[:, 0] = True
            mask = torch.where(drop[:, None], only_first, mask)
            emb = torch.where(drop[:, None], self.null_emb.to(emb.dtype).expand(b, -1), emb)
        return txt, mask, emb


class PrefixCache:
    """Run a causal :class:`Transformer` over a fixed prefix once, then only over new tokens.

    In a causal transformer the outputs at the prefix positions never depend on later tokens,
    so their keys and values can be kept. Both priors have a long constant prefix (the caption
    tokens): the diffusion prior re-runs only [t, x_t, query] at each of its sampling steps
    (:meth:`extend` with ``commit=False``), and the AR prior appends one token per step
    (``commit=True``). The blocks' own weights and SDPA are used, so outputs equal a full
    forward up to float rounding (tested).

    Args:
        transformer: the shared :class:`unclip.nn.transformer.Transformer` (pre-norm blocks).
    """

    def __init__(self, transformer: Transformer) -> None:
        self.blocks = transformer.blocks
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.key_mask: torch.Tensor | None = None  # (B, T) over the cached positions
        self._scratch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, use_cache: bool, scratch: bool = False
    ) -> tuple[torch.Tensor, list]:
        new_cache = []
        for i, blk in enumerate(self.blocks):
            attn = blk.attn
            h = blk.ln_1(x)
            b, n, c = h.shape
            q = attn.to_q(h).view(b, n, attn.heads, c // attn.heads).transpose(1, 2)
            k, v = attn.to_kv(h).view(b, n, 2, attn.heads, c // attn.heads).permute(2, 0, 3, 1, 4)
            if use_cache and scratch:
                # Uncommitted tokens (the diffusion prior's steps): write them behind a copy of
                # the prefix made once, instead of concatenating the whole cache every step.
                if len(self._scratch) <= i:
                    ck, cv = self.cache[i]
                    shape = (*ck.shape[:2], ck.shape[2] + n, ck.shape[3])
                    self._scratch.append((ck.new_empty(shape), cv.new_empty(shape)))
                    self._scratch[i][0][:, :, : ck.shape[2]] = ck
                    self._scratch[i][1][:, :, : cv.shape[2]] = cv
                bk, bv = self._scratch[i]
                bk[:, :, -n:], bv[:, :, -n:] = k, v
                k, v = bk, bv
            elif use_cache:
                k = torch.cat([self.cache[i][0], k.to(self.cache[i][0].dtype)], 2)
                v = torch.cat([self.cache[i][1], v.to(self.cache[i][1].dtype)], 2)
            new_cache.append((k, v))
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
            x = x + attn.proj(out.transpose(1, 2).reshape(b, n, c))
            x = x + blk.mlp(blk.ln_2(x))
        return x, new_cache

    def start(self, h: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Run and cache the prefix (B, P, d) (causal + padding masks). Returns (B, P, d)."""
        self.key_mask = key_mask
        mask = attention_mask(key_mask, True, h.shape[1], h.shape[1], h.device)
        out, self.cache = self._run(h, mask, use_cache=False)
        self._scratch = []
        return out

    def extend(self, h: torch.Tensor, commit: bool) -> torch.Tensor:
        """Run n new tokens (B, n, d) after the cached ones: each sees every real cached position
        and the new tokens up to itself. With ``commit`` they join the cache. Returns (B, n, d)."""
        assert self.key_mask is not None, "call start() first"
        b, n = h.shape[:2]
        key_mask = torch.cat([self.key_mask, self.key_mask.new_ones(b, n)], dim=1)  # (B, T + n)
        t = self.key_mask.shape[1]
        causal = torch.ones(n, t + n, dtype=torch.bool, device=h.device).tril(t)  # (n, T + n)
        if self._scratch and self._scratch[0][0].shape[2] != t + n:
            self._scratch = []  # a different number of new tokens than last time
        out, cache = self._run(h, key_mask[:, None, None, :] & causal, use_cache=True, scratch=not commit)
        if commit:
            self.cache, self.key_mask, self._scratch = cache, key_mask, []
        return out


def check_text(text: Any, cfg: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a TextEncoding-like object against a prior config; returns its three tensors."""
    try:
        tokens, mask, emb = text.text_tokens, text.text_mask, text.text_emb
    except AttributeError:
        raise TypeError(
            f"{name} must be a TextEncoding (text_emb, text_tokens, text_mask), got {type(text).__name__}"
        ) from None
    if emb.ndim != 2 or emb.shape[1] != cfg.embed_dim:
        raise ValueError(f"{name}.text_emb must be (B, {cfg.embed_dim}), got {tuple(emb.shape)}")
    b = emb.shape[0]
    if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[2] != cfg.text_width:
        raise ValueError(f"{name}.text_tokens must be ({b}, L, {cfg.text_width}), got {tuple(tokens.shape)}")
    if tokens.shape[1] > cfg.max_text_len:
        raise ValueError(f"{name}.text_tokens has {tokens.shape[1]} tokens, more than {cfg.max_text_len}")
    if tuple(mask.shape) != tuple(tokens.shape[:2]):
        raise ValueError(f"{name}.text_mask must be {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
    return tokens, mask, emb


def expand_negative(negative: Any, cfg: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a negative TextEncoding of 1 (broadcast) or ``batch`` captions."""
    tok, mask, emb = check_text(negative, cfg, "negative")
    if emb.shape[0] == 1:
        return tok.expand(batch, -1, -1), mask.expand(batch, -1), emb.expand(batch, -1)
    if emb.shape[0] != batch:
        raise ValueError(f"negative must hold 1 or {batch} captions, got {emb.shape[0]}")
    return tok, mask, emb


def pad_len(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad dim 1 of (B, L, ...) with zeros / False to ``length``."""
    if x.shape[1] >= length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def repeat_text(
    tokens: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor, reps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repeat each caption ``reps`` times, prompt-major: (B, ...) -> (B * reps, ...)."""
    return (
        tokens.to(device).float().repeat_interleave(reps, 0),
        mask.to(device).bool().repeat_interleave(reps, 0),
        emb.to(device).float().repeat_interleave(reps, 0),
    )


def best_of_n(image_emb: torch.Tensor, text_emb: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Keep, of every k candidates, the one with the largest dot product with text_emb (§2.2).

    Args:
        image_emb: (B * n * k, D) candidates, prompt-major then sample then candidate.
        text_emb: (B, D) the captions' text embeddings.
        n: samples per prompt.
        k: candidates per sample.

    Returns:
        (B * n, D) the chosen candidates.
    """
    b, d = text_emb.shape
    cand = image_emb.reshape(b, n, k, d)
    score = torch.einsum("bnkd,bd->bnk", cand.float(), text_emb.float())
    idx = score.argmax(-1)  # (B, n)
    return cand.gather(2, idx[..., None, None].expand(b, n, 1, d)).reshape(b * n, d)


# ---------------------------------------------------------------------- the diffusion prior


class DiffusionPrior(nn.Module):
    """Diffusion prior p(image_emb | caption) (paper §2.2).

    Args:
        config: the architecture and training-time facts (see :class:`DiffusionPriorConfig`).
    """

    def __init__(self, config: DiffusionPriorConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.scaler = EmbeddingScaler(cfg.embed_dim, cfg.scaling, cfg.target_std)
        self.text = TextConditioner(cfg.embed_dim, cfg.text_width, cfg.max_text_len, d)
        self.time_embed = TimestepMLP(d, d)
        self.x_in = nn.Linear(cfg.embed_dim, d)
        self.query = nn.Parameter(torch.randn(d) * 0.02)
        # Positions of the four fixed tokens after the caption. They get their own table rather
        # than positions L..L+3 so that the outputs do not depend on how far the batch is padded.
        self.special_pos = nn.Parameter(torch.randn(4, d) * 0.02)
        self.transformer = Transformer(d, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_out = LayerNorm32(d)
        # Zero-initialised output: a fresh prior predicts x0 = 0, the data mean after centring.
        self.out = zero_module(nn.Linear(d, cfg.embed_dim))
        # Paper §2.2 / Tab. 3: cosine schedule, 1000 steps, x0 prediction.
        self.diffusion = GaussianDiffusion.from_schedule(cfg.schedule, cfg.num_timesteps, prediction="x0")

    # ------------------------------------------------------------------ network

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the clean scaled image embedding.

        Args:
            x_t: (B, D) noised image embedding in the scaled space.
            t: (B,) ORIGINAL timesteps (0 .. num_timesteps - 1).
            text_tokens: (B, L, W) CLIP text encoder token outputs.
            text_mask: (B, L) bool, True at real tokens.
            text_emb: (B, D) pooled CLIP text embedding.
            drop: (B,) bool, True where the text conditioning is replaced by the learned null
                (classifier-free guidance); x_t is used unchanged for every sample.

        Returns:
            (B, D) predicted x_start (scaled space).
        """
        prefix, key_mask = self._prefix(text_tokens, text_mask, text_emb, drop)  # (B, L + 1, d)
        suffix = self._suffix(x_t, t).to(prefix.dtype)  # (B, 3, d)
        h = torch.cat([prefix, suffix], dim=1)  # (B, L + 4, d)
        key_mask = torch.cat([key_mask, key_mask.new_ones(h.shape[0], 3)], dim=1)
        with cpu_attention(h.device):
            h = self.transformer(h, key_mask=key_mask, causal=True)
        return self.out(self.ln_out(h[:, -1]))  # the query's output (B, D)

    def _prefix(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        drop: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The part that does not change during sampling: [caption tokens, text_emb] (B, L + 1, d)."""
        txt, key_mask, emb = self.text(text_tokens, text_mask, text_emb, drop)  # (B,L,d), (B,L), (B,d)
        emb = emb + self.special_pos[0]
        h = torch.cat([txt, emb[:, None].to(txt.dtype)], dim=1)
        return h, torch.cat([key_mask, key_mask.new_ones(h.shape[0], 1)], dim=1)

    def _suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[timestep, noised image_emb, learned query] (B, 3, d)."""
        b = x_t.shape[0]
        special = torch.stack([self.time_embed(t), self.x_in(x_t), self.query.expand(b, -1)], dim=1)
        return special + self.special_pos[1:].to(special.dtype)

    # ------------------------------------------------------------------ training

    def training_loss(
        self,
        image_emb: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_emb: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """x0-MSE loss on one batch (paper §2.2: L = E ||f(z_i^(t), t, y) - z_i||^2).

        Args:
            image_emb: (B, D) unit-norm CLIP image embeddings (targets).
            text_tokens, text_mask, text_emb: the caption's CLIP text encoding.
            generator: RNG for t, noise and the condition-drop mask.

        Returns:
            dict with "loss" (scalar), "mse" (B,) per-sample MSE, "t" (B,) step indices and
            "drop" (B,) the condition-drop mask actually used.
        """
        x_start = self.scaler.scale(image_emb)
        b, device = x_start.shape[0], x_start.device
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=generator, device=device)
        noise = torch.randn(x_start.shape, generator=generator, device=device)
        drop = torch.rand(b, generator=generator, device=device) < self.config.cond_drop_prob
        kw = {"text_tokens": text_tokens, "text_mask": text_mask, "text_emb": text_emb, "drop": drop}
        terms = self.diffusion.training_losses(self, x_start, t, noise, model_kwargs=kw)
        return {"loss": terms["loss"].float().mean(), "mse": terms["mse"], "t": t, "drop": drop}

    # ------------------------------------------------------------------ sampling

    @torch.inference_mode()
    def sample(
        self,
        text: Any,
        num_samples_per_prompt: int = 1,
        guidance_scale: float = DEFAULT_GUIDANCE,
        steps: int = 64,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        negative: Any | None = None,
        best_of: int = 2,
        sampler: str = "ddim",
        eta: float = 0.0,
        precision: str = "bf16",
        callback: Any | None = None,
    ) -> torch.Tensor:
        """Sample image embeddings for captions.

        Args:
            text: a :class:`unclip.clip.TextEncoding` (or anything with ``text_emb`` (B, D),
                ``text_tokens`` (B, L, W) and ``text_mask`` (B, L)).
            num_samples_per_prompt: n embeddings per caption.
            guidance_scale: classifier-free guidance scale s (1: no guidance; the conditional
                branch alone, no extra forward). The paper does not report its prior's scale;
                the default is the best of 1/2/4/8 on the shapes evaluation (docs/priors.md).
            steps: strided sampling steps over the 1000-step chain (paper: 64).
            generator: RNG for the initial noise and stochastic samplers, or one generator per
                returned sample (B * n): sample j's candidates then draw all their noise from
                generator j alone, so a sample does not depend on the batch it runs in.
            negative: a TextEncoding of one negative caption (broadcast) or of B of them; its
                conditioning replaces the null in guidance (guides away from it).
            best_of: N candidates per sample; the one with the largest dot product with
                text_emb is kept (paper §2.2: N = 2).
            sampler: a sampler name of :mod:`unclip.sampling` ("ddim", "ddpm", "dpmpp_2m").
            eta: DDIM eta (0: deterministic).
            precision: "bf16" autocast (default) or "fp32".
            callback: called by the sampler after each step (see :mod:`unclip.sampling`).

        Returns:
            (B * n, D) unit-norm image embeddings, prompt-major (the n samples of caption 0 first).
        """
        from unclip.sampling import guided_model_fn
        from unclip.sampling import sample as run_sampler

        tokens, mask, emb = check_text(text, self.config, "text")
        if num_samples_per_prompt < 1 or best_of < 1:
            raise ValueError("num_samples_per_prompt and best_of must be at least 1")
        b, n, k = emb.shape[0], num_samples_per_prompt, best_of
        device = next(self.parameters()).device
        reps = n * k
        tok, msk, e = repeat_text(tokens, mask, emb, reps, device)
        no_drop = torch.zeros(b * reps, dtype=torch.bool, device=device)
        cond = {"text_tokens": tok, "text_mask": msk, "text_emb": e, "drop": no_drop}
        if negative is not None:
            ntok, nmask, nemb = expand_negative(negative, self.config, b)
            ntok, nmask, nemb = repeat_text(ntok, nmask, nemb, reps, device)
            length = max(tok.shape[1], ntok.shape[1])
            cond.update(text_tokens=pad_len(tok, length), text_mask=pad_len(msk, length))
            uncond = {"text_tokens": pad_len(ntok, length), "text_mask": pad_len(nmask, length)}
            uncond |= {"text_emb": nemb, "drop": no_drop}
        else:
            # The null branch: the same tensors with drop=True; forward swaps in the learned nulls.
            uncond = dict(cond, drop=torch.ones_like(no_drop))
        model_fn = guided_model_fn(
            self._cached_forward(precision, device), cond=cond, uncond=uncond, guidance_scale=guidance_scale
        )
        if isinstance(generator, (list, tuple)):
            if len(generator) != b * n:
                raise ValueError(f"{len(generator)} generators for {b * n} samples")
            # Sample j's k candidates: one (k, D) draw from generator j, as a lone call would make.
            x_T = torch.cat(
                [torch.randn((k, self.config.embed_dim), generator=g, device=g.device) for g in generator]
            ).to(device)
            generator = [g for g in generator for _ in range(k)]  # per-row step noise
        else:
            x_T = torch.randn((b * reps, self.config.embed_dim), generator=generator, device=device)
        # Strided sampling over the 1000-step chain (paper Tab. 3: 64 steps); no x0 clipping for
        # embeddings. One autocast region around the whole loop keeps autocast's cache of bf16
        # weight copies alive across steps (the sampler's own arithmetic stays in float32: x is
        # float32 and autocast leaves elementwise ops alone).
        with autocast(device, precision):
            x0 = run_sampler(
                model_fn,
                x_T,
                diffusion=self.diffusion,
                sampler=sampler,
                steps=steps,
                generator=generator,
                eta=eta,
                clip=None,
                callback=callback,
            )
        out = self.scaler.unscale(x0.float())  # (B*n*k, D), unit norm
        return best_of_n(out, emb.to(device).float(), n, k)

    def _cached_forward(self, precision: str, device: torch.device) -> Any:
        """``fn(x_t, t, **text) -> x0`` for the sampler: the caption prefix runs once per sample
        call (its keys and values are cached), every step runs only [t, x_t, query].

        The text keywords must be the same at every call (they are within one sampler run).
        """
        cache = PrefixCache(self.transformer)

        def fn(x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
            with autocast(device, precision):
                if cache.key_mask is None:
                    cache.start(*self._prefix(**kw))
                assert cache.key_mask.shape[0] == x.shape[0], "batch changed between sampler steps"
                h = cache.extend(self._suffix(x, t), commit=False)
                return self.out(self.ln_out(h[:, -1])).float()

        return fn

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


add_kind("diffusion_prior", DiffusionPriorConfig, DiffusionPrior)
