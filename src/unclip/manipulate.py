"""Image manipulations in the bipartite latent (z_i, x_T) [paper §3, Figs. 3-5].

An image x is represented by its CLIP image embedding z_i and the decoder's DDIM latent x_T,
found by DDIM inversion of the decoder conditioned on z_i (:func:`invert`, paper §3, ADM App. F).
Decoding (z_i, x_T) with DDIM eta = 0 reconstructs x; every manipulation changes one of the two
and decodes again through the same decoder sampler and the same classifier-free guidance wrapper
as text to image (:meth:`unclip.pipeline.UnCLIPPipeline.decode`):

- :func:`variations` (§3.1): the same (z_i, x_T), decoded with eta > 0.
- :func:`interpolate` (§3.2): z slerped between two images or prompts; x_T fixed or slerped.
- :func:`mix`: an N-way weighted combination of embeddings (an extension of §3.2).
- :func:`text_diff` (§3.3): z slerped from z_i toward the normalised text difference z_d.

The decoder is run image-embedding-only (the caption path gets its learned null), as the paper
decodes (z_i, x_T) with no caption.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unclip.clip.preprocess import ImagePreprocess
from unclip.errors import UserError
from unclip.pipeline.pipeline import (
    OutputType,
    StepCallback,
    UnCLIPOutput,
    base_seed,
    check_precision,
    check_scale,
    check_steps,
    stage_callback,
    to_output,
)

if TYPE_CHECKING:
    from unclip.pipeline.pipeline import UnCLIPPipeline

ImageLike = Image.Image | Tensor | str | Path
MAX_FRAMES = 256
MAX_REFINE = 10
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclasses.dataclass(frozen=True)
class Inversion:
    """The bipartite latent of one image [paper §3].

    Attributes:
        image_emb: (1, D) unit-norm CLIP image embedding z_i.
        x_T: (1, 3, S, S) decoder DDIM latent; decoding (z_i, x_T) with eta = 0 and the same
            ``steps``, ``guidance_scale`` and ``precision`` reconstructs ``x_start``.
        x_start: (1, 3, S, S) the image at the decoder's size, in [-1, 1].
        steps: decoder DDIM steps the inversion used.
        guidance_scale: decoder guidance scale the inversion used.
        precision: autocast precision the inversion used (None: the default, bf16 on CPU).
    """

    image_emb: Tensor
    x_T: Tensor
    x_start: Tensor
    steps: int
    guidance_scale: float
    precision: str | None = None


# ---------------------------------------------------------------------------- helpers


def slerp(a: Tensor, b: Tensor, t: Tensor | Sequence[float] | float) -> Tensor:
    """Spherical linear interpolation between two tensors of the same shape [paper §3.2].

    The angle is the one between the flattened tensors; for unit vectors the result stays on the
    unit sphere. t = 0 returns ``a`` and t = 1 returns ``b`` exactly (computed in float64). Nearly
    parallel (or antiparallel) inputs, where the angle is ill-defined, fall back to linear
    interpolation.

    Args:
        a, b: tensors of shape S (e.g. (D,) embeddings or (3, H, W) latents).
        t: K interpolation weights.

    Returns:
        (K, *S) tensor in ``a``'s dtype.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1).to(a.device)
    a64, b64 = a.double().flatten(), b.to(a.device).double().flatten()
    denom = a64.norm() * b64.norm()
    cos = (a64 @ b64 / denom).clamp(-1.0, 1.0) if denom > 0 else torch.ones((), dtype=torch.float64)
    omega = torch.arccos(cos)
    sin_omega = torch.sin(omega)
    if float(sin_omega) < 1e-6:
        wa, wb = 1.0 - tt, tt
    else:
        wa, wb = torch.sin((1.0 - tt) * omega) / sin_omega, torch.sin(tt * omega) / sin_omega
    out = wa * a64 + wb * b64
    return out.to(a.dtype).reshape(tt.shape[0], *a.shape)


def load_image(image: ImageLike) -> Image.Image | Tensor:
    """A PIL image or a (1, 3, H, W) tensor in [-1, 1] from a path, PIL image or tensor."""
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise UserError(f"image file not found: {p}")
        try:
            with Image.open(p) as im:
                im.load()
                return im.copy()
        except (OSError, Image.DecompressionBombError) as e:
            raise UserError(f"cannot read image {p}: {e}") from None
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[0] != 1:
            raise UserError(f"give one image: a (3, H, W) or (1, 3, H, W) tensor, got {tuple(image.shape)}")
        return x
    raise UserError(f"expected an image (path, PIL image or tensor), got {type(image).__name__}")


def is_prompt(item: object) -> bool:
    """A str is a prompt unless it looks like an image path; Paths, PIL images and tensors are images.

    A str "looks like an image path" when it has an image suffix (``.png``, ``.jpg``, ...) and no
    spaces. So a prompt such as "cat" stays a prompt even if a file called ``cat`` happens to
    exist in the working directory; pass ``Path("cat")`` to mean that file.

    Raises:
        UserError: a str that looks like an image path but names no file (a mistyped path, which
            would otherwise silently become a prompt).
    """
    if not isinstance(item, str):
        return False
    if Path(item).suffix.lower() in IMAGE_SUFFIXES and " " not in item.strip():
        if Path(item).is_file():
            return False
        raise UserError(f"image file not found: {item}")
    return True


def _seeded(
    pipe: UnCLIPPipeline, seed: int | None, generator: torch.Generator | None
) -> tuple[int, torch.Generator]:
    base = base_seed(seed, generator)
    return base, torch.Generator(device=pipe.device).manual_seed(base)


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    return value


def _check_eta(eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise UserError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def _settings(pipe: UnCLIPPipeline, steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
    d = pipe.defaults
    return (
        check_steps("decoder_steps", d.decoder_steps if steps is None else steps),
        check_scale(
            "decoder_guidance_scale", d.decoder_guidance_scale if guidance_scale is None else guidance_scale
        ),
    )


def _inversion_settings(inv: Inversion, steps: int | None, guidance_scale: float | None) -> None:
    if (steps is not None and steps != inv.steps) or (
        guidance_scale is not None and guidance_scale != inv.guidance_scale
    ):
        raise UserError(
            f"this inversion was made with {inv.steps} steps and guidance {inv.guidance_scale}; "
            "decode it with the same settings (or invert again)"
        )


# ---------------------------------------------------------------------------- inversion


def invert(
    pipe: UnCLIPPipeline,
    image: ImageLike,
    *,
    steps: int | None = None,
    refine: int = 2,
    guidance_scale: float | None = None,
    precision: str | None = None,
    callback: StepCallback | None = None,
    show_progress: bool = False,
) -> Inversion:
    """Find the bipartite latent (z_i, x_T) of an image [paper §3; ADM App. F].

    z_i is CLIP's image embedding; x_T comes from deterministic DDIM inversion of the decoder,
    conditioned on z_i only (null caption) with the given guidance, from the image resized and
    centre-cropped to the decoder's size. ``refine`` fixed-point iterations per step solve the
    inverse step exactly instead of to first order (:func:`unclip.sampling.ddim_invert`).

    Args:
        pipe: the pipeline.
        image: a path, PIL image or (3, H, W) / (1, 3, H, W) tensor in [-1, 1].
        steps: decoder DDIM steps (None -> the model's decoder default); decode with the same.
        refine: fixed-point iterations per step (0: the usual one-call inversion).
        guidance_scale: decoder guidance (None -> the model's default). Guided inversion is
            less exact than s = 1 (docs/pipeline.md).
        precision: "bf16" / "fp32" (None: bf16 where supported).
        callback: ``callback("invert", step, total)``.
        show_progress: progress bar.

    Returns:
        :class:`Inversion`.
    """
    from unclip.sampling import ddim_invert

    steps, scale = _settings(pipe, steps, guidance_scale)
    refine = _check_count("refine", refine, 0, MAX_REFINE)
    check_precision(precision)
    size = pipe.decoder.config.image_size
    with torch.inference_mode():
        img = load_image(image)
        image_emb = pipe.clip.encode_image(img).float()  # (1, D)
        x_start = ImagePreprocess(size)(img).to(pipe.device)  # mean = std = 0.5: pixels in [-1, 1]
        fn = pipe.decoder.guided_fn(
            image_emb.to(pipe.device), batch=1, guidance_scale=scale, precision=precision
        )
        x_T = ddim_invert(
            fn,
            x_start,
            diffusion=pipe.decoder.diffusion,
            steps=steps,
            clip="static",  # the decoder samples with static clipping; inversion must match
            fixed_point_iters=refine,
            callback=stage_callback(callback, "invert", steps),
            show_progress=show_progress,
        )
    return Inversion(image_emb.cpu(), x_T.float().cpu(), x_start.cpu(), steps, scale, precision)


def reconstruct(pipe: UnCLIPPipeline, inversion: Inversion, upsample: bool = False) -> Tensor:
    """Decode (z_i, x_T) with DDIM eta = 0 [paper §3.1]: (1, 3, S, S) in [-1, 1] (decoder size
    unless ``upsample``; upsampler noise then comes from seed 0)."""
    with torch.inference_mode():
        return pipe.decode(
            inversion.image_emb,
            inversion.x_T,
            steps=inversion.steps,
            guidance_scale=inversion.guidance_scale,
            precision=inversion.precision,
            upsample=upsample,
            upsampler_generators=pipe.generators([0]),
        ).cpu()


def _inversion(
    pipe: UnCLIPPipeline,
    image: ImageLike | Inversion,
    steps: int | None,
    refine: int,
    guidance_scale: float | None,
    precision: str | None,
    callback: StepCallback | None,
    show_progress: bool,
) -> Inversion:
    if isinstance(image, Inversion):
        _inversion_settings(image, steps, guidance_scale)
        return image
    return invert(
        pipe,
        image,
        steps=steps,
        refine=refine,
        guidance_scale=guidance_scale,
        precision=precision,
        callback=callback,
        show_progress=show_progress,
    )


def _raw_embeddings(pipe: UnCLIPPipeline) -> bool:
    """True for converted models whose CLIP returns unnormalised embeddings (Karlo): there the
    norm carries information the decoder was trained with, so combinations keep it."""
    return not getattr(getattr(pipe.clip, "config", None), "normalize", True)


def _embed(pipe: UnCLIPPipeline, item: object, g: torch.Generator, precision: str | None) -> Tensor:
    """(1, D) image embedding of an image (CLIP) or a prompt (the model's default prior)."""
    if is_prompt(item):
        text = pipe.encode_prompts([item])
        return pipe.prior_embeds(text, [g], prior=pipe.defaults.prior, precision=precision)
    if isinstance(item, Inversion):
        return item.image_emb
    return pipe.clip.encode_image(load_image(item)).float()


# ---------------------------------------------------------------------------- manipulations


def variations(
    pipe: UnCLIPPipeline,
    image: ImageLike | Inversion,
    *,
    n: int = 4,
    eta: float = 1.0,
    mode: Literal["inverted", "noise"] = "inverted",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    refine: int = 2,
    guidance_scale: float | None = None,
    upsampler_steps: int | Sequence[int] | None = None,
    precision: str | None = None,
    output_type: OutputType = "pil",
    callback: StepCallback | None = None,
    show_progress: bool = False,
) -> UnCLIPOutput:
    """Variations of an image: its z_i decoded with DDIM eta > 0 [paper §3.1, Fig. 3].

    Args:
        pipe: the pipeline.
        image: a path, PIL image, tensor, or an :class:`Inversion` (reused, not recomputed).
        n: number of variations.
        eta: DDIM eta (the paper does not report its values, spec §9.9). With mode "inverted",
            0 reconstructs the image and larger values wander further from it; 1 adds the
            DDPM amount of noise at every step.
        mode: "inverted" starts from the image's inverted x_T; "noise" from fresh noise (keeps
            only what z_i encodes).
        seed, generator: source of all noise (fresh x_T, DDIM noise, upsampler noise).
        steps, refine, guidance_scale: decoder DDIM steps, inversion refinement, guidance.
        upsampler_steps: steps per upsampler (None -> defaults).
        precision: "bf16" / "fp32".
        output_type: "pil", "pt" or "np".
        callback: ``callback(stage, step, total)``.
        show_progress: progress bars.

    Returns:
        :class:`UnCLIPOutput` with n images and image_embeds (n, D) (all equal to z_i).
    """
    n = _check_count("n", n, 1, MAX_FRAMES)
    eta = _check_eta(eta)
    if mode not in ("inverted", "noise"):
        raise UserError(f"mode must be 'inverted' or 'noise', got {mode!r}")
    check_precision(precision)
    base, g = _seeded(pipe, seed, generator)
    with torch.inference_mode():
        if mode == "inverted":
            inv = _inversion(pipe, image, steps, refine, guidance_scale, precision, callback, show_progress)
            emb, x_T = inv.image_emb, inv.x_T.expand(n, -1, -1, -1)
            steps, guidance_scale, precision = inv.steps, inv.guidance_scale, inv.precision
        else:
            emb = (
                image.image_emb if isinstance(image, Inversion) else pipe.clip.encode_image(load_image(image))
            )
            s = pipe.decoder.config.image_size
            x_T = torch.randn((n, 3, s, s), generator=g, device=g.device)
        emb = emb.expand(n, -1)
        images = pipe.decode(
            emb,
            x_T,
            steps=steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=g,
            upsampler_steps=upsampler_steps,
            precision=precision,
            callback=callback,
            show_progress=show_progress,
        )
    return UnCLIPOutput(to_output(images, output_type), emb.cpu().clone(), None, (base,))


def interpolate(
    pipe: UnCLIPPipeline,
    a: ImageLike | Inversion,
    b: ImageLike | Inversion,
    *,
    frames: int = 5,
    x_T: Literal["fixed", "interpolate"] = "fixed",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    refine: int = 2,
    guidance_scale: float | None = None,
    upsampler_steps: int | Sequence[int] | None = None,
    precision: str | None = None,
    output_type: OutputType = "pil",
    callback: StepCallback | None = None,
    show_progress: bool = False,
) -> UnCLIPOutput:
    """Interpolate between two images or prompts [paper §3.2, Fig. 4].

    z_theta = slerp(z_a, z_b, theta) for theta in linspace(0, 1, frames); an image endpoint is
    embedded by CLIP, a prompt (a str that is not an existing file) by the model's prior.

    Args:
        pipe: the pipeline.
        a, b: images (path, PIL, tensor, :class:`Inversion`) or prompts.
        frames: number of frames, endpoints included.
        x_T: "fixed": one latent for every frame, a's inversion when a is an image, else a
            seeded draw (paper Fig. 4 uses a fixed random latent). "interpolate": slerp between
            the two endpoints' inversions (a prompt endpoint contributes a seeded draw), so
            image endpoints are reconstructed.
        seed, generator: source of prior samples, drawn latents and upsampler noise.
        steps, refine, guidance_scale, upsampler_steps, precision: as in :func:`variations`.
        output_type, callback, show_progress: as in :func:`variations`.

    Returns:
        :class:`UnCLIPOutput` with ``frames`` images and image_embeds (frames, D);
        image_embeds[0] is a's embedding and image_embeds[-1] b's, exactly.
    """
    frames = _check_count("frames", frames, 2, MAX_FRAMES)
    if x_T not in ("fixed", "interpolate"):
        raise UserError(f"x_T must be 'fixed' or 'interpolate', got {x_T!r}")
    check_precision(precision)
    base, g = _seeded(pipe, seed, generator)
    s = pipe.decoder.config.image_size
    with torch.inference_mode():
        ends = []
        for k, item in enumerate((a, b)):
            wants_latent = x_T == "interpolate" or k == 0
            if is_prompt(item):
                emb = _embed(pipe, item, g, precision)
                latent = torch.randn((1, 3, s, s), generator=g, device=g.device).cpu()
            elif wants_latent:
                inv = _inversion(
                    pipe, item, steps, refine, guidance_scale, precision, callback, show_progress
                )
                emb, latent = inv.image_emb, inv.x_T
                steps, guidance_scale, precision = inv.steps, inv.guidance_scale, inv.precision
            else:
                emb, latent = _embed(pipe, item, g, precision), None
            ends.append((emb.cpu().float(), latent))
        thetas = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
        embs = slerp(ends[0][0][0], ends[1][0][0], thetas)  # (frames, D)
        if x_T == "fixed":
            latents = ends[0][1].expand(frames, -1, -1, -1)
        else:
            latents = slerp(ends[0][1][0], ends[1][1][0], thetas)
        images = pipe.decode(
            embs,
            latents,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=g,
            upsampler_steps=upsampler_steps,
            precision=precision,
            callback=callback,
            show_progress=show_progress,
        )
    return UnCLIPOutput(to_output(images, output_type), embs, None, (base,))


def mix(
    pipe: UnCLIPPipeline,
    items: Sequence[ImageLike | Inversion],
    weights: Sequence[float],
    *,
    n: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    upsampler_steps: int | Sequence[int] | None = None,
    precision: str | None = None,
    output_type: OutputType = "pil",
    callback: StepCallback | None = None,
    show_progress: bool = False,
) -> UnCLIPOutput:
    """Decode a weighted mix of several images' and prompts' embeddings (extends paper §3.2).

    z = normalise(sum_k w_k z_k) over unit embeddings z_k. Only the direction matters, so
    weights need not sum to 1; a negative weight pushes away from that item (the idea of a text
    diff, §3.3). Two items with weights (1 - t, t) give the same direction as a linear (not
    spherical) interpolation.

    Args:
        pipe: the pipeline.
        items: images (path, PIL, tensor, :class:`Inversion`) and/or prompts.
        weights: one finite number per item, not all zero.
        n: images decoded from the mix (fresh seeded latents, DDIM eta = 0).
        seed, generator: source of prior samples, latents and upsampler noise.
        steps, guidance_scale, upsampler_steps, precision: decoder/upsampler settings.
        output_type, callback, show_progress: as in :func:`variations`.

    Returns:
        :class:`UnCLIPOutput` with n images and image_embeds (n, D) (all equal to z).
    """
    items, weights = list(items), list(weights)
    if not items:
        raise UserError("mix needs at least one item")
    if len(weights) != len(items):
        raise UserError(f"mix needs one weight per item: {len(items)} item(s), {len(weights)} weight(s)")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise UserError(f"weights must be finite numbers, got {weights}")
    if all(w == 0 for w in weights):
        raise UserError("weights are all zero")
    n = _check_count("n", n, 1, MAX_FRAMES)
    check_precision(precision)
    base, g = _seeded(pipe, seed, generator)
    s = pipe.decoder.config.image_size
    with torch.inference_mode():
        embs = torch.cat([_embed(pipe, it, g, precision).cpu() for it in items])  # (K, D)
        w = torch.tensor(weights, dtype=torch.float64)[:, None]
        total = (w * F.normalize(embs.double(), dim=-1)).sum(0)
        if float(total.norm()) < 1e-6:
            raise UserError("the weighted embeddings cancel out; change the weights")
        z = F.normalize(total, dim=-1)
        if _raw_embeddings(pipe):  # the weighted mean of the inputs' norms
            z = z * (w.abs()[:, 0] * embs.double().norm(dim=-1)).sum() / w.abs().sum()
        z = z.float()[None].expand(n, -1)
        x_T = torch.randn((n, 3, s, s), generator=g, device=g.device)
        images = pipe.decode(
            z,
            x_T,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=g,
            upsampler_steps=upsampler_steps,
            precision=precision,
            callback=callback,
            show_progress=show_progress,
        )
    return UnCLIPOutput(to_output(images, output_type), z.clone(), None, (base,))


def text_diff(
    pipe: UnCLIPPipeline,
    image: ImageLike | Inversion,
    to: str,
    *,
    from_: str = "",
    max_theta: float = 0.5,
    frames: int = 5,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    steps: int | None = None,
    refine: int = 2,
    guidance_scale: float | None = None,
    upsampler_steps: int | Sequence[int] | None = None,
    precision: str | None = None,
    output_type: OutputType = "pil",
    callback: StepCallback | None = None,
    show_progress: bool = False,
) -> UnCLIPOutput:
    """Edit an image toward a caption with a text diff [paper §3.3, Fig. 5].

    z_d = normalise(z_t(to) - z_t(from_)); with ``from_=""`` there is no baseline and
    z_d = z_t(to) (paper footnote 3: no baseline also works). Frame k decodes
    slerp(z_i, z_d, theta_k), theta in linspace(0, max_theta, frames), from the image's
    inverted x_T with DDIM eta = 0, so frame 0 is the eta = 0 reconstruction.

    Args:
        pipe: the pipeline.
        image: a path, PIL image, tensor or :class:`Inversion`.
        to: caption describing the edit's target.
        from_: caption describing the current image ("" for none).
        max_theta: largest theta (paper: usually 0.25 to 0.5), in (0, 1].
        frames: number of frames (>= 1).
        seed, generator: upsampler noise (frame k uses seed s + k, s drawn from the seed).
        steps, refine, guidance_scale, upsampler_steps, precision: as in :func:`variations`.
        output_type, callback, show_progress: as in :func:`variations`.

    Returns:
        :class:`UnCLIPOutput` with ``frames`` images, image_embeds (frames, D) and text_embeds
        (frames, D) holding z_d.
    """
    if not isinstance(to, str) or not isinstance(from_, str):
        raise UserError("to and from_ must be strings")
    frames = _check_count("frames", frames, 1, MAX_FRAMES)
    ok = isinstance(max_theta, (int, float)) and not isinstance(max_theta, bool) and math.isfinite(max_theta)
    if not ok or not 0.0 < max_theta <= 1.0:
        raise UserError(f"max_theta must be in (0, 1], got {max_theta!r}")
    check_precision(precision)
    base, g = _seeded(pipe, seed, generator)
    with torch.inference_mode():
        z_t = pipe.clip.encode_text([to]).text_emb.float().cpu()  # (1, D)
        if from_:
            z_t = z_t - pipe.clip.encode_text([from_]).text_emb.float().cpu()
            if float(z_t.norm()) < 1e-6:
                raise UserError("to and from_ have the same CLIP embedding; the text diff is zero")
        z_d = F.normalize(z_t, dim=-1)
        inv = _inversion(pipe, image, steps, refine, guidance_scale, precision, callback, show_progress)
        if _raw_embeddings(pipe):  # unnormalised embeddings: give z_d the image embedding's norm
            z_d = z_d * inv.image_emb.float().cpu().norm()
        thetas = torch.linspace(0.0, float(max_theta), frames, dtype=torch.float64)
        embs = slerp(inv.image_emb[0], z_d[0], thetas)  # (frames, D)
        images = pipe.decode(
            embs,
            inv.x_T.expand(frames, -1, -1, -1),
            steps=inv.steps,
            guidance_scale=inv.guidance_scale,
            generator=g,
            upsampler_steps=upsampler_steps,
            precision=inv.precision,
            callback=callback,
            show_progress=show_progress,
        )
    return UnCLIPOutput(to_output(images, output_type), embs, z_d.expand(frames, -1).clone(), (base,))
