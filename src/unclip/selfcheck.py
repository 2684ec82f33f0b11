"""Numerical self-check of every sampler against an exactly solvable diffusion.

Data x_0 ~ N(mu, diag(s^2)) in D dims. With x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, the
optimal denoiser is closed form, per dim:

    E[x_0 | x_t] = mu + sqrt(abar) s^2 / (abar s^2 + 1 - abar) * (x_t - sqrt(abar) mu),

so a sampler driven by it must return samples with mean mu and variance s^2; any error is the
sampler's own (discretisation) plus Monte Carlo noise. The probability-flow ODE is exactly
solvable too: (x_t - sqrt(abar) mu) / sqrt(abar s^2 + 1 - abar) is constant along it, so the
deterministic samplers are also compared path by path with the exact flow ("flow err").

Run it with ``unclip selfcheck``; :func:`run_selfcheck` is the library entry point.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unclip.diffusion import GaussianDiffusion, Prediction, Variance
from unclip.sampling import sample

ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class GaussianData:
    """A diagonal Gaussian data distribution with its exact denoiser.

    Attributes:
        mean: (D,) per-dim means mu.
        std: (D,) per-dim standard deviations s (> 0).
    """

    mean: tuple[float, ...] = (0.5, -0.8, 0.0, 1.2, -0.3, 0.7)
    std: tuple[float, ...] = (0.3, 1.0, 0.1, 0.6, 0.8, 0.05)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std must be non-empty and of equal length")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def _mu_s(self, like: Tensor) -> tuple[Tensor, Tensor]:
        kw = {"dtype": torch.float64, "device": like.device}
        return torch.tensor(self.mean, **kw), torch.tensor(self.std, **kw)

    def sample(
        self, num: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """(num, D) exact samples from the data distribution."""
        z = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        mu, s = self._mu_s(z)
        return (mu + s * z).to(dtype)

    def posterior_xstart(self, x_t: Tensor, abar: Tensor) -> tuple[Tensor, Tensor]:
        """E[x_0 | x_t] and Var[x_0 | x_t] (float64) for per-sample abar of shape (B, 1)."""
        mu, s = self._mu_s(x_t)
        x_t = x_t.to(torch.float64)
        denom = abar * s**2 + 1.0 - abar
        mean = mu + abar.sqrt() * s**2 / denom * (x_t - abar.sqrt() * mu)
        var = s**2 * (1.0 - abar) / denom
        return mean, var

    def denoiser(self, diffusion: GaussianDiffusion, *, learned_variance: bool | None = None) -> ModelFn:
        """The exact ``model_fn(x_t, t)`` in ``diffusion``'s parameterisation.

        Args:
            diffusion: the full chain; t are its ORIGINAL timesteps.
            learned_variance: append variance channels holding the exact reverse variance
                (default: when the diffusion learns its variance).

        Returns:
            model_fn returning (B, D), or (B, 2D) with variance channels.
        """
        learned = diffusion.learned_variance if learned_variance is None else learned_variance
        table = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float64)

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            abar = table[t.cpu()].to(x_t.device).unsqueeze(1)
            x0, var_x0 = self.posterior_xstart(x_t, abar)
            xt64 = x_t.to(torch.float64)
            eps = (xt64 - abar.sqrt() * x0) / (1.0 - abar).sqrt()
            out = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1.0 - abar).sqrt() * x0}[
                diffusion.prediction
            ]
            if learned:
                out = torch.cat([out, self._variance_values(diffusion, t, var_x0)], dim=1)
            return out.to(x_t.dtype)

        return model_fn

    @staticmethod
    def _variance_values(diffusion: GaussianDiffusion, t: Tensor, var_x0: Tensor) -> Tensor:
        # Var[x_{t-1} | x_t] = beta_tilde_t + coef1_t^2 Var[x_0 | x_t]; expressed as the
        # learned-range value v in [-1, 1] between log(beta_tilde_clipped) and log(beta).
        idx = t.cpu().numpy()

        def col(name: str) -> Tensor:
            return torch.from_numpy(getattr(diffusion, name)[idx].copy()).to(var_x0.device).unsqueeze(1)

        var = col("posterior_variance") + col("posterior_mean_coef1") ** 2 * var_x0
        lo, hi = col("posterior_log_variance_clipped"), col("log_betas")
        frac = (var.log() - lo) / (hi - lo)
        return (2.0 * frac - 1.0).clamp(-1.0, 1.0)

    def flow(self, x: Tensor, abar_from: float, abar_to: float) -> Tensor:
        """Exact probability-flow ODE map of x from noise level abar_from to abar_to."""
        mu, s = self._mu_s(x)
        x = x.to(torch.float64)
        u = (x - math.sqrt(abar_from) * mu) / (abar_from * s**2 + 1.0 - abar_from).sqrt()
        return math.sqrt(abar_to) * mu + (abar_to * s**2 + 1.0 - abar_to).sqrt() * u


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured sampler configuration.

    Attributes:
        label: row name, e.g. "ddim eta=1".
        sampler: sampler name for :func:`unclip.sampling.sample`.
        steps: the step count asked for.
        model_evals: number of model calls.
        mean_err: max over dims of |sample mean - mu|.
        var_err: max over dims of |sample var / s^2 - 1|.
        flow_err: deterministic samplers: RMS over samples and dims of (x - exact flow) / s.
        seconds: wall time of the sampling call.
    """

    label: str
    sampler: str
    steps: int
    model_evals: int
    mean_err: float
    var_err: float
    flow_err: float | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class SamplerSetting:
    """One sampler setting of the sweep.

    Attributes:
        label: row name.
        sampler: name for :func:`unclip.sampling.sample`.
        steps: step counts to sweep.
        options: extra keywords for ``sample`` (eta, sampler options).
        variance: the diffusion's variance type.
        deterministic: compare with the exact probability-flow map too.
        spec: how a count becomes a timestep spec ("{n}" is replaced), or "" for the
            sampler's own int spacing.
    """

    label: str
    sampler: str
    steps: tuple[int, ...]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    variance: Variance = "fixed_small"
    deterministic: bool = False
    spec: str = ""


_LONG = (10, 25, 50, 100, 250, 1000)
_SHORT = (5, 10, 15, 20, 30, 50, 100)
DEFAULT_SETTINGS: tuple[SamplerSetting, ...] = (
    SamplerSetting("ddpm", "ddpm", _LONG),
    SamplerSetting("ddpm learned-var", "ddpm", _LONG, variance="learned_range"),
    SamplerSetting("ddim", "ddim", (5, 10, 20, 50, 100, 250, 1000), deterministic=True),
    SamplerSetting("dpmpp_2m", "dpmpp_2m", _SHORT, deterministic=True),
    SamplerSetting("dpmpp_2m strided", "dpmpp_2m", _SHORT, deterministic=True, spec="{n}"),
    SamplerSetting("dpmpp_2m eta=1", "dpmpp_2m", (10, 20, 50, 100, 250), {"eta": 1.0}),
    SamplerSetting("dpmpp_3m", "dpmpp_3m", _SHORT, deterministic=True),
)


@dataclasses.dataclass(frozen=True)
class Check:
    """A pass/fail bound on one run: discretisation budget plus a Monte Carlo allowance.

    Attributes:
        label: the setting's label.
        steps: the step count.
        mean_budget: allowed mean error beyond 4 Monte Carlo standard errors.
        var_budget: allowed relative variance error beyond 4 Monte Carlo standard errors.
        flow_budget: allowed flow error (deterministic samplers), or None.
    """

    label: str
    steps: int
    mean_budget: float
    var_budget: float
    flow_budget: float | None = None


# Budgets are about 1.5-2x the discretisation errors measured on DEFAULT_DATA at N = 10,000
# (docs/diffusion.md), so a pass means "as accurate as when it was verified"; a Monte Carlo
# allowance of 4 standard errors is added to the mean and variance budgets.
DEFAULT_CHECKS: tuple[Check, ...] = (
    Check("ddpm", 1000, 0.01, 0.04),
    Check("ddpm learned-var", 1000, 0.01, 0.02),
    Check("ddim", 50, 0.01, 0.25, 0.1),
    Check("ddim", 1000, 0.01, 0.03, 0.006),
    Check("dpmpp_2m", 20, 0.01, 0.06, 0.04),
    Check("dpmpp_2m eta=1", 250, 0.01, 0.03),
    Check("dpmpp_3m", 50, 0.01, 0.02, 3e-4),
)
DEFAULT_DATA = GaussianData(std=(0.1, 0.25, 0.4, 0.6, 0.8, 1.0))


def measure(
    data: GaussianData,
    setting: SamplerSetting,
    steps: int,
    *,
    num_samples: int,
    seed: int,
    schedule: str = "cosine",
    prediction: Prediction = "eps",
    dtype: torch.dtype = torch.float32,
) -> tuple[Run, Tensor]:
    """Run one sampler setting on the exact denoiser and measure its errors.

    Returns:
        (the :class:`Run`, the (num_samples, D) samples).
    """
    diffusion = GaussianDiffusion.from_schedule(
        schedule, 1000, prediction=prediction, variance=setting.variance
    )
    spec: int | str = setting.spec.format(n=steps) if setting.spec else steps
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(num_samples, data.dim, generator=gen, dtype=dtype)
    calls = [0]
    denoise = data.denoiser(diffusion)
    kept: list[int] = []

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        calls[0] += 1
        kept.append(int(t[0]))
        return denoise(x_t, t)

    start = time.perf_counter()
    x0 = sample(
        model_fn,
        x_T,
        diffusion=diffusion,
        sampler=setting.sampler,
        steps=spec,
        generator=gen,
        dtype=dtype,
        **setting.options,
    )
    seconds = time.perf_counter() - start
    mu, s = data._mu_s(x0)
    x64 = x0.to(torch.float64)
    mean_err = float((x64.mean(0) - mu).abs().max())
    var_err = float((x64.var(0) / s**2 - 1.0).abs().max())
    flow_err = None
    if setting.deterministic:
        abar = diffusion.alphas_cumprod
        x_lo = data.flow(x_T, float(abar[kept[0]]), float(abar[kept[-1]]))
        ref, _ = data.posterior_xstart(x_lo, torch.tensor([[abar[kept[-1]]]], dtype=torch.float64))
        flow_err = float((((x64 - ref) / s) ** 2).mean().sqrt())
    run = Run(setting.label, setting.sampler, steps, calls[0], mean_err, var_err, flow_err, seconds)
    return run, x0


@dataclasses.dataclass(frozen=True)
class Report:
    """Result of :func:`run_selfcheck`.

    Attributes:
        runs: every measured run, in sweep order.
        failures: one line per failed check (empty when all pass).
        checked: number of checks evaluated.
        scatter: label -> (num_samples, 2) samples of dims 0 and 1, for the figure.
        data: the data distribution used.
        num_samples: samples per run.
    """

    runs: tuple[Run, ...]
    failures: tuple[str, ...]
    checked: int
    scatter: dict[str, np.ndarray]
    data: GaussianData
    num_samples: int

    @property
    def passed(self) -> bool:
        return not self.failures


class _single_thread:
    # The arrays here are small; on a busy 2-core machine torch's intra-op threads spin against
    # other processes and run ~10x slower than one thread.
    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


def run_selfcheck(
    num_samples: int = 10_000,
    seed: int = 0,
    *,
    data: GaussianData = DEFAULT_DATA,
    settings: Sequence[SamplerSetting] = DEFAULT_SETTINGS,
    checks: Sequence[Check] = DEFAULT_CHECKS,
    quick: bool = False,
    on_run: Callable[[Run], None] | None = None,
) -> Report:
    """Run every sampler setting on the exact Gaussian denoiser and evaluate the checks.

    Args:
        num_samples: samples per run (Monte Carlo noise scales as 1/sqrt of it).
        seed: seed of each run's generator.
        data: the Gaussian data distribution.
        settings: sampler settings to sweep.
        checks: pass/fail bounds on selected runs.
        quick: run only the step counts that ``checks`` look at.
        on_run: called after each run (e.g. to print progress).

    Returns:
        A :class:`Report`.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    if quick:
        wanted = {(c.label, c.steps) for c in checks}
        settings = [
            dataclasses.replace(st, steps=tuple(n for n in st.steps if (st.label, n) in wanted))
            for st in settings
        ]
        settings = [st for st in settings if st.steps]
    runs: list[Run] = []
    scatter = {"data": data.sample(num_samples, torch.Generator().manual_seed(seed + 1))[:, :2].numpy()}
    with _single_thread():
        for setting in settings:
            for steps in setting.steps:
                run, x0 = measure(data, setting, steps, num_samples=num_samples, seed=seed)
                runs.append(run)
                if (steps == 10 or quick) and setting.label in ("ddim", "dpmpp_2m", "ddpm"):
                    scatter[f"{setting.label} {steps} steps"] = x0[:, :2].double().numpy()
                if on_run is not None:
                    on_run(run)
    failures = []
    checked = 0
    s_max = max(data.std)
    mc_mean, mc_var = 4.0 * s_max / math.sqrt(num_samples), 4.0 * math.sqrt(2.0 / (num_samples - 1))
    by_key = {(r.label, r.steps): r for r in runs}
    for c in checks:
        run = by_key.get((c.label, c.steps))
        if run is None:
            continue
        checked += 1
        if run.mean_err > c.mean_budget + mc_mean:
            failures.append(
                f"{c.label} {c.steps} steps: mean err {run.mean_err:.4f} > {c.mean_budget + mc_mean:.4f}"
            )
        if run.var_err > c.var_budget + mc_var:
            failures.append(
                f"{c.label} {c.steps} steps: var err {run.var_err:.2%} > {c.var_budget + mc_var:.2%}"
            )
        if c.flow_budget is not None and run.flow_err is not None and run.flow_err > c.flow_budget:
            failures.append(f"{c.label} {c.steps} steps: flow err {run.flow_err:.2e} > {c.flow_budget:.2e}")
    return Report(tuple(runs), tuple(failures), checked, scatter, data, num_samples)


def format_table(runs: Sequence[Run]) -> str:
    """A plain-text table of runs."""
    lines = [
        f"{'sampler':<18} {'steps':>5} {'evals':>5} {'mean err':>9} {'var err':>8} {'flow err':>9} {'time s':>7}"
    ]
    for r in runs:
        flow = f"{r.flow_err:9.2e}" if r.flow_err is not None else f"{'-':>9}"
        lines.append(
            f"{r.label:<18} {r.steps!s:>5} {r.model_evals:>5} {r.mean_err:9.4f} {r.var_err:8.2%} {flow} {r.seconds:7.2f}"
        )
    return "\n".join(lines)


def plot_report(report: Report, path: str | Path) -> Path:
    """Write the self-check figure (errors vs model calls, and a 2-D scatter) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    labels = list(dict.fromkeys(r.label for r in report.runs))
    for label in labels:
        rows = [r for r in report.runs if r.label == label]
        evals = [r.model_evals for r in rows]
        axes[0].loglog(evals, [max(r.var_err, 1e-5) for r in rows], "o-", label=label, ms=3)
        if rows[0].flow_err is not None:
            axes[1].loglog(evals, [max(r.flow_err or 0.0, 1e-7) for r in rows], "o-", label=label, ms=3)
    floor = 4.0 * math.sqrt(2.0 / report.num_samples)
    axes[0].axhline(floor, color="gray", ls=":", lw=1, label="4 MC std errors")
    axes[0].set(xlabel="model calls", ylabel="max |var / s^2 - 1|", title="variance error (all samplers)")
    axes[1].set(
        xlabel="model calls", ylabel="RMS (x - exact flow) / s", title="error vs exact ODE (deterministic)"
    )
    for ax in axes[:2]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for name, pts in report.scatter.items():
        axes[2].scatter(pts[:2000, 0], pts[:2000, 1], s=2, alpha=0.4, label=name)
    axes[2].set(xlabel="dim 0", ylabel="dim 1", title="samples (dims 0, 1)")
    axes[2].legend(fontsize=7, markerscale=4)
    std = ", ".join(f"{s:g}" for s in report.data.std)
    fig.suptitle(
        f"unclip selfcheck: exact Gaussian denoiser, cosine T=1000, std ({std}), N={report.num_samples}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
