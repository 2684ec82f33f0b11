"""Manipulation metrics of the shapes suite [paper §3, Figs. 3-5], scored by the pixel oracle.

Sources are real renders of single-object scenes (exact attributes known), inverted once each
(:func:`unclip.manipulate.invert`, DDIM inversion at the suite's decoder steps), at the decoder's
resolution (no upsamplers):

* variations (§3.1, Fig. 3): for each eta, the fraction of variations that keep each attribute
  of the source (shape, colour, size, fill, position) against their diversity (mean pairwise
  pixel distance, position spread);
* text diffs (§3.3, Fig. 5): "a C1 S" -> "a C2 S" for each theta: edit success (the colour read
  is C2) and preservation (shape, size, fill and position kept);
* interpolation (§3.2, Fig. 4): between two renders that differ in colour and position, the
  progress of the read colour and position along the A -> B segment at each frame: the fraction
  of monotone paths, Spearman correlation with theta, and correct endpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unclip.eval import metrics as M

ATTRS = ("shape", "color", "size", "fill", "position")


def _sources(ctx: Any, k: int, seed: int) -> list[Any]:
    """k single-object training scenes (fixed colour-able: never black/white, for colour edits)."""
    from unclip.data.shapes import sample_scene

    rng = np.random.default_rng([seed, 301])
    out = []
    while len(out) < k:
        spec = sample_scene(rng, "train", 1)
        if spec.objects[0].color not in ("black", "white"):
            out.append(spec)
    return out


def _read_main(images01: torch.Tensor) -> list[Any]:
    """Largest object read in each (N, 3, S, S) image in [0, 1] (None where nothing was read)."""
    from unclip.eval.shapes_scoring import main_object, read_all

    return [main_object(r) for r in read_all(images01 * 2 - 1)]


def _keeps(obj: Any, reading: Any) -> dict[str, bool]:
    return {a: reading is not None and getattr(reading, a) == getattr(obj, a) for a in ATTRS}


def _invert(pipe: Any, spec: Any, steps: int) -> Any:
    from unclip.data.shapes import image_tensor
    from unclip.manipulate import invert

    side = max(pipe.decoder.config.image_size, getattr(pipe.clip, "image_size", 0) or 0)
    return invert(pipe, image_tensor(spec, side), steps=steps)


def section_manipulations(ctx: Any) -> dict[str, Any]:
    """Variations vs eta, text-diff colour edits vs theta, interpolation paths (see module doc)."""
    from unclip.data.shapes import COLORS
    from unclip.manipulate import interpolate, text_diff, variations
    from unclip.progress import progress

    gen, s = ctx.gen, ctx.gen.s
    pipe, steps = gen.pipe, gen.steps
    specs = _sources(ctx, s.manip_sources, s.seed)
    invs = [_invert(pipe, x, steps) for x in progress(specs, desc="invert")]
    out: dict[str, Any] = {"sources": len(specs), "decoder_steps": steps}
    strips: dict[str, Any] = {}

    # Variations [§3.1]
    rows = []
    for eta in s.etas:
        keep: dict[str, list[bool]] = {a: [] for a in ATTRS}
        pix, spread = [], []
        for k, (spec, inv) in enumerate(zip(specs, invs)):
            imgs = variations(
                pipe, inv, n=s.variations_n, eta=eta, seed=s.seed + k, steps=steps, output_type="pt"
            ).images
            reads = _read_main(imgs)
            for r in reads:
                for a, v in _keeps(spec.objects[0], r).items():
                    keep[a].append(v)
            pix.append(M.mean_pairwise_distance(imgs.reshape(len(imgs), -1).numpy()))
            spread.append(M.position_spread(np.array([[r.x, r.y] for r in reads if r is not None])))
            if k == 0:
                strips[f"variations eta={eta:g}"] = imgs
        row = {"eta": eta, **{f"keep_{a}": M.mean_or_nan(v) for a, v in keep.items()}}
        row["keep_all"] = M.mean_or_nan(all(t) for t in zip(*keep.values()))
        row["pixel_distance"] = M.mean_or_nan(x for x in pix if not np.isnan(x))
        row["position_spread"] = M.mean_or_nan(x for x in spread if not np.isnan(x))
        rows.append(row)
    out["variations"] = rows

    # Text diffs: colour edits [§3.3]
    thetas = np.linspace(0.0, s.edit_max_theta, s.edit_frames)
    success: list[list[bool]] = [[] for _ in thetas]
    preserve: list[list[bool]] = [[] for _ in thetas]
    edits = []
    for k, (spec, inv) in enumerate(zip(specs, invs)):
        obj = spec.objects[0]
        options = [c for c in COLORS if c not in (obj.color, "black", "white")]
        target = options[(s.seed + k) % len(options)]
        shape = "plus sign" if obj.shape == "cross" else obj.shape
        src, dst = f"a {obj.color} {shape}", f"a {target} {shape}"
        imgs = text_diff(
            pipe,
            inv,
            dst,
            from_=src,
            max_theta=s.edit_max_theta,
            frames=s.edit_frames,
            seed=s.seed,
            steps=steps,
            output_type="pt",
        ).images
        for j, r in enumerate(_read_main(imgs)):
            success[j].append(r is not None and r.color == target)
            kept = _keeps(obj, r)
            preserve[j].append(all(kept[a] for a in ("shape", "size", "fill", "position")))
        edits.append({"from": src, "to": dst})
        if k == 0:
            strips[f"text diff: {src} -> {dst}"] = imgs
    out["text_diff"] = [
        {"theta": float(t), "success": M.mean_or_nan(a), "preservation": M.mean_or_nan(b)}
        for t, a, b in zip(thetas, success, preserve)
    ]
    out["text_diff_edits"] = edits

    # Interpolation [§3.2]
    paths_c, paths_p, rho_c, rho_p, ends = [], [], [], [], []
    for k in range(s.interp_pairs):
        a_spec, b_spec = _pair(s.seed, k)
        ia, ib = _invert(pipe, a_spec, steps), _invert(pipe, b_spec, steps)
        imgs = interpolate(
            pipe, ia, ib, frames=s.interp_frames, seed=s.seed, steps=steps, output_type="pt"
        ).images
        reads = _read_main(imgs)
        ao, bo = a_spec.objects[0], b_spec.objects[0]
        ca, cb = np.array(ao.rgb, float), np.array(bo.rgb, float)
        pa, pb = np.array([ao.x, ao.y]), np.array([bo.x, bo.y])
        pc = [_progress(np.array(r.rgb, float), ca, cb) if r else np.nan for r in reads]
        pp = [_progress(np.array([r.x, r.y]), pa, pb) if r else np.nan for r in reads]
        theta = np.linspace(0, 1, len(reads))
        for prog, paths, rho in ((pc, paths_c, rho_c), (pp, paths_p, rho_p)):
            if not np.isnan(prog).any():
                paths.append(prog)
                rho.append(M.spearman(theta, prog))
        ends.append(
            bool(reads[0] and reads[0].color == ao.color and reads[-1] and reads[-1].color == bo.color)
        )
        if k == 0:
            strips[f"interpolation: {ao.color} {ao.shape} -> {bo.color} {bo.shape}"] = imgs
    out["interpolation"] = {
        "pairs": s.interp_pairs,
        "frames": s.interp_frames,
        "colour_monotone": M.monotone_fraction(paths_c),
        "position_monotone": M.monotone_fraction(paths_p),
        "colour_spearman": M.mean_or_nan(x for x in rho_c if not np.isnan(x)),
        "position_spearman": M.mean_or_nan(x for x in rho_p if not np.isnan(x)),
        "endpoints_correct": M.mean_or_nan(ends),
        "readable_paths": len(paths_c) / max(1, s.interp_pairs),
    }
    ctx.grids["manipulations"] = strips
    return out


def _progress(v: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Projection of v on the segment a -> b: 0 at a, 1 at b."""
    d = b - a
    return float((v - a) @ d / max(float(d @ d), 1e-9))


def _pair(seed: int, k: int) -> tuple[Any, Any]:
    """Two single-object scenes with different colours, far-apart positions, same shape."""
    from unclip.data.shapes import sample_scene

    rng = np.random.default_rng([seed, 401, k])
    a = sample_scene(rng, "train", 1, objects=[{"position": "left", "color": "red"}])
    b = sample_scene(
        rng, "train", 1, objects=[{"position": "right", "color": "blue", "shape": a.objects[0].shape}]
    )
    return a, b
