"""Strided sampling: run a trained T-step chain on a subset of its timesteps [iDDPM §4].

A respaced chain keeps the cumulative alphas of the kept steps and recomputes its betas from them,
beta_i = 1 - abar_{k_i} / abar_{k_{i-1}}, so its forward marginals q(x_t | x_0) are exactly the
base chain's at the kept steps. ``timestep_map`` remembers the original step of each respaced
index: the model is always called with ORIGINAL timesteps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from unclip.diffusion.gaussian import GaussianDiffusion


def _strided(size: int, count: int) -> list[int]:
    # Evenly spaced positions in range(size) including both ends (iDDPM's rounding rule).
    if count == 1:
        return [size - 1]
    stride = (size - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


def space_timesteps(
    num_timesteps: int,
    spec: int | str | Sequence[int],
    *,
    alphas_cumprod: np.ndarray | None = None,
) -> list[int]:
    """Choose which of ``num_timesteps`` steps to keep.

    Args:
        num_timesteps: T of the chain being respaced.
        spec: one of
            - an int N (or "N"): N evenly strided steps, always including the first (0) and the
              last (T - 1) step; N = 1 keeps only T - 1;
            - "ddimN": ADM's DDIM stride: range(0, T, stride) with exactly N elements;
            - "a,b,c,...": GLIDE's sections: T is cut into equal segments (the first ones one
              step longer when T does not divide) and each takes that many strided steps, e.g.
              "10,10,3,2,2" [GLIDE App. B.2];
            - "logsnrN": N steps uniform in log-SNR lambda = log(sqrt(abar / (1 - abar))) between
              the first and last step (needs ``alphas_cumprod``); steps that round to the same
              integer are merged, so fewer than N may come back;
            - a sequence of step indices, returned sorted.
        alphas_cumprod: (T,) of the chain, only for "logsnrN".

    Returns:
        Sorted list of distinct kept step indices in [0, T).

    Raises:
        ValueError: a malformed spec or more steps than the chain has.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if isinstance(spec, bool):
        raise ValueError(f"bad timestep spec {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return _space_count(num_timesteps, int(spec))
    if isinstance(spec, str):
        s = spec.strip().lower()
        if re.fullmatch(r"\d+", s):
            return _space_count(num_timesteps, int(s))
        if m := re.fullmatch(r"ddim(\d+)", s):
            return _space_ddim(num_timesteps, int(m.group(1)))
        if m := re.fullmatch(r"logsnr(\d+)", s):
            if alphas_cumprod is None:
                raise ValueError("a 'logsnrN' spec needs the chain's alphas_cumprod")
            return _space_logsnr(np.asarray(alphas_cumprod, dtype=np.float64), int(m.group(1)))
        if re.fullmatch(r"\d+(,\d+)+", s.replace(" ", "")):
            return _space_sections(num_timesteps, [int(c) for c in s.replace(" ", "").split(",")])
        raise ValueError(
            f"bad timestep spec {spec!r}: expected a count like 50, 'ddim50', 'logsnr20' or sections like '10,10,3,2,2'"
        )
    if isinstance(spec, Iterable):
        steps = sorted({int(s) for s in spec})
        if not steps or steps[0] < 0 or steps[-1] >= num_timesteps:
            raise ValueError(f"timesteps must be a non-empty set of ints in [0, {num_timesteps})")
        return steps
    raise ValueError(f"bad timestep spec {spec!r}")


def _space_count(num_timesteps: int, count: int) -> list[int]:
    if not 1 <= count <= num_timesteps:
        raise ValueError(
            f"cannot take {count} steps from a {num_timesteps}-step chain (need 1..{num_timesteps})"
        )
    return _strided(num_timesteps, count)


def _space_ddim(num_timesteps: int, count: int) -> list[int]:
    # ADM's rule: the smallest integer stride whose range(0, T, stride) has exactly `count` steps.
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"cannot take exactly {count} steps with an integer stride from {num_timesteps} steps")


def _space_sections(num_timesteps: int, counts: list[int]) -> list[int]:
    n = len(counts)
    if n > num_timesteps:
        raise ValueError(f"{n} sections do not fit in {num_timesteps} steps")
    base, extra = divmod(num_timesteps, n)
    steps: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"section {i} has {size} steps, cannot take {count}")
        if count > 0:
            # As in iDDPM: a section keeps both its ends, or only its first step if it keeps one.
            taken = [0] if count == 1 else _strided(size, count)
            steps.extend(start + x for x in taken)
        start += size
    if not steps:
        raise ValueError("sections must keep at least one step")
    return sorted(set(steps))


def _space_logsnr(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    n = len(alphas_cumprod)
    if not 1 <= count <= n:
        raise ValueError(f"cannot take {count} steps from a {n}-step chain (need 1..{n})")
    lam = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))  # decreasing in t
    if count == 1:
        return [n - 1]
    t_axis = np.arange(n, dtype=np.float64)[::-1]

    def grid(m: int) -> list[int]:
        # lambda is monotone in t, so the step nearest each target is found by interpolation.
        t_float = np.interp(np.linspace(lam[-1], lam[0], m), lam[::-1], t_axis)
        return sorted({round(float(x)) for x in t_float} | {0, n - 1})

    # Where lambda moves fast (near t = T - 1 for the cosine schedule) several targets round to
    # the same step. Refine the lambda grid until `count` distinct steps remain, so the caller
    # gets the model calls it asked for, spent where the integer grid can resolve them.
    m = count
    steps = grid(m)
    while len(steps) < count:
        m += 1
        steps = grid(m)
    # A refinement can add two steps at once; drop the extra ones just below T - 1, where
    # the posterior mean barely moves.
    while len(steps) > count:
        del steps[-2]
    return steps


def respace(diffusion: GaussianDiffusion, use_timesteps: Iterable[int]) -> GaussianDiffusion:
    """A chain over a subset of ``diffusion``'s steps, with the same prediction and variance type.

    Args:
        diffusion: the chain to respace (itself possibly respaced: maps compose).
        use_timesteps: indices of ``diffusion``'s steps to keep.

    Returns:
        A :class:`GaussianDiffusion` whose ``alphas_cumprod`` equal the kept ones and whose
        ``timestep_map`` maps each new index to the ORIGINAL timestep.
    """
    keep = sorted({int(t) for t in use_timesteps})
    n = diffusion.num_timesteps
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"use_timesteps must be a non-empty subset of range({n})")
    if len(keep) == n:
        return diffusion
    abar = diffusion.alphas_cumprod[keep]
    # [iDDPM §4]: betas from ratios of kept cumulative alphas, so q(x_t | x_0) is unchanged.
    prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / prev
    if not math.isfinite(float(betas.sum())) or np.any(betas <= 0):
        raise ValueError("respaced betas must be positive: alphas_cumprod must be strictly decreasing")
    return GaussianDiffusion(
        betas,
        prediction=diffusion.prediction,
        variance=diffusion.variance,
        timestep_map=diffusion.timestep_map[keep],
        alphas_cumprod=abar,
        clamp_variance=diffusion.clamp_variance,
    )
