"""Scoring generated shapes images: oracle fidelity against prompts, diversity of free attributes.

Pure functions of images, prompts and features, shared by the shapes suite's sections
(:mod:`unclip.eval.shapes_suite`, :mod:`unclip.eval.shapes_manip`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unclip.eval import metrics as M

ATTRS = ("shape", "color", "size", "fill", "position")
FIDELITY_KEYS = (*ATTRS, "count", "binding", "relation", "background", "all_correct")


def scene_for_prompt(rng: np.random.Generator, prompt: str) -> Any:
    """A random scene satisfying exactly what ``prompt`` pins (any composition, held-out included)."""
    from unclip.data.shapes import parse_caption, sample_scene

    spec = parse_caption(prompt)
    rel = spec.relation[1] if spec.relation is not None else None
    objects = [m.constraints() for m in spec.mentions]
    if spec.relation is not None and spec.relation[0] == 1:
        objects = objects[::-1]
    return sample_scene(rng, "any", objects=objects, background=spec.background, relation=rel)


# --------------------------------------------------------------------------- scoring
def read_all(images: torch.Tensor) -> list[list[Any]]:
    """Oracle readings of (N, 3, S, S) images in [-1, 1]."""
    from unclip.data.shapes import read_scene
    from unclip.train.decoder import to_uint8

    return [read_scene(x) for x in to_uint8(images)]


def fidelity(
    images: torch.Tensor, prompts: Sequence[str], readings: list[list[Any]] | None = None
) -> dict[str, float]:
    """Oracle scores of images against their prompts: mean of each key in FIDELITY_KEYS (None skipped)."""
    from unclip.data.shapes import score
    from unclip.train.decoder import to_uint8

    readings = readings if readings is not None else read_all(images)
    rows = [score(x, p, readings=r) for x, p, r in zip(to_uint8(images), prompts, readings)]
    out = {k: M.mean_or_nan(r[k] for r in rows) for k in FIDELITY_KEYS}
    out["attrs_total"] = sum(r["total"] for r in rows)
    out["attr_acc"] = sum(r["hits"] for r in rows) / max(1, out["attrs_total"])
    out["n"] = len(rows)
    return out


def main_object(readings: list[Any]) -> Any | None:
    return max(readings, key=lambda r: r.area) if readings else None


def diversity(
    images: torch.Tensor,
    prompts: Sequence[str],
    feats: np.ndarray,
    s: Any,
    readings: list[list[Any]] | None = None,
    real_feats: np.ndarray | None = None,
) -> dict[str, Any]:
    """Diversity of single-object prompts' free attributes vs the data distribution [Table 1].

    Per prompt: for each attribute the prompt leaves free, the entropy of the oracle's reading
    of the main (largest) object, divided by the entropy of that attribute in ``n_reference``
    scenes satisfying the prompt (exact labels); coverage of the reference values; position
    spread; mean pairwise eval-CNN feature distance (and the same for real renders, if given).
    """
    from unclip.data.shapes import parse_caption

    readings = readings if readings is not None else read_all(images)
    per_prompt: dict[str, Any] = {}
    for prompt in dict.fromkeys(prompts):
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        pinned = set(parse_caption(prompt).mentions[0].constraints())
        rng = np.random.default_rng([s.seed, 7, len(per_prompt)])
        ref = [scene_for_prompt(rng, prompt).objects[0] for _ in range(s.n_reference)]
        objs = [main_object(readings[i]) for i in idx]
        row: dict[str, Any] = {"n": len(idx), "free": [a for a in ATTRS if a not in pinned]}
        # Images where the oracle finds no object are left out of the entropies (and counted here).
        row["read_rate"] = sum(o is not None for o in objs) / max(1, len(objs))
        ratios, covs = [], []
        for a in row["free"]:
            gen_vals = [getattr(o, a) for o in objs if o is not None]
            ref_vals = [getattr(o, a) for o in ref]
            r, c = M.entropy_ratio(gen_vals, ref_vals), M.coverage(gen_vals, ref_vals)
            # Expected coverage of the same number of real samples: what "full" looks like at this N.
            sub = [
                M.coverage([ref_vals[j] for j in rng.choice(len(ref_vals), len(idx))], ref_vals)
                for _ in range(20)
            ]
            row[a] = {
                "entropy": M.entropy(gen_vals),
                "ref_entropy": M.entropy(ref_vals),
                "entropy_ratio": r,
                "coverage": c,
                "ref_coverage_at_n": float(np.mean(sub)),
            }
            ratios.append(r)
            covs.append(c)
        xy = np.array([[o.x, o.y] for o in objs if o is not None]).reshape(-1, 2)
        row["position_spread"] = M.position_spread(xy)
        row["ref_position_spread"] = M.position_spread(np.array([[o.x, o.y] for o in ref]))
        row["feature_distance"] = M.mean_pairwise_distance(feats[idx])
        if real_feats is not None:
            row["ref_feature_distance"] = M.mean_pairwise_distance(real_feats[idx])
        row["entropy_ratio"] = M.mean_or_nan(x for x in ratios if not np.isnan(x))
        row["coverage"] = M.mean_or_nan(covs)
        per_prompt[prompt] = row
    rows = list(per_prompt.values())
    summary = {
        k: M.mean_or_nan(r.get(k) for r in rows if r.get(k) is not None and not np.isnan(r.get(k)))
        for k in (
            "entropy_ratio",
            "coverage",
            "position_spread",
            "ref_position_spread",
            "feature_distance",
            "ref_feature_distance",
            "read_rate",
        )
    }
    return summary | {"per_prompt": per_prompt}
