"""Classifier-free guidance, the only implementation in the package [GLIDE §2.3; unCLIP §2.1, §2.2].

out = uncond + s * (cond - uncond), applied to the raw model output. The map from a model
output to x_0, eps or v is affine with the same x_t for both branches, so guiding the raw output
is the same as guiding eps (GLIDE), x_0 (the unCLIP prior) or v.

Both branches run in ONE batched forward per step: x_t and t are duplicated and every
conditioning keyword is concatenated along dim 0 (cond first). With learned variance only the
first ``prediction_channels`` channels are guided; the variance channels come from the
conditional branch, as GLIDE and Karlo do. A negative prompt is simply the negative
conditioning passed as ``uncond``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

GuidanceScale = float | Sequence[float] | Tensor


def _concat(key: str, a: Any, b: Any, batch: int) -> Any:
    """Concatenate one conditioning value of the cond and uncond branches along dim 0."""
    if a is None and b is None:
        return None
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape[0] != batch or b.shape[0] != batch:
            raise ValueError(
                f"conditioning {key!r}: cond has batch {a.shape[0]} and uncond {b.shape[0]}, x_t has {batch}"
            )
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"conditioning {key!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ after dim 0"
            )
        return torch.cat([a, b.to(device=a.device, dtype=a.dtype)], dim=0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != batch or len(b) != batch:
            raise ValueError(f"conditioning {key!r}: lists must have one entry per sample ({batch})")
        return [*a, *b]
    if isinstance(a, Tensor) or isinstance(b, Tensor) or a is None or b is None:
        raise ValueError(
            f"conditioning {key!r}: cond is {type(a).__name__} and uncond is {type(b).__name__}; "
            "both must be tensors, both lists, both None, or equal plain values"
        )
    if a != b:
        raise ValueError(f"conditioning {key!r}: non-tensor values differ between branches ({a!r} vs {b!r})")
    return a


def _scale_tensor(scale: GuidanceScale, batch: int, like: Tensor) -> Tensor:
    s = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(
            f"guidance_scale must be a number or have one value per sample ({batch}), got shape {tuple(s.shape)}"
        )
    return s.reshape(batch, *([1] * (like.ndim - 1)))


def _all_ones(scale: GuidanceScale) -> bool:
    s = torch.as_tensor(scale, dtype=torch.float64)
    return bool(torch.all(s == 1.0))


def guided_model_fn(
    model: Callable[..., Tensor],
    *,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    guidance_scale: GuidanceScale,
    prediction_channels: int | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap ``model(x_t, t, **kwargs)`` into a guided ``model_fn(x_t, t)`` for the samplers.

    Args:
        model: the network, called as ``model(x_t, t, **kwargs)`` with x_t (2B, ...) and t (2B,).
        cond: conditioning keywords of the conditional branch; tensors have batch B on dim 0.
        uncond: the same keys for the unconditional (null) branch, or a negative condition.
        guidance_scale: s, a number or one value per sample ((B,) sequence or tensor). s = 1
            returns the conditional branch exactly, s = 0 the unconditional one exactly. When
            every s is 1 the unconditional half is skipped: one forward at batch B.
        prediction_channels: guide only the first this many channels on dim 1 (the prediction)
            and take the rest (learned variance) from the conditional branch; None guides all.

    Returns:
        ``model_fn(x_t, t) -> output`` with output shaped like the model's.
    """
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must have the same keys; cond only: {sorted(set(cond) - set(uncond))}, "
            f"uncond only: {sorted(set(uncond) - set(cond))}"
        )
    if prediction_channels is not None and prediction_channels < 1:
        raise ValueError(f"prediction_channels must be >= 1, got {prediction_channels}")
    skip_uncond = _all_ones(guidance_scale)

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]
        if skip_uncond:
            _scale_tensor(guidance_scale, batch, x_t)  # validates the per-sample length
            return model(x_t, t, **cond)
        kwargs = {k: _concat(k, cond[k], uncond[k], batch) for k in cond}
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs)
        if out.shape[0] != 2 * batch:
            raise ValueError(f"model returned batch {out.shape[0]} for a doubled input of {2 * batch}")
        # Combine in at least float32: under bf16 autocast the branch difference is small.
        work = torch.promote_types(out.dtype, torch.float32)
        out_c, out_u = out[:batch].to(work), out[batch:].to(work)
        s = _scale_tensor(guidance_scale, batch, out_c)
        if prediction_channels is None:
            return torch.lerp(out_u, out_c, s)
        if prediction_channels > out_c.shape[1]:
            raise ValueError(
                f"prediction_channels={prediction_channels} but the model output has {out_c.shape[1]}"
            )
        p = prediction_channels
        # lerp is exact at both ends (s = 0 gives uncond, s = 1 gives cond bit for bit).
        guided = torch.lerp(out_u[:, :p], out_c[:, :p], s)
        return torch.cat([guided, out_c[:, p:]], dim=1)

    return model_fn
