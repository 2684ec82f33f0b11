"""Text -> CLIP -> prior -> decoder -> upsamplers, for inference only [paper §2, Fig. 2].

>>> pipe = UnCLIPPipeline.from_pretrained("shapes")          # a bundle name or a model directory
>>> out = pipe("a red circle", num_images_per_prompt=4, seed=0)
>>> out.images[0].save("0.png"); out.image_embeds.shape   # (4, D)

Every stage runs through its own ``sample`` method, and with it through the package's samplers
and its one classifier-free guidance wrapper (:func:`unclip.sampling.guided_model_fn`); the
pipeline only composes them, draws the noise and converts the output.

Randomness: image i of a call (prompt-major order) draws all of its noise (prior x_T, decoder
x_T, upsampler x_T) from its own generator seeded with ``seeds[i] = base + i``, where ``base`` is
``seed``, or one number drawn from ``generator``. Prompts are encoded one at a time; the
diffusion prior, decoder and upsamplers run batched, so a batch changes only float rounding
(measured in docs/pipeline.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from unclip.errors import UserError
from unclip.nn.precision import PRECISIONS, default_precision
from unclip.pipeline.model_dir import PipelineDefaults, load_model, save_model

if TYPE_CHECKING:
    from PIL import Image

    from unclip.clip import ClipModel, TextEncoding
    from unclip.manipulate import ImageLike, Inversion
    from unclip.models.ar_prior import ARPrior
    from unclip.models.decoder import Decoder
    from unclip.models.prior import DiffusionPrior
    from unclip.models.upsampler import Upsampler

OutputType = Literal["pil", "pt", "np"]
PriorChoice = Literal["diffusion", "ar"]
StepCallback = Callable[[str, int, int], None]
MAX_STEPS = 1000
_MAX_SEED = 2**62


@dataclasses.dataclass(frozen=True)
class UnCLIPOutput:
    """What the pipeline and the manipulations return.

    Attributes:
        images: N PIL images, or an (N, 3, H, W) float tensor in [0, 1] ("pt"), or an
            (N, H, W, 3) float32 array in [0, 1] ("np").
        image_embeds: (N, D) unit-norm CLIP image embeddings the decoder was conditioned on.
        text_embeds: (N, D) unit-norm CLIP text embeddings of each image's prompt (text diffs:
            the direction z_d); None where no text was involved.
        seeds: text to image: one seed per image (see the module docstring); manipulations:
            the call's one base seed.
    """

    images: list[Image.Image] | Tensor | np.ndarray
    image_embeds: Tensor
    text_embeds: Tensor | None = None
    seeds: tuple[int, ...] = ()


# ---------------------------------------------------------------------------- argument checks


def check_steps(name: str, value: Any) -> int:
    """A step count in [1, MAX_STEPS] or a UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be a whole number of steps, got {value!r}")
    if not 1 <= int(value) <= MAX_STEPS:
        raise UserError(f"{name} must be between 1 and {MAX_STEPS}, got {value}")
    return int(value)


def check_scale(name: str, value: Any) -> float:
    """A finite guidance scale >= 0 or a UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise UserError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_precision(precision: str | None) -> str | None:
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def base_seed(seed: int | None, generator: torch.Generator | None) -> int:
    """The call's base seed: ``seed``, else one draw from ``generator`` (or torch's global RNG)."""
    if seed is not None and generator is not None:
        raise UserError("give seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _MAX_SEED:
            raise UserError(f"seed must be a whole number in [0, 2**62), got {seed!r}")
        return int(seed)
    kw = {"generator": generator, "device": generator.device} if generator is not None else {}
    return int(torch.randint(0, 2**31, (1,), **kw))


def stage_callback(
    callback: StepCallback | None, stage: str, total: int
) -> Callable[[int, int, Tensor, Tensor], None] | None:
    """Adapt ``callback(stage, step, total)`` to the samplers' ``(step_index, t, x_t, pred_xstart)``.

    Steps count from 1.
    """
    if callback is None:
        return None

    def report(step: int, _t: int, _x: Tensor, _px: Tensor) -> None:
        callback(stage, step + 1, total)

    return report


def to_output(images: Tensor, output_type: OutputType) -> list[Image.Image] | Tensor | np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> PIL list, [0, 1] tensor or (N, H, W, 3) [0, 1] array."""
    x = ((images.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    if output_type == "pt":
        return x
    if output_type == "np":
        return x.permute(0, 2, 3, 1).numpy().astype(np.float32)
    from PIL import Image

    arr = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


# ---------------------------------------------------------------------------- the pipeline


class UnCLIPPipeline:
    """The unCLIP stack for inference [paper §2].

    Args:
        clip: the frozen CLIP (our :class:`unclip.clip.ClipModel`).
        decoder: CLIP image embedding (+ caption) -> image.
        prior: diffusion prior (caption -> image embedding); needed for prompts unless
            ``prior_ar`` is given.
        prior_ar: autoregressive prior, used with ``prior="ar"``.
        upsamplers: super-resolution stages, applied in order.
        defaults: sampling settings used where a call passes None.

    The modules are put in eval mode with gradients off.
    """

    def __init__(
        self,
        clip: ClipModel,
        decoder: Decoder,
        prior: DiffusionPrior | None = None,
        prior_ar: ARPrior | None = None,
        upsamplers: Sequence[Upsampler] = (),
        defaults: PipelineDefaults | None = None,
    ) -> None:
        if len(upsamplers) > 2:
            raise UserError(f"at most two upsamplers, got {len(upsamplers)}")
        self.clip, self.decoder, self.prior, self.prior_ar = clip, decoder, prior, prior_ar
        self.upsamplers = tuple(upsamplers)
        self.defaults = defaults or PipelineDefaults()
        for m in self.components().values():
            m.eval().requires_grad_(False)
        if clip.embed_dim != decoder.config.clip_dim:
            raise UserError(
                f"CLIP width {clip.embed_dim} does not match the decoder's {decoder.config.clip_dim}"
            )

    # --- loading and saving ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu") -> UnCLIPPipeline:
        """Load a bundle by name or a model directory (see :mod:`unclip.pipeline.model_dir`)."""
        modules, index = load_model(name_or_dir, device=device)
        ups = [modules[n] for n in ("upsampler1", "upsampler2") if n in modules]
        return cls(
            modules["clip"],
            modules["decoder"],
            prior=modules.get("prior"),
            prior_ar=modules.get("prior_ar"),
            upsamplers=ups,
            defaults=index["defaults"],
        )

    def save_pretrained(
        self, directory: str | Path, info: dict[str, Any] | None = None, dtype: torch.dtype | None = None
    ) -> Path:
        """Write a model directory that :meth:`from_pretrained` loads."""
        return save_model(directory, self.components(), defaults=self.defaults, info=info, dtype=dtype)

    def components(self) -> dict[str, nn.Module]:
        """Component name -> module (only those present)."""
        named: dict[str, nn.Module | None] = {
            "clip": self.clip,
            "prior": self.prior,
            "prior_ar": self.prior_ar,
            "decoder": self.decoder,
        }
        named |= {f"upsampler{i + 1}": u for i, u in enumerate(self.upsamplers)}
        return {k: v for k, v in named.items() if v is not None}

    def to(self, device: str | torch.device) -> UnCLIPPipeline:
        for m in self.components().values():
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the final images (decoder size times every upsampler's scale)."""
        return self.decoder.config.image_size * math.prod(u.config.scale for u in self.upsamplers)

    # --- stages ------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode prompts one at a time (results independent of the batch), (B, ...)."""
        from unclip.clip import TextEncoding

        return TextEncoding.cat([self.clip.encode_text([p]) for p in prompts])

    def generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One generator per image, on the pipeline's device."""
        return [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def prior_embeds(
        self,
        text: TextEncoding,
        generators: Sequence[torch.Generator],
        *,
        prior: PriorChoice = "diffusion",
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative: TextEncoding | None = None,
        precision: str | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Image embeddings for captions [paper §2.2]: the diffusion prior runs once for the batch
        (per-image generators), the AR prior once per image.

        Args:
            text: B captions; ``len(generators)`` must be a multiple n of B (prompt-major).
            generators: one per image.
            prior: "diffusion" or "ar".
            steps, guidance_scale: None -> the model's defaults.
            negative: 1 or B negative captions.
            precision: None -> bf16 where supported.
            callback: ``callback("prior", step, total)``.

        Returns:
            (B * n, D) unit-norm image embeddings.
        """
        d = self.defaults
        b, total_images = len(text), len(generators)
        n = total_images // b
        if n < 1 or n * b != total_images:
            raise ValueError(f"{total_images} generators for {b} captions: need a multiple")
        precision = precision or default_precision(self.device)
        if prior == "ar":
            if self.prior_ar is None:
                raise UserError("this model has no autoregressive prior (prior_ar); use prior='diffusion'")
            scale = check_scale(
                "prior_guidance_scale", d.ar_guidance_scale if guidance_scale is None else guidance_scale
            )
        elif prior == "diffusion":
            if self.prior is None:
                raise UserError("this model has no diffusion prior; use prior='ar' or give images")
            scale = check_scale(
                "prior_guidance_scale", d.prior_guidance_scale if guidance_scale is None else guidance_scale
            )
            steps = check_steps("prior_steps", d.prior_steps if steps is None else steps)
        else:
            raise UserError(f"prior must be 'diffusion' or 'ar', got {prior!r}")
        if prior == "diffusion":
            # One batched run; every sample draws its noise from its own generator, so image i
            # matches a lone run with its seed (to float rounding; tests/test_pipeline.py).
            emb = self.prior.sample(
                text,
                n,
                guidance_scale=scale,
                steps=steps,
                generator=list(generators),
                negative=negative,
                best_of=d.prior_best_of,
                precision=precision,
                callback=stage_callback(callback, "prior", steps),
            )
            return emb.float()
        out = []
        for i, g in enumerate(generators):
            p = i // n
            neg = None if negative is None else negative[p if len(negative) > 1 else 0]
            emb = self.prior_ar.sample(
                text[p], 1, guidance_scale=scale, generator=g, negative=neg, precision=precision
            )
            if callback is not None:
                callback("prior", i + 1, total_images)
            out.append(emb.float())
        return torch.cat(out)

    def decode(
        self,
        image_emb: Tensor,
        x_T: Tensor,
        *,
        text: TextEncoding | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        sampler: str = "ddim",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        upsampler_steps: int | Sequence[int] | None = None,
        upsampler_generators: Sequence[torch.Generator] | None = None,
        precision: str | None = None,
        callback: StepCallback | None = None,
        show_progress: bool = False,
        upsample: bool = True,
    ) -> Tensor:
        """Decoder (DDIM) then every upsampler [paper §2.1].

        Args:
            image_emb: (N, D) CLIP image embeddings.
            x_T: (N, 3, S, S) decoder starting noise (or an inverted latent).
            text: N captions whose tokens the decoder also attends to (None: image-only).
            steps, guidance_scale: decoder settings (None -> defaults).
            eta: DDIM eta of the decoder (0: deterministic).
            sampler: the decoder's sampler: "ddim" (the manipulations' deterministic decode of
                inverted latents); text to image uses the model's ``decoder_sampler``.
            generator: per-step noise of a stochastic decoder sampler (eta > 0, or the "ddpm"
                sampler of converted Karlo models): one generator, or one per image.
            upsampler_steps: one count for all upsamplers or one per upsampler (None -> defaults).
            upsampler_generators: N generators for the upsamplers' x_T (None: image i uses a
                generator seeded with s + i, s drawn from ``generator`` after the decoder ran).
            precision: None -> bf16 where supported.
            callback: ``callback(stage, step, total)``; stages "decoder", "upsampler1", ...
            show_progress: progress bars.
            upsample: False stops after the decoder.

        Returns:
            (N, 3, H, W) images in [-1, 1] at :attr:`image_size` (decoder size without upsample).
        """
        d = self.defaults
        steps = check_steps("decoder_steps", d.decoder_steps if steps is None else steps)
        scale = check_scale(
            "decoder_guidance_scale", d.decoder_guidance_scale if guidance_scale is None else guidance_scale
        )
        up_steps = self._upsampler_steps(upsampler_steps)
        tokens = mask = pooled = None
        if text is not None and self.decoder.config.text_dim:
            tokens, mask, pooled = text.text_tokens, text.text_mask, text.text_emb
        images = self.decoder.sample(
            image_emb.to(self.device),
            tokens,
            mask,
            text_emb=pooled,
            guidance_scale=scale,
            steps=steps,
            sampler=sampler,
            eta=eta,
            generator=generator,
            x_T=x_T.to(self.device),
            precision=precision,
            callback=stage_callback(callback, "decoder", steps),
            show_progress=show_progress,
        )
        if not upsample:
            return images
        if upsampler_generators is None and isinstance(generator, (list, tuple)):
            upsampler_generators = generator
        if upsampler_generators is None:
            seed = base_seed(None, generator)
            upsampler_generators = self.generators([seed + i for i in range(images.shape[0])])
        for k, (up, k_steps) in enumerate(zip(self.upsamplers, up_steps)):
            side = images.shape[-1] * up.config.scale
            noise = torch.stack(
                [torch.randn((3, side, side), generator=g, device=g.device) for g in upsampler_generators]
            )
            images = up.sample(
                images,
                steps=k_steps,
                sampler=d.upsampler_sampler,
                generator=list(upsampler_generators),
                x_T=noise.to(self.device),
                precision=precision,
                callback=stage_callback(callback, f"upsampler{k + 1}", k_steps),
                show_progress=show_progress,
            )
        return images

    def _upsampler_steps(self, value: int | Sequence[int] | None) -> list[int]:
        ups = self.upsamplers
        if value is None:
            fallback = self.defaults.upsampler_steps or (27,)
            value = [fallback[min(i, len(fallback) - 1)] for i in range(len(ups))]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = [value] * len(ups)
        else:
            value = list(value)
            if len(value) != len(ups):
                raise UserError(
                    f"upsampler_steps needs {len(ups)} value(s), one per upsampler, got {len(value)}"
                )
        return [check_steps("upsampler_steps", v) for v in value]

    def decoder_noise(self, generators: Sequence[torch.Generator]) -> Tensor:
        """(N, 3, S, S) decoder x_T, image i drawn from ``generators[i]``."""
        s = self.decoder.config.image_size
        return torch.stack([torch.randn((3, s, s), generator=g, device=g.device) for g in generators])

    # --- text to image -----------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | Sequence[int] | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        prior: PriorChoice | None = None,
        output_type: OutputType = "pil",
        callback: StepCallback | None = None,
        precision: str | None = None,
        show_progress: bool = False,
    ) -> UnCLIPOutput:
        """Generate images for prompts [paper §2, Fig. 2].

        Args:
            prompt: one prompt or B prompts.
            num_images_per_prompt: n images per prompt (output is prompt-major, B * n images).
            generator: source of the base seed (alternative to ``seed``).
            seed: base seed; image i uses ``seed + i`` (regenerate image i alone with
                ``seed=out.seeds[i]`` and its prompt).
            prior_steps, decoder_steps, upsampler_steps: DDIM steps (None -> model defaults).
            prior_guidance_scale, decoder_guidance_scale: classifier-free guidance scales (the
                prior's applies to whichever prior runs).
            negative_prompt: caption(s) the prior is guided away from (1 or B; "" or None: none).
            prior: "diffusion" or "ar" (None -> model default).
            output_type: "pil", "pt" or "np".
            callback: ``callback(stage, step, total)`` after every sampler step of every stage
                ("prior", "decoder", "upsampler1", "upsampler2"), steps counting from 1.
            precision: "bf16" / "fp32" (None: bf16 where supported).
            show_progress: progress bars for the decoder and upsamplers.

        Returns:
            :class:`UnCLIPOutput` with B * n images, image_embeds (B * n, D), text_embeds (B * n, D).
        """
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if (
            not isinstance(prompts, (list, tuple))
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise UserError("prompt must be a string or a non-empty list of strings")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise UserError(f"num_images_per_prompt must be a whole number, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise UserError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if output_type not in ("pil", "pt", "np"):
            raise UserError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        check_precision(precision)
        # Every setting is checked before any stage runs, so a bad one fails at once.
        for name, value in (("prior_steps", prior_steps), ("decoder_steps", decoder_steps)):
            if value is not None:
                check_steps(name, value)
        for name, value in (
            ("prior_guidance_scale", prior_guidance_scale),
            ("decoder_guidance_scale", decoder_guidance_scale),
        ):
            if value is not None:
                check_scale(name, value)
        self._upsampler_steps(upsampler_steps)
        if prior not in (None, "diffusion", "ar"):
            raise UserError(f"prior must be 'diffusion' or 'ar', got {prior!r}")
        negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt or [])
        if not all(isinstance(p, str) for p in negatives):
            raise UserError("negative_prompt must be a string or a list of strings")
        negatives = [] if negatives == [""] else negatives
        if negatives and len(negatives) not in (1, len(prompts)):
            raise UserError(f"negative_prompt must be one caption or one per prompt ({len(prompts)})")
        base = base_seed(seed, generator)
        n_total = len(prompts) * num_images_per_prompt
        seeds = [base + i for i in range(n_total)]
        with torch.inference_mode():
            text = self.encode_prompts(prompts)
            negative = self.encode_prompts(negatives) if negatives else None
            gens = self.generators(seeds)
            image_emb = self.prior_embeds(
                text,
                gens,
                prior=prior or self.defaults.prior,
                steps=prior_steps,
                guidance_scale=prior_guidance_scale,
                negative=negative,
                precision=precision,
                callback=callback,
            )
            per_image = text.repeat_interleave(num_images_per_prompt)
            images = self.decode(
                image_emb,
                self.decoder_noise(gens),
                text=per_image,
                steps=decoder_steps,
                guidance_scale=decoder_guidance_scale,
                sampler=self.defaults.decoder_sampler,
                generator=gens,
                upsampler_steps=upsampler_steps,
                upsampler_generators=gens,
                precision=precision,
                callback=callback,
                show_progress=show_progress,
            )
        return UnCLIPOutput(
            to_output(images, output_type), image_emb.cpu(), per_image.text_emb.cpu(), tuple(seeds)
        )

    # --- manipulations (paper §3), see unclip.manipulate -------------------------------------
    def invert(self, image: ImageLike, **kwargs: Any) -> Inversion:
        """See :func:`unclip.manipulate.invert`."""
        from unclip.manipulate import invert

        return invert(self, image, **kwargs)

    def variations(self, image: ImageLike | Inversion, **kwargs: Any) -> UnCLIPOutput:
        """See :func:`unclip.manipulate.variations`."""
        from unclip.manipulate import variations

        return variations(self, image, **kwargs)

    def interpolate(self, a: Any, b: Any, **kwargs: Any) -> UnCLIPOutput:
        """See :func:`unclip.manipulate.interpolate`."""
        from unclip.manipulate import interpolate

        return interpolate(self, a, b, **kwargs)

    def mix(self, items: Sequence[Any], weights: Sequence[float], **kwargs: Any) -> UnCLIPOutput:
        """See :func:`unclip.manipulate.mix`."""
        from unclip.manipulate import mix

        return mix(self, items, weights, **kwargs)

    def text_diff(
        self, image: ImageLike | Inversion, to: str, from_: str = "", **kwargs: Any
    ) -> UnCLIPOutput:
        """See :func:`unclip.manipulate.text_diff`."""
        from unclip.manipulate import text_diff

        return text_diff(self, image, to, from_=from_, **kwargs)
