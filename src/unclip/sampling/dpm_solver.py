"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++", arXiv 2211.01095).

Both solvers integrate the probability-flow ODE in the log-SNR variable
lambda = log(alpha / sigma) (alpha = sqrt(abar), sigma = sqrt(1 - abar)) with the data
(x_0) prediction, which the paper finds stable under guidance and thresholding. Only
the chain's own (integer) timesteps are evaluated, so they work with any discrete-time model.

The exact solution from step s to step t (lambda_t > lambda_s, h = lambda_t - lambda_s) is
    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda,
and the solvers replace x0(lambda) by its Taylor polynomial around lambda_s, estimated from the
previous steps' x0 predictions (multistep: one model call per step).

The last step returns the x_0 prediction at the smallest kept timestep (a first-order step to
sigma = 0). ``lower_order_final`` also drops the order of the steps into the two smallest kept
timesteps, which the paper recommends for < 15 steps; see docs/diffusion.md for measurements.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from unclip.sampling.samplers import SamplerLoop


def _phi(h: float) -> tuple[float, float, float]:
    """The exponential-integrator weights for orders 0, 1 and 2.

    With u the offset from lambda_s, integral_0^h e^(u - h) u^k / k! du equals
    phi0 = 1 - e^-h, phi1 = h - 1 + e^-h and phi2 = h^2/2 - h + 1 - e^-h.
    expm1 keeps them accurate for small h, where they cancel.
    """
    em1 = math.expm1(-h)  # e^-h - 1
    phi0 = -em1
    phi1 = h + em1
    # phi2 = h^2/2 - h - em1; for small h it is h^3/6 - h^4/24 + ..., so use the series there.
    phi2 = h**3 / 6.0 - h**4 / 24.0 + h**5 / 120.0 if h < 1e-2 else h * h / 2.0 - h - em1
    return phi0, phi1, phi2


def dpmpp_2m(loop: SamplerLoop, x: Tensor, *, eta: float = 0.0, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) [Lu et al. 2022, Alg. 2]; eta > 0 gives the SDE-DPM-Solver++(2M) variant.

    Second-order multistep: the x0 slope is the backward difference of the last two x0
    predictions, D = x0_i + (x0_i - x0_prev) / (2r), r = h_prev / h.

    Args:
        loop: the sampler loop over the respaced chain.
        x: (B, ...) x_T.
        eta: 0 for the ODE solver; 1 for the SDE solver of the paper's App. (noise with the
            reverse-SDE's variance); values in between interpolate.
        lower_order_final: take a first-order step into the smallest kept timestep.
    """
    alpha, sigma, lam = loop.alpha, loop.sigma, loop.lam
    prev_x0: Tensor | None = None
    prev_lam = 0.0
    for step, i in enumerate(loop.indices()):
        x0, _ = loop.denoise(x, i)
        loop.report(step, i, x, x0)
        if i == 0:
            return x0
        n = i - 1
        h = lam[n] - lam[i]
        d = x0
        if prev_x0 is not None and not (lower_order_final and n == 0):
            r = (lam[i] - prev_lam) / h
            d = x0 + (x0 - prev_x0) * (0.5 / r)
        if eta == 0:
            x = (sigma[n] / sigma[i]) * x + (alpha[n] * -math.expm1(-h)) * d
        else:
            # SDE version: x decays by e^-(eta h) and the missing variance is replaced by fresh
            # noise, so every marginal stays that of the reverse SDE (k-diffusion's eta form).
            x = (sigma[n] / sigma[i] * math.exp(-eta * h)) * x + (alpha[n] * -math.expm1(-(1 + eta) * h)) * d
            x = x + (sigma[n] * math.sqrt(-math.expm1(-2.0 * eta * h))) * loop.noise_like(x)
        prev_x0, prev_lam = x0, lam[i]
    raise AssertionError("unreachable")


def dpmpp_3m(loop: SamplerLoop, x: Tensor, *, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(3M): third-order multistep (quadratic x0 extrapolation from three steps).

    With g(lambda) the x0 prediction, the first and second divided differences of the last three
    predictions give h g' (``d1``) and h^2 g'' / 2 (``d2``) at lambda_i; the update integrates the
    quadratic Taylor polynomial exactly: alpha_t (phi0 g + phi1 g' + phi2 g''). The first two
    steps use orders 1 and 2.

    Args:
        loop: the sampler loop over the respaced chain.
        x: (B, ...) x_T.
        lower_order_final: use orders 1 and 2 for the steps into the two smallest kept timesteps.
    """
    alpha, sigma, lam = loop.alpha, loop.sigma, loop.lam
    hist: list[tuple[Tensor, float]] = []  # (x0, lambda) of previous steps, newest first
    for step, i in enumerate(loop.indices()):
        x0, _ = loop.denoise(x, i)
        loop.report(step, i, x, x0)
        if i == 0:
            return x0
        n = i - 1
        h = lam[n] - lam[i]
        phi0, phi1, phi2 = _phi(h)
        order = min(len(hist) + 1, 3)
        if lower_order_final:
            order = min(order, n + 1)  # n = 0: first order, n = 1: second order
        update = phi0 * x0
        if order >= 2:
            x1, l1 = hist[0]
            h0 = lam[i] - l1
            g1 = (x0 - x1) / h0  # first divided difference ~ g' - h0 g'' / 2
            if order == 2:
                update = update + phi1 * g1
            else:
                x2, l2 = hist[1]
                h1 = l1 - l2
                g1_prev = (x1 - x2) / h1
                g2 = (g1 - g1_prev) / (h0 + h1)  # second divided difference ~ g'' / 2
                slope = g1 + h0 * g2  # g' at lambda_i, to second order
                update = update + phi1 * slope + (2.0 * phi2) * g2
        x = (sigma[n] / sigma[i]) * x + alpha[n] * update
        hist = [(x0, lam[i]), *hist[:1]]
    raise AssertionError("unreachable")
