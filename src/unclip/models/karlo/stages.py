"""Karlo (diffusers ``UnCLIPPipeline``) stages as unclip components.

Kakao Brain's Karlo is the public unCLIP checkpoint; diffusers ships it as an ``UnCLIPPipeline``
(prior, text projection + decoder, two super-resolution UNets, a CLIP ViT-L/14). ``unclip
convert diffusers-unclip`` turns such a directory into one of our model directories holding the
three component kinds defined here, so that the pipeline, the samplers, the manipulations and
the server run on those weights without diffusers installed (docs/karlo.md).

Conventions of the reference, kept exactly:

* **Schedules** (:class:`KarloSchedule`): diffusers' ``UnCLIPScheduler`` is ancestral sampling on
  a respaced squared-cosine chain: the respaced betas come from the kept steps' alpha-bar ratios,
  steps are ``round(i * (T - 1) / (N - 1))``, the model sees the original timestep, and noise is
  added at every step but the last. That is our ``ddpm`` sampler with an integer step count on
  the same chain, so a converted model runs through :func:`unclip.sampling.sample` unchanged;
  every other sampler of the package (DDIM, DPM-Solver++) also runs on it.
* **Unnormalised embeddings**: Karlo's prior outputs, and its decoder consumes, the raw projected
  CLIP embeddings (not unit vectors), so a converted model's CLIP returns raw projections too.
* **The null condition** of classifier-free guidance is the CLIP encoding of the empty caption
  (diffusers encodes ``""`` on every call). It is computed once at conversion and stored as the
  ``null_text_*`` buffers, so sampling needs no tokenizer call for it. The decoder's null image
  embedding is the learned one.
* The super-resolution stage has two networks: ``super_res_first`` for every step but the last,
  ``super_res_last`` for the last (t = 0) step; the low-resolution image is upsampled bicubically
  with antialiasing and concatenated to the input; there is no guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unclip.checkpoint import add_kind
from unclip.config import Config
from unclip.diffusion import GaussianDiffusion
from unclip.diffusion.gaussian import Clip
from unclip.diffusion.schedules import get_betas
from unclip.errors import UserError
from unclip.models.karlo.prior import KarloPriorConfig, KarloPriorNet
from unclip.models.karlo.text_proj import KarloTextProj, KarloTextProjConfig
from unclip.models.karlo.unet import KarloUNet, KarloUNetConfig
from unclip.models.prior import best_of_n
from unclip.nn.precision import Precision, autocast, default_precision
from unclip.sampling.samplers import Generators

StepCallback = Callable[[int, int, Tensor, Tensor], None]
_SCHEDULER_BOOKKEEPING = {"_class_name", "_diffusers_version"}


@dataclasses.dataclass(frozen=True)
class KarloSchedule(Config):
    """The parts of a diffusers ``UnCLIPScheduler`` config that fix the chain and its outputs.

    Attributes:
        num_train_timesteps: T of the squared-cosine chain.
        variance_type: "fixed_small_log" (posterior variance) or "learned_range" (the model's
            extra channels interpolate log variance, iDDPM).
        prediction_type: "epsilon" or "sample" (x_0, the Karlo prior).
        clip_sample: clamp predicted x_0 to +-clip_sample_range.
        clip_sample_range: the clamp range.
    """

    num_train_timesteps: int = 1000
    variance_type: Literal["fixed_small_log", "learned_range"] = "fixed_small_log"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        if self.clip_sample and not self.clip_sample_range > 0:
            raise ValueError("clip_sample_range must be > 0")

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], where: str = "scheduler") -> KarloSchedule:
        """Read a diffusers ``scheduler_config.json`` dict (UnCLIPScheduler).

        Raises:
            UserError: another scheduler class or a setting with no equivalent here.
        """
        name = config.get("_class_name", "UnCLIPScheduler")
        if name != "UnCLIPScheduler":
            raise UserError(f"{where}: expected an UnCLIPScheduler config, got {name}")
        if config.get("beta_schedule", "squaredcos_cap_v2") != "squaredcos_cap_v2":
            raise UserError(f"{where}: beta_schedule {config['beta_schedule']!r} is not supported")
        known = {f.name for f in dataclasses.fields(cls)} | {"beta_schedule"}
        unknown = sorted(set(config) - known - _SCHEDULER_BOOKKEEPING)
        if unknown:
            raise UserError(f"{where}: unsupported scheduler setting(s) {', '.join(unknown)}")
        kept = {k: v for k, v in config.items() if k in known and k != "beta_schedule"}
        return cls.from_dict(kept, _where=where)

    def diffusion(self) -> GaussianDiffusion:
        """The full chain as our :class:`GaussianDiffusion`: diffusers' squaredcos_cap_v2 is
        iDDPM's cosine schedule with betas capped at 0.999, our "cosine".

        Computed in float64, as Karlo's original sampler does. diffusers keeps the tables in
        float32, where the first step of every spacing (t = 999, alpha-bar 2.4e-9) rounds the
        respaced beta to exactly 1 and the x_t coefficient of the posterior mean (1.1e-4) to 0;
        docs/karlo.md measures what that changes.
        """
        return GaussianDiffusion(
            get_betas("cosine", self.num_train_timesteps),
            prediction="eps" if self.prediction_type == "epsilon" else "x0",
            variance="learned_range" if self.variance_type == "learned_range" else "fixed_small",
            clamp_variance=False,  # the reference interpolates with the raw values
        )

    @property
    def clip(self) -> Clip:
        """x_0 clipping for :func:`unclip.sampling.sample`."""
        if not self.clip_sample:
            return None
        return "static" if self.clip_sample_range == 1.0 else float(self.clip_sample_range)


def _null_buffers(module: nn.Module, text_len: int, text_width: int, clip_dim: int) -> None:
    """Register the empty caption's CLIP encoding (filled by the converter)."""
    module.register_buffer("null_text_emb", torch.zeros(1, clip_dim))
    module.register_buffer("null_text_tokens", torch.zeros(1, text_len, text_width))
    module.register_buffer("null_text_mask", torch.zeros(1, text_len, dtype=torch.bool))


def set_null_text(module: nn.Module, text_emb: Tensor, text_tokens: Tensor, text_mask: Tensor) -> None:
    """Store the CLIP encoding of "" ((1, D), (1, L, W), (1, L)) as the null condition."""
    for name, value in (
        ("null_text_emb", text_emb),
        ("null_text_tokens", text_tokens),
        ("null_text_mask", text_mask),
    ):
        buf = getattr(module, name)
        if tuple(value.shape) != tuple(buf.shape):
            raise UserError(
                f"the empty caption's {name[5:]} has shape {tuple(value.shape)}, expected {tuple(buf.shape)}"
            )
        buf.copy_(value.to(buf.dtype))


def _null_text(module: nn.Module, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(text_emb (B, D), text_tokens (B, L, W), text_mask (B, L)) of the empty caption."""
    return (
        module.null_text_emb.to(device).expand(batch, -1).float(),
        module.null_text_tokens.to(device).expand(batch, -1, -1).float(),
        module.null_text_mask.to(device).expand(batch, -1),
    )


def _text_inputs(text: Any, width: int, where: str) -> tuple[Tensor, Tensor, Tensor]:
    emb, tokens, mask = text.text_emb, text.text_tokens, text.text_mask
    if tokens is None or tokens.shape[-1] != width:
        got = None if tokens is None else tokens.shape[-1]
        raise UserError(f"{where} needs caption tokens of width {width} (this CLIP's), got {got}")
    return emb.float(), tokens.float(), mask.bool()


def _fit_length(tokens: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Pad or cut (B, L, W) tokens and their (B, L) mask to ``length`` (cut positions must be masked)."""
    n = tokens.shape[1]
    if n == length:
        return tokens, mask
    if n > length:
        if bool(mask[:, length:].any()):
            raise UserError(f"captions longer than {length} tokens")
        return tokens[:, :length], mask[:, :length]
    return F.pad(tokens, (0, 0, 0, length - n)), F.pad(mask, (0, length - n), value=False)


# ---------------------------------------------------------------------------- prior


@dataclasses.dataclass(frozen=True)
class KarloPriorStageConfig(Config):
    """A converted Karlo prior: the network, its scheduler and its text input shape.

    Attributes:
        net: the PriorTransformer architecture.
        schedule: the prior scheduler (Karlo: x_0 prediction, fixed-small-log variance, clip).
        text_len: L of the caption tokens (CLIP's 77).
        text_width: W of the caption tokens.
    """

    net: KarloPriorConfig
    schedule: KarloSchedule = KarloSchedule(prediction_type="sample", clip_sample_range=5.0)
    text_len: int = 77
    text_width: int = 768

    @property
    def clip_dim(self) -> int:
        return self.net.embedding_dim


class KarloPrior(nn.Module):
    """Caption -> raw CLIP image embedding, as Karlo's prior [paper §2.2]."""

    def __init__(self, config: KarloPriorStageConfig) -> None:
        super().__init__()
        self.config = config
        self.net = KarloPriorNet(config.net)
        self.diffusion = config.schedule.diffusion()
        _null_buffers(self, config.text_len, config.text_width, config.clip_dim)

    def forward(
        self, x: Tensor, t: Tensor, text_emb: Tensor, text_tokens: Tensor, text_mask: Tensor
    ) -> Tensor:
        """(B, D) normalised noisy embedding -> (B, D) prediction (x_0 for Karlo)."""
        return self.net(x, t, text_emb, text_tokens, text_mask)

    @torch.no_grad()
    def sample(
        self,
        text: Any,
        num_samples_per_prompt: int = 1,
        guidance_scale: float = 4.0,
        steps: int | str = 25,
        generator: Generators = None,
        negative: Any | None = None,
        best_of: int = 1,
        sampler: str = "ddpm",
        eta: float = 0.0,
        precision: Precision | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Sample raw image embeddings for captions (diffusers' prior loop, then post-processing).

        Args:
            text: a TextEncoding from this model's CLIP (raw text_emb, tokens, mask), B captions.
            num_samples_per_prompt: n per caption.
            guidance_scale: s; the null branch is the empty caption (or ``negative``).
            steps: timestep spec; an int N gives the reference's N steps.
            generator: noise source (one generator, or one per sample).
            negative: a TextEncoding of 1 or B captions replacing the empty caption.
            best_of: candidates per sample, the one with the largest dot product with text_emb
                kept (paper §2.2; Karlo's pipeline uses 1).
            sampler: "ddpm" reproduces diffusers; any sampler of :mod:`unclip.sampling` runs.
            eta: for "ddim".
            precision: None -> bf16 where supported; "fp32" for the exact reference.
            callback: per-step callback.

        Returns:
            (B * n, D) raw embeddings, prompt-major.
        """
        from unclip.sampling import guided_model_fn
        from unclip.sampling import sample as run_sampler

        device = next(self.parameters()).device
        precision = precision or default_precision(device)
        cfg = self.config
        emb, tokens, mask = _text_inputs(text, cfg.text_width, "the Karlo prior")
        tokens, mask = _fit_length(tokens, mask, cfg.text_len)
        b, reps = emb.shape[0], num_samples_per_prompt * best_of
        if num_samples_per_prompt < 1 or best_of < 1:
            raise ValueError("num_samples_per_prompt and best_of must be at least 1")

        def rep(x: Tensor) -> Tensor:
            return x.to(device).repeat_interleave(reps, dim=0)

        cond = {"text_emb": rep(emb), "text_tokens": rep(tokens), "text_mask": rep(mask)}
        if negative is not None:
            n_emb, n_tok, n_mask = _text_inputs(negative, cfg.text_width, "the negative caption")
            n_tok, n_mask = _fit_length(n_tok, n_mask, cfg.text_len)
            if n_emb.shape[0] == 1:
                n_emb, n_tok, n_mask = (v.expand(b, *v.shape[1:]) for v in (n_emb, n_tok, n_mask))
            uncond = {"text_emb": rep(n_emb), "text_tokens": rep(n_tok), "text_mask": rep(n_mask)}
        else:
            n_emb, n_tok, n_mask = _null_text(self, b * reps, device)
            uncond = {"text_emb": n_emb, "text_tokens": n_tok, "text_mask": n_mask}

        def net(x: Tensor, t: Tensor, **kw: Tensor) -> Tensor:
            with autocast(device, precision):
                return self(x, t, **kw)

        fn = guided_model_fn(net, cond=cond, uncond=uncond, guidance_scale=guidance_scale)
        x = run_sampler(
            fn,
            (b * reps, cfg.clip_dim),
            diffusion=self.diffusion,
            sampler=sampler,
            steps=steps,
            generator=generator,
            eta=eta,
            clip=cfg.schedule.clip,
            callback=callback,
            device=device,
        )
        out = self.net.unnormalise(x.float())
        return best_of_n(out, emb.to(device), num_samples_per_prompt, best_of) if best_of > 1 else out


# ---------------------------------------------------------------------------- decoder


@dataclasses.dataclass(frozen=True)
class KarloDecoderConfig(Config):
    """A converted Karlo decoder: text projection + UNet + scheduler.

    Attributes:
        unet: the decoder UNet (learned-range variance, so 6 output channels).
        text_proj: the UnCLIPTextProjModel that turns (image_emb, text_emb, caption tokens)
            into the additive time embedding and the context tokens.
        schedule: the decoder scheduler (epsilon, learned range, clip to [-1, 1]).
        text_len: L of the caption tokens (CLIP's 77).
        text_dim: W of the caption tokens (the pipeline reads it).
    """

    unet: KarloUNetConfig
    text_proj: KarloTextProjConfig
    schedule: KarloSchedule = KarloSchedule(variance_type="learned_range")
    text_len: int = 77
    text_dim: int = 768

    @property
    def image_size(self) -> int:
        return self.unet.sample_size

    @property
    def clip_dim(self) -> int:
        return self.text_proj.clip_embeddings_dim


class KarloDecoder(nn.Module):
    """Raw CLIP image embedding (+ caption) -> 64 px image, as Karlo's decoder [paper §2.1]."""

    def __init__(self, config: KarloDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.text_proj = KarloTextProj(config.text_proj)
        self.unet = KarloUNet(config.unet)
        self.diffusion = config.schedule.diffusion()
        _null_buffers(self, config.text_len, config.text_dim, config.clip_dim)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        image_emb: Tensor,
        text_emb: Tensor,
        text_tokens: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        """x (B, 3, S, S), image_emb/text_emb (B, D), tokens (B, L, W), mask (B, L) -> (B, 6, S, S)."""
        context, added = self.text_proj(image_emb, text_emb, text_tokens)
        extra = context.shape[1] - text_tokens.shape[1]
        ones = torch.ones(text_mask.shape[0], extra, dtype=torch.bool, device=text_mask.device)
        return self.unet(x, t, emb=added, context=context, context_mask=torch.cat([ones, text_mask], 1))

    def guided_fn(
        self,
        image_emb: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        batch: int,
        guidance_scale: float = 8.0,
        precision: Precision | None = None,
        text_emb: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """The guided ``model_fn(x_t, t)`` (shared by sampling and DDIM inversion).

        A missing image embedding is the learned null; a missing caption is the empty caption
        (as in diffusers' image-variation pipeline). The unconditional branch uses both nulls.
        """
        from unclip.sampling import guided_model_fn

        device = next(self.parameters()).device
        precision = precision or default_precision(device)
        cfg = self.config
        n_emb, n_tok, n_mask = _null_text(self, batch, device)
        null_image = self.text_proj.null_image_emb.float().to(device)[None].expand(batch, -1)
        if text_tokens is None:
            t_emb, t_tok, t_mask = n_emb, n_tok, n_mask
        else:
            if text_emb is None:
                raise UserError("the Karlo decoder needs the caption's pooled CLIP embedding (text_emb)")
            mask = text_mask if text_mask is not None else torch.ones(text_tokens.shape[:2], dtype=torch.bool)
            t_tok, t_mask = _fit_length(text_tokens.float().to(device), mask.bool().to(device), cfg.text_len)
            t_emb = text_emb.float().to(device)
        cond = {
            "image_emb": null_image if image_emb is None else image_emb.float().to(device),
            "text_emb": t_emb,
            "text_tokens": t_tok,
            "text_mask": t_mask,
        }
        uncond = {"image_emb": null_image, "text_emb": n_emb, "text_tokens": n_tok, "text_mask": n_mask}

        def net(x: Tensor, t: Tensor, **kw: Tensor) -> Tensor:
            with autocast(device, precision):
                return self(x, t, **kw)

        channels = 3 if self.diffusion.learned_variance else None
        return guided_model_fn(
            net, cond=cond, uncond=uncond, guidance_scale=guidance_scale, prediction_channels=channels
        )

    @torch.no_grad()
    def sample(
        self,
        image_emb: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        text_emb: Tensor | None = None,
        num_images: int | None = None,
        guidance_scale: float = 8.0,
        steps: int | str = 25,
        sampler: str = "ddpm",
        eta: float = 0.0,
        generator: Generators = None,
        x_T: Tensor | None = None,
        clip: Clip | None = None,
        precision: Precision | None = None,
        callback: StepCallback | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Decode images with classifier-free guidance; see :meth:`unclip.models.decoder.Decoder.sample`.

        ``sampler="ddpm"`` with an integer ``steps`` reproduces diffusers' decoder loop;
        ``clip`` defaults to the scheduler's. Returns (B, 3, S, S) float32 in [-1, 1].
        """
        from unclip.sampling import sample as run_sampler

        device = next(self.parameters()).device
        batch = next((v.shape[0] for v in (image_emb, text_tokens, x_T) if v is not None), num_images)
        if batch is None:
            raise ValueError("give image_emb, text_tokens, x_T or num_images")
        fn = self.guided_fn(
            image_emb,
            text_tokens,
            text_mask,
            batch=batch,
            guidance_scale=guidance_scale,
            precision=precision,
            text_emb=text_emb,
        )
        s = self.config.image_size
        out = run_sampler(
            fn,
            x_T if x_T is not None else (batch, 3, s, s),
            diffusion=self.diffusion,
            sampler=sampler,
            steps=steps,
            generator=generator,
            eta=eta,
            clip=self.config.schedule.clip if clip is None else clip,
            callback=callback,
            device=device,
            show_progress=show_progress,
        )
        return out.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------- super-resolution


@dataclasses.dataclass(frozen=True)
class KarloUpsamplerConfig(Config):
    """A converted Karlo super-resolution stage (two UNets of one architecture).

    Attributes:
        unet: the architecture of super_res_first and super_res_last (in = 6: noisy image and
            upsampled low-res image).
        schedule: the super-res scheduler (epsilon, fixed-small-log, clip to [-1, 1]).
        scale: output side / input side (Karlo: 256 / 64 = 4).
    """

    unet: KarloUNetConfig
    schedule: KarloSchedule = KarloSchedule()
    scale: int = 4

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError("scale must be >= 1")

    @property
    def image_size(self) -> int:
        return self.unet.sample_size


class KarloUpsampler(nn.Module):
    """Low-res image -> ``scale`` x larger image, as Karlo's super-resolution stage."""

    def __init__(self, config: KarloUpsamplerConfig) -> None:
        super().__init__()
        self.config = config
        self.first = KarloUNet(config.unet)
        self.last = KarloUNet(config.unet)
        self.diffusion = config.schedule.diffusion()

    @staticmethod
    def resize(low_res: Tensor, size: Sequence[int]) -> Tensor:
        """Bicubic upsampling with antialiasing, as the reference pipeline."""
        return F.interpolate(
            low_res.float(), size=tuple(size), mode="bicubic", align_corners=False, antialias=True
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, last: bool = False) -> Tensor:
        """x, cond (B, 3, H, W) -> (B, C_out, H, W); ``last`` selects super_res_last."""
        net = self.last if last else self.first
        return net(torch.cat([x, cond.to(x.dtype)], dim=1), t)

    @torch.no_grad()
    def sample(
        self,
        low_res: Tensor,
        *,
        noise_level: int = 0,
        steps: int | str = 7,
        sampler: str = "ddpm",
        eta: float = 0.0,
        generator: Generators = None,
        x_T: Tensor | None = None,
        clip: Clip | None = None,
        precision: Precision | None = None,
        callback: StepCallback | None = None,
        show_progress: bool = False,
    ) -> Tensor:
        """Upsample (B, 3, h, w) images in [-1, 1] to (B, 3, h*scale, w*scale) in [-1, 1].

        super_res_last runs at t = 0 (the last step of every spacing), super_res_first before.
        ``noise_level`` must be 0 (Karlo has no noise conditioning).
        """
        from unclip.sampling import sample as run_sampler

        if noise_level:
            raise UserError("Karlo's super-resolution stage has no noise-level conditioning")
        if low_res.ndim != 4 or low_res.shape[1] != 3:
            raise ValueError(f"low_res must have shape (B, 3, h, w), got {tuple(low_res.shape)}")
        device = next(self.parameters()).device
        precision = precision or default_precision(device)
        b, _, h, w = low_res.shape
        size = (h * self.config.scale, w * self.config.scale)
        cond = self.resize(low_res.to(device), size)

        def fn(x: Tensor, t: Tensor) -> Tensor:
            with autocast(device, precision):
                return self(x, t, cond, last=bool((t == 0).all()))

        out = run_sampler(
            fn,
            x_T if x_T is not None else (b, 3, *size),
            diffusion=self.diffusion,
            sampler=sampler,
            steps=steps,
            generator=generator,
            eta=eta,
            clip=self.config.schedule.clip if clip is None else clip,
            callback=callback,
            device=device,
            show_progress=show_progress,
        )
        return out.clamp(-1.0, 1.0)


add_kind("karlo_prior", KarloPriorStageConfig, KarloPrior)
add_kind("karlo_decoder", KarloDecoderConfig, KarloDecoder)
add_kind("karlo_upsampler", KarloUpsamplerConfig, KarloUpsampler)
