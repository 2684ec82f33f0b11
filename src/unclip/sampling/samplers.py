"""Samplers with one signature: DDPM, DDIM (eta), DPM-Solver++ (2M, 2M-SDE, 3M), DDIM inversion.

Every sampler is a small loop over a respaced chain and talks to the model through one helper,
:class:`SamplerLoop`, which maps step indices to ORIGINAL timesteps, casts the model output to
x's dtype and converts it to (pred_xstart, eps) through the diffusion object. No sampler
re-derives a parameterisation (the k-diffusion lesson).

Model contract: ``model_fn(x_t, t) -> output`` with x_t (B, ...) and t a (B,) LongTensor of
ORIGINAL-scale timesteps; the output is in the diffusion's parameterisation (eps, x0 or v), with
twice the channels on dim 1 for learned variance. Wrap conditioning with
:func:`unclip.sampling.guidance.guided_model_fn` or a lambda.

Precision: x is kept in float32 (float64 when asked or given), and every model output is cast to
x's dtype, so running the model under bf16 autocast is safe.

Randomness: all noise (x_T and per-step noise) comes from the passed ``generator``, drawn on the
generator's device and moved to x's device, so a CPU generator gives the same numbers on any
device; the same seed gives identical outputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from unclip.diffusion.gaussian import Clip, GaussianDiffusion
from unclip.diffusion.respace import respace, space_timesteps
from unclip.progress import progress

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor, Tensor], None]
#: One generator, one per batch row (see :func:`randn`), or None for torch's global RNG.
Generators = torch.Generator | Sequence[torch.Generator] | None


class SamplerLoop:
    """The shared plumbing of every sampler loop over one (respaced) chain.

    Args:
        diffusion: the respaced chain the loop walks (index i = 0 .. N-1).
        model_fn: see the module docstring.
        clip: x_0 clipping mode (None for embeddings, "static"/"dynamic" for images).
        generator: source of all noise.
        callback: ``callback(step_index, t, x_t, pred_xstart)`` with t the original timestep.
        show_progress: draw a progress bar (off when quiet).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        model_fn: ModelFn,
        clip: Clip = None,
        generator: Generators = None,
        callback: Callback | None = None,
        show_progress: bool = False,
    ) -> None:
        self.diffusion = diffusion
        self.model_fn = model_fn
        self.clip = clip
        self.generator = generator
        self.callback = callback
        self.show_progress = show_progress
        # Schedule values as Python floats (float64): per-step scalars never lose precision
        # and multiply float32 tensors without upcasting them.
        abar = diffusion.alphas_cumprod
        self.alphas_cumprod = [float(a) for a in abar]
        self.alpha = [math.sqrt(a) for a in self.alphas_cumprod]
        self.sigma = [math.sqrt(1.0 - a) for a in self.alphas_cumprod]
        # log-SNR lambda = log(alpha / sigma), the DPM-Solver time variable.
        self.lam = [math.log(a) - math.log(s) for a, s in zip(self.alpha, self.sigma)]

    def indices(self, reverse: bool = True, desc: str = "sampling") -> Iterator[int]:
        """Step indices from noisiest to cleanest (or the other way for inversion)."""
        n = self.diffusion.num_timesteps
        order = range(n - 1, -1, -1) if reverse else range(n)
        if self.show_progress:
            return iter(progress(order, desc=desc, total=n))
        return iter(order)

    def model_output(self, x: Tensor, i: int) -> Tensor:
        """Raw model output at step index i, cast to x's dtype."""
        t = self.diffusion.model_timesteps(i, batch=x.shape[0], device=x.device)
        return self.model_fn(x, t).to(x.dtype)

    def denoise(self, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(pred_xstart, eps) at step index i, with this loop's clipping."""
        return self.diffusion.model_output_to(x, i, self.model_output(x, i), clip=self.clip)

    def noise_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like x, drawn from the loop's generator."""
        return randn(tuple(x.shape), self.generator, x.dtype, x.device)

    def report(self, step: int, i: int, x: Tensor, pred_xstart: Tensor) -> None:
        if self.callback is not None:
            self.callback(step, int(self.diffusion.timestep_map[i]), x, pred_xstart)


def randn(shape: Sequence[int], generator: Generators, dtype: torch.dtype, device: Any) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``.

    ``generator`` may be a sequence of B generators, one per row of a (B, ...) shape: row i is
    then drawn from generator i alone, so a sample's noise does not depend on the batch it runs
    in (the pipeline gives every image its own generator).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [randn(tuple(shape[1:]), g, dtype, device) for g in generator]
        return torch.stack(rows)
    if generator is None:
        return torch.randn(tuple(shape), dtype=dtype, device=device)
    noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device)
    return noise.to(device)


# ---------------------------------------------------------------------------- samplers


def _ddpm(loop: SamplerLoop, x: Tensor) -> Tensor:
    """Ancestral sampling [DDPM Alg. 2] with the chain's variance (fixed small/large or learned)."""
    d = loop.diffusion
    for step, i in enumerate(loop.indices()):
        out = d.p_mean_variance(loop.model_output(x, i), x, i, clip=loop.clip)
        loop.report(step, i, x, out.pred_xstart)
        if i == 0:
            return out.pred_xstart  # no noise at t = 0: the result is the x_0 prediction
        x = out.mean + torch.exp(0.5 * out.log_variance) * loop.noise_like(x)
    raise AssertionError("unreachable")


def _ddim(loop: SamplerLoop, x: Tensor, *, eta: float = 0.0) -> Tensor:
    """DDIM [Song et al. 2021, eq. 12]; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
    abar = loop.alphas_cumprod
    for step, i in enumerate(loop.indices()):
        pred_xstart, eps = loop.denoise(x, i)
        loop.report(step, i, x, pred_xstart)
        if i == 0:
            return pred_xstart
        a, a_prev = abar[i], abar[i - 1]
        # eq. 16: sigma_t(eta) = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a)) * math.sqrt(1.0 - a / a_prev)
        x = math.sqrt(a_prev) * pred_xstart + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * loop.noise_like(x)
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        fn: the loop, ``fn(loop, x_T, **opts) -> x_0``.
        uses_eta: whether it takes ``eta``.
        doc: one line for listings.
        int_spacing: what an int ``steps`` means: "strided" (iDDPM's even stride, including
            the first and last step) or "logsnr" (uniform in log-SNR; measured best for
            DPM-Solver++, docs/diffusion.md).
    """

    fn: Callable[..., Tensor]
    uses_eta: bool
    doc: str
    int_spacing: str = "strided"


def _registry() -> dict[str, SamplerSpec]:
    from unclip.sampling import dpm_solver

    return {
        "ddpm": SamplerSpec(
            _ddpm, False, "ancestral; variance from the diffusion (fixed_small/large/learned)"
        ),
        "ddim": SamplerSpec(_ddim, True, "DDIM; eta = 0 deterministic"),
        "dpmpp_2m": SamplerSpec(
            dpm_solver.dpmpp_2m,
            True,
            "DPM-Solver++(2M), data prediction; eta > 0 gives the SDE variant",
            int_spacing="logsnr",
        ),
        "dpmpp_3m": SamplerSpec(
            dpm_solver.dpmpp_3m,
            False,
            "DPM-Solver++(3M), data prediction; unstable below ~20 steps",
            int_spacing="logsnr",
        ),
    }


_SAMPLERS: dict[str, SamplerSpec] = {}


def _samplers() -> dict[str, SamplerSpec]:
    if not _SAMPLERS:
        _SAMPLERS.update(_registry())
    return _SAMPLERS


def list_samplers() -> list[str]:
    """Names accepted by :func:`sample`."""
    return list(_samplers())


def _work_dtype(x: Tensor | None, dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64, got {dtype} (run the model under autocast instead)"
        )
    if x is not None and x.dtype == torch.float64:
        return torch.float64
    return dtype


def _chain(diffusion: GaussianDiffusion, steps: int | str | Sequence[int]) -> GaussianDiffusion:
    keep = space_timesteps(diffusion.num_timesteps, steps, alphas_cumprod=diffusion.alphas_cumprod)
    return respace(diffusion, keep)


def _check_opts(name: str, fn: Callable[..., Any], opts: dict[str, Any]) -> None:
    allowed = [p for p, v in inspect.signature(fn).parameters.items() if v.kind == v.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(
            f"sampler {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    x_T_or_shape: Tensor | Sequence[int],
    *,
    diffusion: GaussianDiffusion,
    sampler: str,
    steps: int | str | Sequence[int],
    generator: Generators,
    eta: float = 0.0,
    clip: Clip = None,
    callback: Callback | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    show_progress: bool = False,
    **sampler_opts: Any,
) -> Tensor:
    """Draw samples x_0 from a diffusion model.

    Args:
        model_fn: ``model_fn(x_t, t) -> output``; t is a (B,) LongTensor of ORIGINAL timesteps.
        x_T_or_shape: the starting noise x_T (B, ...), or its shape to draw it from ``generator``.
        diffusion: the chain the model was trained with (usually the full T-step one).
        sampler: one of :func:`list_samplers`.
        steps: which timesteps to visit, see :func:`unclip.diffusion.respace.space_timesteps`:
            a string spec ("50" strided, "ddim50", "logsnr20", "10,10,3,2,2"), a list of step
            indices, or an int N: N steps spaced the sampler's way (strided for ddpm/ddim as in
            iDDPM, uniform in log-SNR for dpmpp_*, which measures best for them).
        generator: source of all randomness (None: torch's global RNG), or one generator per
            batch row.
        eta: stochasticity for "ddim" (DDIM eta) and "dpmpp_2m" (SDE variant); others need 0.
        clip: x_0 clipping: None for embeddings, "static" or "dynamic" for images.
        callback: ``callback(step_index, t, x_t, pred_xstart)`` once per step, t the original
            timestep.
        dtype: float32 or float64: the dtype x is kept in (float64 also when x_T is float64).
        device: where x lives when only a shape is given (default: the generator's device).
        show_progress: show a progress bar (off under ``--quiet``).
        **sampler_opts: sampler-specific options (dpmpp_2m/3m: ``lower_order_final``).

    Returns:
        (B, ...) samples, the x_0 prediction of the last step (no noise is added at t = 0).
    """
    samplers = _samplers()
    if sampler not in samplers:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(samplers)}")
    spec = samplers[sampler]
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta != 0 and not spec.uses_eta:
        raise ValueError(
            f"sampler {sampler!r} takes no eta (only {[n for n, s in samplers.items() if s.uses_eta]})"
        )
    _check_opts(sampler, spec.fn, {**sampler_opts, **({"eta": eta} if spec.uses_eta else {})})

    if isinstance(x_T_or_shape, Tensor):
        work = _work_dtype(x_T_or_shape, dtype)
        x = x_T_or_shape.to(dtype=work, device=device if device is not None else x_T_or_shape.device)
    else:
        shape = tuple(int(s) for s in x_T_or_shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"x_T shape must be (B, ...) with at least 2 positive dims, got {shape}")
        work = _work_dtype(None, dtype)
        if device is None:
            first = generator[0] if isinstance(generator, (list, tuple)) else generator
            device = first.device if first is not None else "cpu"
        x = randn(shape, generator, work, device)

    if isinstance(steps, int) and not isinstance(steps, bool) and spec.int_spacing == "logsnr":
        steps = f"logsnr{steps}"
    loop = SamplerLoop(_chain(diffusion, steps), model_fn, clip, generator, callback, show_progress)
    if spec.uses_eta:
        sampler_opts["eta"] = eta
    return spec.fn(loop, x, **sampler_opts)


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x_start: Tensor,
    *,
    diffusion: GaussianDiffusion,
    steps: int | str | Sequence[int],
    clip: Clip = None,
    fixed_point_iters: int = 0,
    callback: Callback | None = None,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = False,
) -> Tensor:
    """Deterministic DDIM inversion x_0 -> x_T [ADM App. F; unCLIP §3].

    ``sample(model_fn, x_T, sampler="ddim", eta=0, steps=steps, ...)`` started from the result
    reconstructs ``x_start``. Step i solves the DDIM update backwards: find x_i whose DDIM step
    lands on x_{i-1}. The usual inversion (``fixed_point_iters=0``, one model call per step)
    evaluates the model at x_{i-1} instead of x_i, a first-order approximation whose round-trip
    error shrinks only slowly with more steps (about 3e-2 at 250 steps on the Gaussian check).
    ``fixed_point_iters`` > 0 re-evaluates the model at the new x_i that many times, solving the
    exact inverse by fixed-point iteration; see docs/diffusion.md for measured errors.

    Args:
        model_fn: as in :func:`sample`.
        x_start: (B, ...) data to invert.
        diffusion: the chain the model was trained with.
        steps: the same timestep spec that the reconstruction will use (an int is strided).
        clip: x_0 clipping mode (should match the reconstruction's).
        fixed_point_iters: extra model calls per step refining the inverse.
        callback: ``callback(step_index, t, x_t, pred_xstart)`` per step, at the point where
            the model was first evaluated.
        dtype: float32 or float64 (float64 also when x_start is float64).
        show_progress: show a progress bar.

    Returns:
        (B, ...) x_T at the chain's last kept step.
    """
    if fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    work = _work_dtype(x_start, dtype)
    loop = SamplerLoop(_chain(diffusion, steps), model_fn, clip, None, callback, show_progress)
    alpha, sigma, abar = loop.alpha, loop.sigma, loop.alphas_cumprod
    x_prev = x_start.to(work)
    # The sampler's last step maps x_{t_0} to its x_0 prediction, so inversion first goes from
    # x_0 (abar = 1) up to t_0; there is no step before t_0, so its first guess uses the model at t_0.
    eval_x, eval_i = x_prev, 0
    for step, i in enumerate(loop.indices(reverse=False, desc="inverting")):
        a_prev, s_prev = (alpha[i - 1], sigma[i - 1]) if i > 0 else (1.0, 0.0)
        # DDIM from x_i to x_{i-1} keeps (x_0, eps) fixed; solved for x_i it reads either
        #   x_i = (alpha_i / alpha_{i-1}) x_{i-1} + (sigma_i - alpha_i sigma_{i-1} / alpha_{i-1}) eps, or
        #   x_i = (sigma_i / sigma_{i-1}) x_{i-1} + (alpha_i - alpha_{i-1} sigma_i / sigma_{i-1}) x_0.
        eps_coefs = (alpha[i] / a_prev, sigma[i] - alpha[i] * s_prev / a_prev)
        pred_xstart, eps = loop.denoise(eval_x, eval_i)
        loop.report(step, eval_i, eval_x, pred_xstart)
        x = eps_coefs[0] * x_prev + eps_coefs[1] * eps
        if i > 0 and fixed_point_iters:
            x0_coefs = (sigma[i] / s_prev, alpha[i] - a_prev * sigma[i] / s_prev)
            # Both forms share the fixed point. Iterating the eps form barely contracts at high
            # noise and the x_0 form at low noise, with derivatives of opposite sign, so the
            # blend weighted by abar_i contracts well at every noise level.
            w = abar[i]
            for _ in range(fixed_point_iters):
                pred_xstart, eps = loop.denoise(x, i)
                x = w * (eps_coefs[0] * x_prev + eps_coefs[1] * eps) + (1.0 - w) * (
                    x0_coefs[0] * x_prev + x0_coefs[1] * pred_xstart
                )
        elif fixed_point_iters:
            for _ in range(fixed_point_iters):
                _, eps = loop.denoise(x, i)
                x = eps_coefs[0] * x_prev + eps_coefs[1] * eps
        x_prev, eval_x, eval_i = x, x, i
    return x_prev
