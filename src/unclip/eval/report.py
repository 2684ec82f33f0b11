"""Reports of the whole-model shapes suite: results.json, report.md, PNG plots and sample grids.

:func:`write_report` writes into one folder (every file below is listed in ``results["files"]``):

* ``results.json``: every metric with its settings, seed and sample counts;
* ``report.md``: the tables (fidelity, binding, diversity, FD per system; prior comparison;
  guidance sweep; manipulations; steps) with links to the plots and grids;
* ``guidance_tradeoff.png`` (fidelity vs diversity, Figs. 9-10 analogue), ``guidance_fd.png``
  (FD vs decoder scale, Fig. 11 analogue), ``prior_guidance.png``, ``manipulations.png``,
  ``steps_quality.png``;
* ``grid_<set>.png``: for each prompt set, one column per prompt (prompt printed under it), one
  row per system plus the real render; ``grid_manipulations.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

PLOTS = (
    "guidance_tradeoff.png",
    "guidance_fd.png",
    "prior_guidance.png",
    "manipulations.png",
    "steps_quality.png",
)


def _f(v: Any, pct: bool = False) -> str:
    if v is None or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


# --------------------------------------------------------------------------- claims
def _missing(*values: Any) -> bool:
    return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def _diff_verdict(a: float, b: float, n_a: int, n_b: int, higher: bool) -> str:
    """'holds' / 'does not hold' / 'within noise' for "a > b" (higher) or "a < b" on proportions."""
    if _missing(a, b):
        return "not measured"
    se = math.sqrt(max(a * (1 - a), 0.01) / max(n_a, 1) + max(b * (1 - b), 0.01) / max(n_b, 1))
    d = (a - b) if higher else (b - a)
    return "within noise" if abs(d) < 2 * se else "holds" if d > 0 else "does not hold"


def claims(r: dict[str, Any]) -> list[dict[str, str]]:
    """The paper's comparative claims checked on this run.

    Fidelity is compared on attribute accuracy (all pinned attributes of the single-object,
    two-object and held-out prompts pooled; all-correct is too harsh to separate weak models) with
    a two-standard-error rule; entropy ratios are compared directly (no error bar).
    """
    main, out = r.get("main"), []
    if not main:
        return out
    systems = r["systems"]
    glide = next((s for s in systems if s.startswith("GLIDE")), None)
    text_emb = next((s for s in systems if s.startswith("no prior")), None)
    unclip = r.get("main_system")
    if unclip not in main or glide not in main:
        return out

    def acc(sy: str) -> tuple[float, int]:
        parts = [main[sy][k] for k in ("single", "two", "heldout")]
        total = sum(p.get("attrs_total", 0) for p in parts)
        return sum(p["attr_acc"] * p.get("attrs_total", 0) for p in parts) / max(total, 1), total

    def fid(a: str, b: str) -> tuple[str, str]:
        (pa, na), (pb, nb) = acc(a), acc(b)
        return f"attribute accuracy {_f(pa, True)} % vs {_f(pb, True)} % ({na} attributes)", _diff_verdict(
            pa, pb, na, nb, True
        )

    u, g = main[unclip], main[glide]
    m, v = fid(unclip, glide)
    verdict = {
        "holds": "unCLIP higher",
        "does not hold": "GLIDE-like higher (as in the paper)",
        "within noise": "no significant difference (as in the paper)",
    }
    out.append(
        {
            "claim": "unCLIP's caption fidelity is comparable to GLIDE's (Table 1: GLIDE slightly preferred, 45.3 % vs 54.7 %)",
            "measure": m,
            "verdict": verdict.get(v, v),
        }
    )
    ud, gd = u["diversity"]["entropy_ratio"], g["diversity"]["entropy_ratio"]
    out.append(
        {
            "claim": "unCLIP is more diverse than GLIDE (Table 1: 70.5 % preference)",
            "measure": f"entropy ratio {_f(ud)} vs {_f(gd)}; pairwise feature distance {_f(u['diversity']['feature_distance'])} vs {_f(g['diversity']['feature_distance'])} ({r['prompt_counts']['diversity']} images; no error bar)",
            "verdict": "not measured" if _missing(ud, gd) else "holds" if ud > gd else "does not hold",
        }
    )
    n2 = u["two"]["n"]
    out.append(
        {
            "claim": "unCLIP binds attributes worse than GLIDE (Fig. 14)",
            "measure": f"two-object binding {_f(u['two']['binding'], True)} % vs {_f(g['two']['binding'], True)} % (n={n2})",
            "verdict": _diff_verdict(u["two"]["binding"], g["two"]["binding"], n2, n2, False),
        }
    )
    if text_emb in main:
        m, v = fid(unclip, text_emb)
        out.append(
            {
                "claim": "a prior beats feeding text_emb as the image embedding (§5.1, FID 7.99 vs 16.55)",
                "measure": f"{m}; FD {_f(u['fd'])} vs {_f(main[text_emb]['fd'])}",
                "verdict": v,
            }
        )
    ar, dif = "unCLIP (AR prior)", "unCLIP (diffusion prior)"
    if ar in main and dif in main:
        m, v = fid(dif, ar)
        out.append(
            {
                "claim": "the diffusion prior beats the AR prior (Tables 1-2)",
                "measure": f"{m}; FD {_f(main[dif]['fd'])} vs {_f(main[ar]['fd'])}",
                "verdict": v,
            }
        )
    sweep = (r.get("guidance") or {}).get("decoder", {})
    if unclip in sweep and glide in sweep and len(sweep[unclip]) > 1:
        du = sweep[unclip][0]["entropy_ratio"] - sweep[unclip][-1]["entropy_ratio"]
        dg = sweep[glide][0]["entropy_ratio"] - sweep[glide][-1]["entropy_ratio"]
        lo, hi = sweep[unclip][0]["decoder_scale"], sweep[unclip][-1]["decoder_scale"]
        out.append(
            {
                "claim": "unCLIP keeps its diversity as decoder guidance rises; GLIDE loses it (Figs. 9-10)",
                "measure": f"entropy-ratio drop from scale {lo:g} to {hi:g}: unCLIP {_f(du)}, GLIDE-like {_f(dg)} ({sweep[unclip][0]['n']} images per point; no error bar)",
                "verdict": "not measured" if _missing(du, dg) else "holds" if du < dg else "does not hold",
            }
        )
    return out


# --------------------------------------------------------------------------- markdown
def markdown_report(r: dict[str, Any]) -> str:
    """The report's markdown (tables; image links relative to the report folder)."""
    st = r["settings"]
    lines = [
        f"# Shapes suite: {r['model']} ({st['mode']} mode, seed {r['seed']})",
        "",
        f"Decoder at {r['resolution']} px (upsamplers skipped: {r['upsamplers_skipped']}; the oracle reads "
        f"clean {r['resolution']} px renders almost exactly, see the real-renders row; upsamplers see only the "
        f"low-resolution image), decoder sampler {st.get('decoder_sampler', 'ddim')} with {st['decoder_steps']} steps, "
        f"decoder guidance {st['decoder_scale']:g}, prior settings: the model's defaults. "
        f"Every system sees the same prompts and the same decoder x_T. "
        f"GLIDE-like = the same decoder in caption-only mode (null image embedding), not a separate model. "
        f"Images generated: {r.get('images_generated', '-')}; time: {r['timing'].get('total', '-')} s. "
        f"Eval CNN held-out accuracy (single-object shape/colour): "
        f"{_f(r['eval_cnn']['test_accuracy'].get('single/shape'), True)} / "
        f"{_f(r['eval_cnn']['test_accuracy'].get('single/color'), True)} %.",
        "",
    ]
    cl = r.get("claims") or claims(r)
    if cl:
        lines += ["## The paper's claims at this scale", ""]
        lines += _table(
            ["claim", "measured", "verdict"], [[c["claim"], c["measure"], c["verdict"]] for c in cl]
        )
    main = r.get("main")
    if main:
        systems = [k for k in main if isinstance(main[k], dict)]
        lines += [f"## Fidelity (oracle, %; prompts: {r['prompt_counts']})", ""]
        rows = []
        for sy in systems:
            m = main[sy]
            rows.append(
                [
                    sy,
                    *(
                        _f(m["single"][k], True)
                        for k in ("shape", "color", "size", "fill", "position", "all_correct")
                    ),
                    _f(m["two"]["binding"], True),
                    _f(m["two"]["relation"], True),
                    _f(m["two"]["all_correct"], True),
                    _f(m["heldout"]["attr_acc"], True),
                    _f(m["heldout"]["all_correct"], True),
                ]
            )
        lines += _table(
            [
                "system",
                "shape",
                "colour",
                "size",
                "fill",
                "position",
                "single all",
                "two: binding",
                "two: relation",
                "two: all",
                "held-out attr",
                "held-out all",
            ],
            rows,
        )
        lines += [
            "## Diversity and realism",
            "",
            "Entropy ratio: entropy of the free attributes read from the samples / in the data (1 = as diverse as "
            "the data). Coverage: fraction of the data's values that appear. FD: Fréchet distance on the eval CNN's "
            f"features vs renders of scenes matching the same prompts; real-vs-real floor at the same N: "
            f"{_f(main.get('fd_floor_real_vs_real'))}.",
            "",
        ]
        rows = []
        for sy in systems:
            d = main[sy]["diversity"]
            rows.append(
                [
                    sy,
                    _f(d["entropy_ratio"]),
                    _f(d["coverage"], True),
                    _f(d["position_spread"]),
                    _f(d["ref_position_spread"]),
                    _f(d["feature_distance"]),
                    _f(d.get("ref_feature_distance")),
                    _f(main[sy]["fd"]),
                    str(main[sy]["fd_n"]),
                ]
            )
        lines += _table(
            [
                "system",
                "entropy ratio",
                "coverage %",
                "position spread",
                "(data)",
                "pairwise feat. dist",
                "(real)",
                "FD",
                "N",
            ],
            rows,
        )
    if main:
        priors = [sy for sy in r["systems"] if sy.startswith(("unCLIP", "no prior"))]
        lines += ["## Prior comparison (paper §5.1, Tables 1-2)", ""]
        rows = [
            [
                sy,
                _f(main[sy]["single"]["all_correct"], True),
                _f(main[sy]["two"]["all_correct"], True),
                _f(main[sy]["heldout"]["all_correct"], True),
                _f(main[sy]["diversity"]["entropy_ratio"]),
                _f(main[sy]["fd"]),
            ]
            for sy in priors
        ]
        lines += _table(
            ["system", "single all %", "two all %", "held-out all %", "entropy ratio", "FD"], rows
        )
    g = r.get("guidance")
    if g:
        lines += [
            "## Guidance sweep (decoder scale)",
            "",
            "![trade-off](guidance_tradeoff.png) ![FD](guidance_fd.png)",
            "",
        ]
        rows = [
            [
                sy,
                _f(p["decoder_scale"]),
                _f(p["all_correct"], True),
                _f(p["attr_acc"], True),
                _f(p["entropy_ratio"]),
                _f(p["coverage"], True),
                _f(p["fd"]),
            ]
            for sy, pts in g["decoder"].items()
            for p in pts
        ]
        lines += _table(
            ["system", "decoder scale", "all correct %", "attr %", "entropy ratio", "coverage %", "FD"], rows
        )
        if g["prior"]:
            lines += ["## Prior guidance sweep", "", "![prior](prior_guidance.png)", ""]
            rows = [
                [
                    p["system"],
                    _f(p["prior_scale"]),
                    _f(p["all_correct"], True),
                    _f(p["attr_acc"], True),
                    _f(p["entropy_ratio"]),
                    _f(p["fd"]),
                ]
                for p in g["prior"]
            ]
            lines += _table(["system", "prior scale", "all correct %", "attr %", "entropy ratio", "FD"], rows)
    mp = r.get("manipulations")
    if mp:
        lines += [
            "## Manipulations",
            "",
            "![manipulations](manipulations.png)",
            "",
            "Variations (fraction keeping each source attribute):",
            "",
        ]
        rows = [
            [
                _f(v["eta"]),
                *(_f(v[f"keep_{a}"], True) for a in ("shape", "color", "size", "fill", "position", "all")),
                _f(v["pixel_distance"]),
                _f(v["position_spread"]),
            ]
            for v in mp["variations"]
        ]
        lines += _table(
            ["eta", "shape", "colour", "size", "fill", "position", "all", "pixel dist", "pos. spread"], rows
        )
        lines += ["Text diffs (colour edits):", ""]
        lines += _table(
            ["theta", "success %", "preservation %"],
            [[_f(t["theta"]), _f(t["success"], True), _f(t["preservation"], True)] for t in mp["text_diff"]],
        )
        it = mp["interpolation"]
        lines += ["Interpolation:", ""]
        lines += _table(
            [
                "pairs",
                "frames",
                "colour monotone",
                "position monotone",
                "colour Spearman",
                "position Spearman",
                "endpoints ok",
            ],
            [
                [
                    str(it["pairs"]),
                    str(it["frames"]),
                    _f(it["colour_monotone"], True),
                    _f(it["position_monotone"], True),
                    _f(it["colour_spearman"]),
                    _f(it["position_spearman"]),
                    _f(it["endpoints_correct"], True),
                ]
            ],
        )
    sq = r.get("steps")
    if sq:
        lines += ["## Steps vs quality", "", "![steps](steps_quality.png)", ""]
        lines += _table(
            ["sampler", "steps", "all correct %", "attr %", "FD", "s/image"],
            [
                [
                    x["sampler"],
                    str(x["steps"]),
                    _f(x["all_correct"], True),
                    _f(x["attr_acc"], True),
                    _f(x["fd"]),
                    _f(x["seconds_per_image"]),
                ]
                for x in sq
            ],
        )
    lines += [
        "## Sample grids",
        "",
        *(f"![{p}]({p})" for p in r.get("files", []) if p.startswith("grid_")),
        "",
        "Sample counts are small in quick mode: differences of a few points are noise. See docs/evaluation.md.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def _plots(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    g = r.get("guidance", {"decoder": {}, "prior": []})
    fig, ax = plt.subplots(figsize=(5, 4))
    for sy, pts in g["decoder"].items():
        x, y = [p["entropy_ratio"] for p in pts], [p["attr_acc"] for p in pts]
        ax.plot(x, y, "o-", label=sy)
        for p in pts:
            ax.annotate(f"{p['decoder_scale']:g}", (p["entropy_ratio"], p["attr_acc"]), fontsize=7)
    ax.set(
        xlabel="diversity: entropy ratio of free attributes",
        ylabel="fidelity: attribute accuracy",
        title="decoder guidance",
    )
    ax.legend(fontsize=6)
    save(fig, "guidance_tradeoff.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for sy, pts in g["decoder"].items():
        ax.plot([p["decoder_scale"] for p in pts], [p["fd"] for p in pts], "o-", label=sy)
    ax.set(xlabel="decoder guidance scale", ylabel="FD (eval CNN)", title="realism vs guidance")
    ax.legend(fontsize=6)
    save(fig, "guidance_fd.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    pr = g.get("prior", [])
    if pr:
        xs = [p["prior_scale"] for p in pr]
        ax.plot(xs, [p["attr_acc"] for p in pr], "o-", label="attribute accuracy")
        ax.plot(xs, [p["entropy_ratio"] for p in pr], "s-", label="entropy ratio")
    ax.set(xlabel="prior guidance scale", title="prior guidance")
    ax.legend(fontsize=6)
    save(fig, "prior_guidance.png")
    mp = r.get("manipulations")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    if mp:
        v = mp["variations"]
        axes[0].plot([x["eta"] for x in v], [x["keep_all"] for x in v], "o-", label="keeps all attributes")
        axes[0].plot([x["eta"] for x in v], [x["keep_position"] for x in v], "s-", label="keeps position")
        t = mp["text_diff"]
        axes[1].plot([x["theta"] for x in t], [x["success"] for x in t], "o-", label="edit success")
        axes[1].plot([x["theta"] for x in t], [x["preservation"] for x in t], "s-", label="preservation")
    axes[0].set(xlabel="eta", title="variations")
    axes[1].set(xlabel="theta", title="text diffs (colour)")
    for a in axes:
        a.legend(fontsize=6)
    save(fig, "manipulations.png")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    sq = r.get("steps") or []
    for sampler in dict.fromkeys(x["sampler"] for x in sq):
        pts = [x for x in sq if x["sampler"] == sampler]
        axes[0].plot([x["steps"] for x in pts], [x["attr_acc"] for x in pts], "o-", label=sampler)
        axes[1].plot([x["steps"] for x in pts], [x["fd"] for x in pts], "o-", label=sampler)
    axes[0].set(xlabel="decoder steps", ylabel="attribute accuracy", xscale="log")
    axes[1].set(xlabel="decoder steps", ylabel="FD", xscale="log")
    for a in axes:
        a.legend(fontsize=6)
    save(fig, "steps_quality.png")
    return written


# --------------------------------------------------------------------------- grids
def _tile(x: torch.Tensor, scale: int) -> Image.Image:
    """(3, S, S) in [-1, 1] -> PIL image upscaled ``scale`` times (nearest)."""
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(a)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for w in text.split():
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return [*lines, line]


def labelled_grid(rows: dict[str, torch.Tensor], captions: Sequence[str], tile: int = 96) -> Image.Image:
    """Rows of images (name -> (N, 3, S, S) in [-1, 1]) with row names left and captions below.

    Tiles are upscaled (nearest) to at least ``tile`` pixels.
    """
    n = max(len(v) for v in rows.values())
    s0 = next(iter(rows.values())).shape[-1]
    scale = max(1, -(-tile // s0))
    side = s0 * scale
    label_w, cap_h, pad = 150, 11 * 8 + 6 if captions else 4, 4
    grid = Image.new("RGB", (label_w + n * (side + pad), len(rows) * (side + pad) + cap_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (name, imgs) in enumerate(rows.items()):
        y = i * (side + pad)
        for k, ln in enumerate(_wrap(name, 24)[:4]):
            draw.text((2, y + 2 + 11 * k), ln, fill=(0, 0, 0))
        for j, x in enumerate(imgs):
            grid.paste(_tile(x, scale), (label_w + j * (side + pad), y))
    y0 = len(rows) * (side + pad)
    for j, c in enumerate(captions[:n]):
        for k, ln in enumerate(_wrap(c, max(8, side // 6))[:8]):
            draw.text((label_w + j * (side + pad), y0 + 2 + 11 * k), ln, fill=(0, 0, 0))
    return grid


def _grids(art: dict[str, Any], out: Path) -> list[str]:
    written = []
    grids = art.get("grids", {})
    systems = {k: v for k, v in grids.items() if k != "manipulations"}
    for name, ps in art.get("sets", {}).items():
        if not systems:
            break
        rows = {"real render": art["real"][name][:8]} | {sy: v[name] for sy, v in systems.items()}
        labelled_grid(rows, ps.prompts[:8]).save(out / f"grid_{name}.png")
        written.append(f"grid_{name}.png")
    strips = grids.get("manipulations")
    if strips:
        rows = {k: v * 2 - 1 for k, v in strips.items()}
        labelled_grid(rows, []).save(out / "grid_manipulations.png")
        written.append("grid_manipulations.png")
    return written


def jsonable(x: Any) -> Any:
    """JSON-ready copy: NaN -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_report(results: dict[str, Any], artefacts: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write results.json, report.md, plots and grids into ``out``; returns the results (with ``files``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _grids(artefacts, out) + _plots(results, out)
    results = {**results, "files": ["results.json", "report.md", *files], "claims": claims(results)}
    (out / "results.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(results))
    return results
