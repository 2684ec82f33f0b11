"""Gaussian diffusion: forward process, posterior, parameterisations and training losses.

Pure math, no learned weights, written once for every stage (prior on embeddings (B, D), decoder
and upsamplers on images (B, C, H, W)). Per-sample coefficients are broadcast over trailing dims.

Conventions (ADM / iDDPM vocabulary):
    - ``t`` is an integer index into *this* diffusion's arrays (0 .. num_timesteps - 1). For a
      respaced diffusion the model must be called with ``timestep_map[t]``, the ORIGINAL step;
      :meth:`GaussianDiffusion.model_timesteps` does the mapping.
    - x_t = sqrt(alphas_cumprod[t]) * x_start + sqrt(1 - alphas_cumprod[t]) * eps.
    - v = sqrt(abar) * eps - sqrt(1 - abar) * x_start (Salimans & Ho 2022, §4).
    - All coefficient arrays are float64; they are gathered per t and cast to the input's dtype
      only at use, so running the model under bf16 autocast never touches them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from unclip.diffusion.losses import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from unclip.diffusion.schedules import get_betas

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
_PREDICTIONS = ("eps", "x0", "v")
_VARIANCES = ("fixed_small", "fixed_large", "learned_range")


@dataclasses.dataclass(frozen=True)
class DynamicThreshold:
    """Imagen dynamic thresholding of x0 predictions (Saharia et al. 2022, §2.3).

    Per sample, s = max(1, quantile(|x0|, percentile)); x0 <- clamp(x0, -s, s) / s.

    Attributes:
        percentile: the quantile of |x0| used as the threshold, in (0, 1].
    """

    percentile: float = 0.995

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"dynamic threshold percentile must be in (0, 1], got {self.percentile}")


# None / "none": no clipping (embeddings); "static": clamp to [-1, 1] (images);
# "dynamic" or a DynamicThreshold: Imagen dynamic thresholding; a float r: clamp to [-r, r]
# (the range of diffusers' UnCLIPScheduler, used by converted Karlo priors).
Clip = None | Literal["none", "static", "dynamic"] | DynamicThreshold | float


def clip_xstart(x: Tensor, clip: Clip) -> Tensor:
    """Apply an x0 clipping mode.

    Args:
        x: (B, ...) predicted x_start.
        clip: None or "none", "static", "dynamic", a :class:`DynamicThreshold`, or a range r > 0.

    Returns:
        Tensor of the same shape and dtype.
    """
    if clip is None or clip == "none":
        return x
    if clip == "static":
        return x.clamp(-1.0, 1.0)
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        if not clip > 0:
            raise ValueError(f"a clip range must be > 0, got {clip}")
        return x.clamp(-float(clip), float(clip))
    if clip == "dynamic":
        clip = DynamicThreshold()
    if isinstance(clip, DynamicThreshold):
        flat = x.reshape(x.shape[0], -1).abs().float()
        s = torch.quantile(flat, clip.percentile, dim=1).clamp(min=1.0).to(x.dtype)
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.maximum(torch.minimum(x, s), -s) / s
    raise ValueError(
        f"clip must be None, 'none', 'static', 'dynamic', a DynamicThreshold or a range > 0, got {clip!r}"
    )


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all dims but the batch dim: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


class MeanVariance(NamedTuple):
    """Output of :meth:`GaussianDiffusion.p_mean_variance`; all shaped like x_t."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_xstart: Tensor
    eps: Tensor


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with a given beta schedule.

    Args:
        betas: (T,) noise schedule, each in (0, 1].
        prediction: what the model predicts: "eps", "x0" or "v".
        variance: reverse-process variance: "fixed_small" (posterior beta_tilde), "fixed_large"
            (beta), or "learned_range" (iDDPM interpolation; the model outputs twice the channels
            along dim 1).
        timestep_map: (T,) original timestep of each step of this diffusion; identity when None.
            Set by :func:`unclip.diffusion.respace.respace`.
        alphas_cumprod: (T,) the exact cumulative alphas when the betas were derived from them
            (respacing): 1 - (1 - ratio) loses the low bits of tiny ratios, so they are kept as
            given instead of being recomputed from the betas.
        clamp_variance: clamp ``learned_range`` variance values to [-1, 1] (default). False
            interpolates with the raw values, as diffusers' UnCLIPScheduler does; converted
            Karlo decoders use it to reproduce the reference.
    """

    def __init__(
        self,
        betas: np.ndarray | Sequence[float],
        prediction: Prediction = "eps",
        variance: Variance = "fixed_small",
        timestep_map: np.ndarray | Sequence[int] | None = None,
        *,
        alphas_cumprod: np.ndarray | None = None,
        clamp_variance: bool = True,
    ) -> None:
        if prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be one of {list(_PREDICTIONS)}, got {prediction!r}")
        if variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {list(_VARIANCES)}, got {variance!r}")
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError("betas must lie in (0, 1]")
        n = len(betas)
        if timestep_map is None:
            timestep_map = np.arange(n, dtype=np.int64)
        timestep_map = np.array(timestep_map, dtype=np.int64)
        if timestep_map.shape != (n,) or np.any(np.diff(timestep_map) <= 0) or timestep_map[0] < 0:
            raise ValueError("timestep_map must hold len(betas) strictly increasing non-negative ints")
        self.prediction: Prediction = prediction
        self.variance: Variance = variance
        self.clamp_variance = bool(clamp_variance)

        if alphas_cumprod is None:
            alphas = 1.0 - betas
            abar = np.cumprod(alphas)
            abar_prev = np.append(1.0, abar[:-1])
        else:
            abar = np.array(alphas_cumprod, dtype=np.float64)
            abar_prev = np.append(1.0, abar[:-1])
            alphas = abar / abar_prev
            if abar.shape != betas.shape or not np.allclose(alphas, 1.0 - betas, rtol=1e-6, atol=1e-12):
                raise ValueError("alphas_cumprod does not match betas")
        abar_next = np.append(abar[1:], 0.0)
        # Posterior q(x_{t-1} | x_t, x_0) [DDPM eqs. 6-7].
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # post_var[0] is 0 (x_0 is known exactly), so its log is replaced by the next value, as
        # in iDDPM; the same stand-in serves fixed_large at t = 0. A one-step chain has no
        # second value: its only step is the final denoise, so beta is a harmless stand-in.
        first = post_var[1] if n > 1 else betas[0]
        arrays = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "alphas_cumprod_next": abar_next,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.append(first, post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            "log_betas": np.log(betas),
            "fixed_large_variance": np.append(first, betas[1:]),
            "snr": abar / (1.0 - abar),
        }
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, dtype=np.float64)
            arr.flags.writeable = False  # a schedule is data: never edited in place
            setattr(self, name, arr)
        timestep_map.flags.writeable = False
        self.timestep_map: np.ndarray = timestep_map
        self._names = tuple(arrays)
        self._cache: dict[tuple[str, str], Tensor] = {}

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_schedule(
        cls,
        schedule: str,
        num_timesteps: int = 1000,
        prediction: Prediction = "eps",
        variance: Variance = "fixed_small",
    ) -> GaussianDiffusion:
        """Build from a named schedule (see :func:`unclip.diffusion.schedules.list_schedules`)."""
        return cls(get_betas(schedule, num_timesteps), prediction=prediction, variance=variance)

    @property
    def num_timesteps(self) -> int:
        """Number of steps of this (possibly respaced) chain."""
        return len(self.betas)

    @property
    def learned_variance(self) -> bool:
        """True when the model also outputs variance channels (twice the channels on dim 1)."""
        return self.variance == "learned_range"

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, prediction={self.prediction!r}, "
            f"variance={self.variance!r}, original_steps={int(self.timestep_map[-1]) + 1}+)"
        )

    # ------------------------------------------------------------------ coefficient access

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, str(device))
        if key not in self._cache:
            # float64 everywhere it exists; MPS has no float64, so it gets float32 tables.
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._cache[key] = torch.tensor(getattr(self, name), dtype=dtype, device=device)
        return self._cache[key]

    def _extract(self, name: str, t: Tensor | int, like: Tensor) -> Tensor:
        """Gather coefficient ``name`` at t and shape it to broadcast against ``like``.

        Args:
            name: a coefficient array of this diffusion.
            t: (B,) LongTensor or a Python int (the same step for every sample).
            like: (B, ...) tensor whose dtype and device the result takes.

        Returns:
            (B, 1, ..., 1) (or (1, ..., 1) for an int t) tensor of like's dtype.
        """
        if isinstance(t, Tensor):
            if t.ndim != 1:
                raise ValueError(f"t must be a (B,) tensor of step indices, got shape {tuple(t.shape)}")
            vals = self._table(name, t.device)[t.long()]
        else:
            vals = self._table(name, torch.device("cpu"))[int(t)].reshape(1)
        return vals.to(dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: Tensor | int, batch: int | None = None, device: Any = None) -> Tensor:
        """ORIGINAL timesteps to call the model with, as a (B,) LongTensor.

        Args:
            t: (B,) step indices of this diffusion, or an int (then ``batch`` is required).
            batch: batch size when ``t`` is an int.
            device: device of the result for an int ``t``.
        """
        if isinstance(t, Tensor):
            table = torch.from_numpy(self.timestep_map.copy()).to(t.device)
            return table[t.long()]
        if batch is None:
            raise ValueError("batch is required when t is an int")
        return torch.full((batch,), int(self.timestep_map[int(t)]), dtype=torch.long, device=device)

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: Any = None
    ) -> Tensor:
        """Uniform random step indices for training: (B,) LongTensor in [0, num_timesteps)."""
        if device is None and generator is not None:
            device = generator.device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    # ------------------------------------------------------------------ forward process

    def q_mean_variance(self, x_start: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log variance of q(x_t | x_0), each broadcast to x_start."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        var = 1.0 - self._extract("alphas_cumprod", t, x_start)
        return mean, var.expand_as(x_start), torch.log(var).expand_as(x_start)

    def q_sample(self, x_start: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) [DDPM eq. 4].

        Args:
            x_start: (B, ...) clean data.
            t: (B,) step indices (or an int).
            noise: (B, ...) standard normal noise; drawn with the global RNG when None.

        Returns:
            (B, ...) x_t.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: Tensor, x_t: Tensor, t: Tensor | int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) [DDPM eqs. 6-7].

        Returns:
            (mean, variance, log_variance_clipped), each shaped like x_t.
        """
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        var = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_var = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ parameterisations

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor | int, pred_xstart: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_v(self, x_start: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (the v-prediction target)."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * eps
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start
        )

    def predict_xstart_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
        return (
            self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._extract("sqrt_alphas_cumprod", t, x_t) * v
        )

    def target(self, x_start: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """The regression target of this parameterisation (eps, x_0 or v)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x_start
        return self.predict_v(x_start, noise, t)

    def split_output(self, x_t: Tensor, output: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a model output into (prediction, variance values or None).

        Args:
            x_t: (B, C, ...) the model input.
            output: (B, C, ...), or (B, 2C, ...) for learned variance. Cast to x_t's dtype.
        """
        output = output.to(x_t.dtype)
        channels = x_t.shape[1] if x_t.ndim > 1 else 1
        if self.learned_variance:
            expected = (x_t.shape[0], 2 * channels, *x_t.shape[2:])
            if tuple(output.shape) != expected:
                raise ValueError(
                    f"learned-variance model output must have shape {expected} (prediction and variance "
                    f"channels along dim 1), got {tuple(output.shape)}"
                )
            pred, var_values = output.split(channels, dim=1)
            return pred, var_values
        if output.shape != x_t.shape:
            raise ValueError(
                f"model output shape {tuple(output.shape)} != x_t shape {tuple(x_t.shape)} "
                f"(variance={self.variance!r})"
            )
        return output, None

    def model_output_to(
        self, x_t: Tensor, t: Tensor | int, output: Tensor, clip: Clip = None
    ) -> tuple[Tensor, Tensor]:
        """Convert a model output of any parameterisation to (pred_xstart, eps).

        This is the one conversion every sampler and loss uses. Variance channels, if any, are
        dropped. When ``clip`` changes x_0, eps is recomputed from the clipped x_0 so the pair
        stays consistent with x_t (as ADM's DDIM does).

        Args:
            x_t: (B, ...) noisy input.
            t: (B,) step indices of this diffusion, or an int.
            output: raw model output (cast to x_t's dtype).
            clip: x_0 clipping mode, see :func:`clip_xstart`.

        Returns:
            (pred_xstart, eps), each shaped like x_t.
        """
        pred, _ = self.split_output(x_t, output)
        if self.prediction == "eps":
            eps = pred
            pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        elif self.prediction == "x0":
            pred_xstart = pred
            eps = None
        else:
            pred_xstart = self.predict_xstart_from_v(x_t, t, pred)
            eps = self.predict_eps_from_v(x_t, t, pred)
        if clip is not None and clip != "none":
            pred_xstart = clip_xstart(pred_xstart, clip)
            eps = None
        if eps is None:
            eps = self.predict_eps_from_xstart(x_t, t, pred_xstart)
        return pred_xstart, eps

    # ------------------------------------------------------------------ reverse process

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor | int, clip: Clip = None
    ) -> MeanVariance:
        """Mean and variance of p(x_{t-1} | x_t) from a model output.

        For ``learned_range`` the second half of the channels holds v in [-1, 1]; the log variance
        is frac * log(beta) + (1 - frac) * log(beta_tilde_clipped), frac = (v + 1) / 2 [iDDPM §3.1,
        eq. 15]. v is clamped to [-1, 1] first, so any finite or infinite raw value gives a log
        variance between the two finite bounds: no NaN or inf (the main NaN source in peers).
        A NaN produced by the network itself is passed through so it is not hidden.

        Args:
            model_output: (B, C, ...) or (B, 2C, ...) raw model output.
            x_t: (B, C, ...) noisy input.
            t: (B,) step indices of this diffusion, or an int.
            clip: x_0 clipping mode.

        Returns:
            :class:`MeanVariance` with mean, variance, log_variance, pred_xstart and eps.
        """
        _, var_values = self.split_output(x_t, model_output)
        if self.variance == "learned_range":
            assert var_values is not None
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            max_log = self._extract("log_betas", t, x_t)
            if self.clamp_variance:
                var_values = var_values.clamp(-1.0, 1.0)
            frac = (var_values + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = torch.exp(log_var)
        else:
            name = "posterior_variance" if self.variance == "fixed_small" else "fixed_large_variance"
            var = self._extract(name, t, x_t).expand_as(x_t)
            if self.variance == "fixed_small":
                log_var = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
            else:
                log_var = torch.log(var)
        pred_xstart, eps = self.model_output_to(x_t, t, model_output, clip=clip)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return MeanVariance(mean, var, log_var, pred_xstart, eps)

    # ------------------------------------------------------------------ training

    def training_losses(
        self,
        model_fn: Callable[..., Tensor],
        x_start: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        loss_weighting: Literal["none", "min_snr"] = "none",
        min_snr_gamma: float = 5.0,
        vlb_lambda: float = 0.001,
        decoder_nll: Literal["discretized", "gaussian"] = "discretized",
    ) -> dict[str, Tensor]:
        """Per-sample training losses for one batch.

        The MSE is taken on this diffusion's target (eps, x_0 or v). With learned variance the
        iDDPM hybrid objective L_simple + lambda * L_vlb is used [iDDPM §3.1]: L_vlb = T * E_t[L_t],
        so the per-sample term is vlb_lambda * T * L_t (= ADM's ``vb * T / 1000`` at lambda = 0.001),
        with a stop-gradient on the predicted mean so L_vlb only trains the variance.

        Args:
            model_fn: called as ``model_fn(x_t, timesteps, **model_kwargs)`` with ORIGINAL
                timesteps (B,); returns (B, C, ...) or (B, 2C, ...).
            x_start: (B, C, ...) clean data (images in [-1, 1] or scaled embeddings).
            t: (B,) step indices of this diffusion, e.g. from :meth:`sample_timesteps`.
            noise: (B, C, ...) noise; drawn with the global RNG when None.
            model_kwargs: extra keyword arguments for the model (conditioning).
            loss_weighting: "none", or "min_snr": min-SNR-gamma weighting (Hang et al. 2023),
                expressed for each target so every parameterisation weights the implied x_0
                error by min(SNR, gamma).
            min_snr_gamma: gamma of the min-SNR weighting.
            vlb_lambda: lambda of the hybrid loss (learned variance only).
            decoder_nll: L_0 of the VLB: "discretized" (8-bit images in [-1, 1], iDDPM) or
                "gaussian" (continuous data such as embeddings).

        Returns:
            dict with "loss" (B,), "mse" (B,) (unweighted MSE on the target) and, for learned
            variance, "vb" (B,) (the weighted VLB term already included in "loss").
        """
        if loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"loss_weighting must be 'none' or 'min_snr', got {loss_weighting!r}")
        if noise is None:
            noise = torch.randn_like(x_start)
        model_kwargs = model_kwargs or {}
        x_t = self.q_sample(x_start, t, noise)
        output = model_fn(x_t, self.model_timesteps(t), **model_kwargs)
        pred, var_values = self.split_output(x_t, output)
        target = self.target(x_start, noise, t)
        mse = mean_flat((target - pred) ** 2)
        terms: dict[str, Tensor] = {"mse": mse}
        loss = mse
        if loss_weighting == "min_snr":
            loss = loss * self._min_snr_weight(t, min_snr_gamma, mse)
        if var_values is not None:
            # Stop-gradient on the mean: L_vlb must not pull the mean away from L_simple.
            frozen = torch.cat([pred.detach(), var_values], dim=1)
            vb = self._vb_terms_bpd(frozen, x_start, x_t, t, decoder_nll) * (vlb_lambda * self.num_timesteps)
            terms["vb"] = vb
            loss = loss + vb
        terms["loss"] = loss
        return terms

    def _min_snr_weight(self, t: Tensor, gamma: float, like: Tensor) -> Tensor:
        # Hang et al. 2023: weight the x_0 MSE by min(SNR, gamma). The eps error is sqrt(SNR)
        # times the x_0 error and the v error sqrt(SNR + 1) times it, hence the divisions.
        snr = self._table("snr", t.device)[t.long()]
        w = snr.clamp(max=gamma)
        if self.prediction == "eps":
            w = w / snr
        elif self.prediction == "v":
            w = w / (snr + 1.0)
        return w.to(like.dtype)

    def _vb_terms_bpd(
        self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor, decoder_nll: str
    ) -> Tensor:
        """L_t in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, -log p(x_0|x_1) at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / math.log(2.0)
        if decoder_nll == "discretized":
            ll = discretized_gaussian_log_likelihood(x_start, out.mean, 0.5 * out.log_variance)
        elif decoder_nll == "gaussian":
            ll = gaussian_log_likelihood(x_start, out.mean, 0.5 * out.log_variance)
        else:
            raise ValueError(f"decoder_nll must be 'discretized' or 'gaussian', got {decoder_nll!r}")
        nll = -mean_flat(ll) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)
