"""Named beta schedules for the forward (noising) process.

A released named schedule never changes: checkpoints record a schedule by name, so changing the
numbers behind a name would silently change every model trained with it. A new variant (another
offset, another clipping bound, another scaling) gets a new name and a new entry in
``_SCHEDULES``; the existing entries stay bit-for-bit as they are.

Schedules are computed in float64 numpy and returned as such; callers cast at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous cumulative-alpha function into betas.

    beta_t = 1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), clipped to at most ``max_beta``
    [iDDPM §3.2]. The clip stops the last step from being a pure-noise step (beta = 1), which
    would make the posterior singular.

    Args:
        num_timesteps: T, the number of discrete steps.
        alpha_bar: maps a time in [0, 1] to the cumulative product of (1 - beta) up to it.
        max_beta: upper bound on each beta.

    Returns:
        (T,) float64 betas.
    """
    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.asarray(betas, dtype=np.float64)


def _cosine(num_timesteps: int) -> np.ndarray:
    # iDDPM eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2), s = 0.008.
    # The small offset s keeps beta_0 from being vanishingly small near t = 0 (iDDPM §3.2).
    # Dividing by f(0) cancels inside the ratio, so f itself is enough here.
    s = 0.008

    def f(t: float) -> float:
        return math.cos((t + s) / (1.0 + s) * math.pi / 2.0) ** 2

    return betas_for_alpha_bar(num_timesteps, f, max_beta=0.999)


def _linear(num_timesteps: int) -> np.ndarray:
    # DDPM's 1e-4 .. 0.02 at T = 1000, scaled by 1000/T so that other T keep roughly the same
    # total noise (the guided-diffusion / GLIDE convention, used by unCLIP's 256->1024 stage).
    scale = 1000.0 / num_timesteps
    beta_start, beta_end = scale * 1e-4, scale * 0.02
    if beta_end >= 1.0:
        raise ValueError(
            f"the linear schedule needs num_timesteps > 20 (beta_end = 0.02 * 1000 / T = {beta_end:g} >= 1)"
        )
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


# Released schedules: never edit an entry, add a new name instead (see the module docstring).
_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "cosine": _cosine,
    "linear": _linear,
}


def list_schedules() -> list[str]:
    """Names accepted by :func:`get_betas`, sorted."""
    return sorted(_SCHEDULES)


def get_betas(name: str, num_timesteps: int) -> np.ndarray:
    """The beta schedule ``name`` discretised into ``num_timesteps`` steps.

    Args:
        name: one of :func:`list_schedules` ("cosine": iDDPM, s = 0.008, beta <= 0.999;
            "linear": 1e-4 * (1000/T) .. 0.02 * (1000/T)).
        num_timesteps: T, a positive integer.

    Returns:
        (T,) float64 array of betas in (0, 1).

    Raises:
        ValueError: unknown name or a bad number of steps.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; known schedules: {', '.join(list_schedules())}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)):
        raise ValueError(f"num_timesteps must be an integer, got {num_timesteps!r}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    betas = _SCHEDULES[name](int(num_timesteps))
    assert betas.shape == (num_timesteps,) and np.all(betas > 0) and np.all(betas < 1)
    return betas
