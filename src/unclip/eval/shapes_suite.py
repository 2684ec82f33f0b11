"""The whole-model shapes suite: the paper's comparative claims, scored exactly by the pixel oracle.

``unclip evaluate --model M --suite shapes [--quick] --out DIR`` runs :func:`evaluate_model`;
:mod:`unclip.eval.report` writes results.json, report.md, plots and sample grids. Sections:

* ``fidelity`` (paper §5.2, Table 1 "caption similarity"; Fig. 14 binding): oracle accuracy on
  single-object prompts, two-object prompts with a relation (binding, relation) and held-out
  compositions, for every system under identical budgets (same prompts, same decoder x_T, steps
  and guidance): unCLIP with each prior the model has, the no-prior ablations (text_emb used as
  the image embedding [§5.1, Fig. 8], caption only) and the GLIDE-like baseline, which is *the
  same decoder in caption-only mode* (its null image embedding), not a separately trained model.
* ``diversity`` (Table 1 "diversity"): entropy and coverage of the attributes a prompt leaves
  unspecified, relative to the data distribution, position spread, mean pairwise eval-CNN
  feature distance within a prompt.
* ``realism``: Fréchet distance on the independent eval CNN's features (Table 2's FID analogue)
  against renders of scenes matching the same prompts, with the real-vs-real floor at equal N.
* ``guidance`` (Figs. 9-11): decoder scale sweep for unCLIP and GLIDE-like; prior scale sweep.
* ``manipulations`` (§3, Figs. 3-5) and ``steps`` (sampler x steps): see their functions.

Everything runs at the decoder's resolution (32 px for the shapes models): the oracle reads clean
32 px renders almost exactly (the report's real-renders row), and the upsamplers see only the
low-resolution image, so they are skipped (stated in the report).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.errors import UserError
from unclip.eval import metrics as M
from unclip.eval.shapes_scoring import ATTRS, diversity, fidelity, main_object, read_all, scene_for_prompt

__all__ = ["ATTRS", "diversity", "fidelity", "main_object", "read_all", "scene_for_prompt"]

# Prompts that pin one attribute (or two) and leave the rest to the model [Table 1 "diversity"].
DIVERSITY_PROMPTS = (
    "a star",
    "something red",
    "a large shape",
    "a blue circle",
    "an outlined shape",
    "a heart on the left",
)
GLIDE = "GLIDE-like (same decoder, caption only)"
TEXT_EMB = "no prior: text_emb as image_emb"
REAL = "real renders (oracle ceiling)"


@dataclasses.dataclass
class Settings:
    """What one run measures, and at what cost (``quick`` or ``full``)."""

    mode: str
    seed: int = 0
    n_single: int = 200
    n_two: int = 100
    heldout_repeats: int = 10
    diversity_prompts: tuple[str, ...] = DIVERSITY_PROMPTS
    per_diversity_prompt: int = 16
    n_reference: int = 400  # data-distribution scenes per diversity prompt
    decoder_steps: int | None = None  # None: the model's default; quick: at most 20
    decoder_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
    prior_scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    sweep_single: int = 64
    sweep_diversity_prompts: int = 2
    # None: derived from the run's decoder steps k: ddim (k/2, k), dpmpp_2m (k/2,), ddpm (k,).
    step_grid: dict[str, tuple[int, ...]] | None = dataclasses.field(
        default_factory=lambda: {"ddim": (10, 25, 50, 100), "dpmpp_2m": (10, 20, 50), "ddpm": (50, 100, 250)}
    )
    steps_n: int = 64
    manip_sources: int = 8
    etas: tuple[float, ...] = (0.0, 0.5, 1.0)
    variations_n: int = 4
    edit_frames: int = 5
    edit_max_theta: float = 0.5
    interp_pairs: int = 4
    interp_frames: int = 7
    batch: int = 32

    @classmethod
    def quick(cls, seed: int = 0, n: int | None = None) -> Settings:
        """About 4 CPU-minutes on one thread for a decoder-shapes-sized model (docs/evaluation.md)."""
        s = cls(
            "quick",
            seed,
            n_single=12,
            n_two=6,
            heldout_repeats=1,
            diversity_prompts=DIVERSITY_PROMPTS[:2],
            per_diversity_prompt=6,
            n_reference=200,
            decoder_steps=20,
            decoder_scales=(1.0, 3.0, 6.0),
            prior_scales=(1.0, 4.0),
            sweep_single=6,
            sweep_diversity_prompts=1,
            step_grid=None,
            steps_n=6,
            manip_sources=2,
            etas=(0.0, 1.0),
            variations_n=3,
            edit_frames=3,
            interp_pairs=1,
            interp_frames=5,
        )
        return s.scaled(n) if n else s

    @classmethod
    def full(cls, seed: int = 0, n: int | None = None) -> Settings:
        """The documented full run (hours on one CPU thread; minutes on a GPU)."""
        s = cls("full", seed)
        return s.scaled(n) if n else s

    def scaled(self, n: int) -> Settings:
        """``--n N``: N single-object prompts, N//2 two-object prompts, sweeps on at most N."""
        n = max(1, int(n))
        return dataclasses.replace(
            self,
            n_single=n,
            n_two=max(1, n // 2),
            sweep_single=min(self.sweep_single, n),
            steps_n=min(self.steps_n, n),
            per_diversity_prompt=min(self.per_diversity_prompt, max(2, n)),
        )


# --------------------------------------------------------------------------- prompts and scenes
@dataclasses.dataclass
class PromptSet:
    """Prompts (one per image, repeats allowed) and matching real scenes (two independent draws)."""

    name: str
    prompts: list[str]
    real: list[Any]  # SceneSpec per image (the source scene where there is one)
    real2: list[Any]  # an independent scene per image satisfying the same prompt


def make_prompt_sets(s: Settings) -> dict[str, PromptSet]:
    """single, two (with a relation), heldout and diversity prompt sets, deterministic in the seed."""
    from unclip.data.shapes import HELD_OUT, RELATIONS, describe, sample_scene

    rng = np.random.default_rng([s.seed, 101])
    rng2 = np.random.default_rng([s.seed, 102])
    single = [sample_scene(rng, "train", 1) for _ in range(s.n_single)]
    two = []
    for _ in range(s.n_two):
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        two.append(sample_scene(rng, "train", 2, relation=rel))
    sets = {
        "single": PromptSet("single", [describe(x) for x in single], single, []),
        "two": PromptSet("two", [describe(x) for x in two], two, []),
    }
    held = [r.prompt() for r in HELD_OUT for _ in range(s.heldout_repeats)]
    sets["heldout"] = PromptSet("heldout", held, [scene_for_prompt(rng, p) for p in held], [])
    div = [p for p in s.diversity_prompts for _ in range(s.per_diversity_prompt)]
    sets["diversity"] = PromptSet("diversity", div, [scene_for_prompt(rng, p) for p in div], [])
    for ps in sets.values():
        ps.real2 = [scene_for_prompt(rng2, p) for p in ps.prompts]
    return sets


def render_specs(specs: Sequence[Any], size: int) -> torch.Tensor:
    """(N, 3, size, size) renders in [-1, 1]."""
    from unclip.data.shapes import image_tensor

    if not specs:
        return torch.zeros(0, 3, size, size)
    return torch.stack([image_tensor(x, size) for x in specs])


# --------------------------------------------------------------------------- generation
class Generator:
    """Generates images for prompts with one system, reproducibly and under identical budgets.

    Image i of a prompt set (key ``tag``) gets its decoder x_T from seed ``(seed, tag, i)``,
    shared by every system, and its prior noise from a different stream, so systems differ only
    in the conditioning (paired comparison). Prior embeddings are cached per setting.
    """

    def __init__(self, pipe: Any, s: Settings) -> None:
        self.pipe, self.s = pipe, s
        self.steps = pipe.defaults.decoder_steps
        if s.decoder_steps:
            self.steps = min(s.decoder_steps, self.steps) if s.mode == "quick" else s.decoder_steps
        self.scale = pipe.defaults.decoder_guidance_scale
        # The model's own decoder sampler, as `unclip generate` uses it (the steps section varies it).
        self.sampler = pipe.defaults.decoder_sampler
        self._text: dict[str, Any] = {}
        self._emb: dict[tuple, torch.Tensor] = {}
        self.images_made = 0

    def systems(self) -> list[str]:
        """unCLIP with each prior the model has, then the no-prior ablations and GLIDE-like."""
        out = []
        if self.pipe.prior is not None:
            out.append("unCLIP (diffusion prior)")
        if self.pipe.prior_ar is not None:
            out.append("unCLIP (AR prior)")
        return [*out, TEXT_EMB, GLIDE]

    def main_system(self) -> str:
        """The model's default unCLIP system."""
        unclip = [x for x in self.systems() if x.startswith("unCLIP")]
        want = "unCLIP (AR prior)" if self.pipe.defaults.prior == "ar" else "unCLIP (diffusion prior)"
        return want if want in unclip else unclip[0] if unclip else TEXT_EMB

    def text(self, prompts: Sequence[str]) -> Any:
        """TextEncoding (N, ...) of prompts, each prompt encoded once."""
        from unclip.clip import TextEncoding

        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            with torch.inference_mode():
                enc = self.pipe.encode_prompts(missing)
            for k, p in enumerate(missing):
                self._text[p] = enc[k : k + 1]
        return TextEncoding.cat([self._text[p] for p in prompts])

    def _gens(self, tag: str, stream: int, n: int) -> list[torch.Generator]:
        key = sum(ord(c) * 31**k for k, c in enumerate(tag)) % 1_000_003
        return [
            torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.s.seed, key, stream, i]).generate_state(1)[0])
            )
            for i in range(n)
        ]

    def image_emb(
        self, system: str, tag: str, prompts: Sequence[str], prior_scale: float | None
    ) -> torch.Tensor | None:
        """(N, D) embeddings the decoder is conditioned on (None for caption-only)."""
        if system == GLIDE:
            return None
        text = self.text(prompts)
        if system == TEXT_EMB:
            return text.text_emb.float()
        prior = "ar" if "AR" in system else "diffusion"
        gens = self._gens(tag, 2, len(prompts))
        out = []
        from unclip.progress import progress

        todo = sum((system, tag, i, p, prior_scale) not in self._emb for i, p in enumerate(prompts))
        bar = progress(total=todo, desc=f"{tag}: {prior} prior", **({} if todo else {"disable": True}))
        for i, p in enumerate(prompts):  # cached per image: subsets and decoder sweeps reuse them
            key = (system, tag, i, p, prior_scale)
            if key not in self._emb:
                with torch.inference_mode():
                    self._emb[key] = self.pipe.prior_embeds(
                        text[i : i + 1], [gens[i]], prior=prior, guidance_scale=prior_scale
                    ).cpu()
                bar.update(1)
            out.append(self._emb[key])
        bar.close()
        return torch.cat(out)

    @torch.inference_mode()
    def generate(
        self,
        system: str,
        tag: str,
        prompts: Sequence[str],
        *,
        decoder_scale: float | None = None,
        prior_scale: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """(N, 3, S, S) images in [-1, 1] at the decoder's resolution (sampler None: the model's)."""
        from unclip.progress import progress

        emb = self.image_emb(system, tag, prompts, prior_scale)
        text = self.text(prompts)
        use_tokens = bool(self.pipe.decoder.config.text_dim)  # every system sees the caption tokens
        x_T = self.pipe.decoder_noise(self._gens(tag, 1, len(prompts)))
        out = []
        b = self.s.batch
        for i in progress(range(0, len(prompts), b), desc=f"{tag}: {system[:24]}"):
            sl = slice(i, i + b)
            tok = mask = pooled = None
            if use_tokens:
                tok, mask, pooled = text.text_tokens[sl], text.text_mask[sl], text.text_emb[sl]
            gen = torch.Generator().manual_seed(self.s.seed + i)
            out.append(
                self.pipe.decoder.sample(
                    None if emb is None else emb[sl],
                    tok,
                    mask,
                    text_emb=pooled,
                    guidance_scale=self.scale if decoder_scale is None else decoder_scale,
                    steps=steps or self.steps,
                    sampler=sampler or self.sampler,
                    generator=gen,
                    x_T=x_T[sl],
                ).cpu()
            )
        self.images_made += len(prompts)
        return (
            torch.cat(out)
            if out
            else torch.zeros(0, 3, self.pipe.decoder.config.image_size, self.pipe.decoder.config.image_size)
        )


# --------------------------------------------------------------------------- sections
@dataclasses.dataclass
class Context:
    """What every section shares: generator, eval CNN, prompt sets and their real renders."""

    gen: Generator
    feat: Any  # ShapesFeatureNet
    sets: dict[str, PromptSet]
    size: int
    real: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    real2: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    grids: dict[str, Any] = dataclasses.field(default_factory=dict)

    def features(self, images: torch.Tensor) -> np.ndarray:
        from unclip.eval.features import extract_features

        return extract_features(self.feat, images)

    def fd(self, images: torch.Tensor, real: torch.Tensor) -> float:
        """FD between generated and real images on the eval CNN's features (NaN below 2 images)."""
        if len(images) < 2 or len(real) < 2:
            return float("nan")
        return M.frechet_distance(self.features(images), self.features(real))


def _subset(ps: PromptSet, k: int, prompts_first: int | None = None) -> list[str]:
    if prompts_first is None:
        return ps.prompts[:k]
    keep = list(dict.fromkeys(ps.prompts))[:prompts_first]
    return [p for p in ps.prompts if p in keep]


def section_main(ctx: Context) -> dict[str, Any]:
    """Fidelity, diversity and realism for every system on the same prompts and noise."""
    out: dict[str, Any] = {}
    all_real = torch.cat([ctx.real[k] for k in ctx.sets])
    all_real2 = torch.cat([ctx.real2[k] for k in ctx.sets])
    out["fd_floor_real_vs_real"] = ctx.fd(all_real2, all_real)
    # Ceiling: independent real renders of scenes satisfying the same prompts, scored the same way.
    real_row: dict[str, Any] = {
        k: fidelity(ctx.real2[k], ctx.sets[k].prompts) for k in ("single", "two", "heldout")
    }
    dv = ctx.sets["diversity"]
    real_row["diversity"] = diversity(
        ctx.real2["diversity"],
        dv.prompts,
        ctx.features(ctx.real2["diversity"]),
        ctx.gen.s,
        real_feats=ctx.features(ctx.real["diversity"]),
    )
    real_row["fd"], real_row["fd_n"] = out["fd_floor_real_vs_real"], len(all_real2)
    out[REAL] = real_row
    for system in ctx.gen.systems():
        row: dict[str, Any] = {}
        images = {k: ctx.gen.generate(system, k, ps.prompts) for k, ps in ctx.sets.items()}
        for k in ("single", "two", "heldout"):
            row[k] = fidelity(images[k], ctx.sets[k].prompts)
        dv = ctx.sets["diversity"]
        row["diversity"] = diversity(
            images["diversity"],
            dv.prompts,
            ctx.features(images["diversity"]),
            ctx.gen.s,
            real_feats=ctx.features(ctx.real["diversity"]),
        )
        row["fd"] = ctx.fd(torch.cat(list(images.values())), all_real)
        row["fd_n"] = int(sum(len(v) for v in images.values()))
        out[system] = row
        ctx.grids[system] = {k: v[:8] for k, v in images.items()}
    return out


def _sweep_point(ctx: Context, system: str, **kw: Any) -> dict[str, Any]:
    """all-correct (single subset), diversity (diversity subset) and FD for one setting."""
    s = ctx.gen.s
    single = _subset(ctx.sets["single"], s.sweep_single)
    div = _subset(ctx.sets["diversity"], 0, s.sweep_diversity_prompts)
    a = ctx.gen.generate(system, "single", single, **kw)
    b = ctx.gen.generate(system, "diversity", div, **kw)
    fid = fidelity(a, single)
    dv = diversity(b, div, ctx.features(b), s)
    real = torch.cat([ctx.real["single"][: len(single)], ctx.real["diversity"][: len(div)]])
    return {
        "all_correct": fid["all_correct"],
        "attr_acc": fid["attr_acc"],
        "entropy_ratio": dv["entropy_ratio"],
        "coverage": dv["coverage"],
        "feature_distance": dv["feature_distance"],
        "fd": ctx.fd(torch.cat([a, b]), real),
        "n": len(single) + len(div),
    }


def section_guidance(ctx: Context) -> dict[str, Any]:
    """Decoder guidance sweep (unCLIP and GLIDE-like) and prior guidance sweep [Figs. 9-11]."""
    from unclip.progress import progress

    s, main = ctx.gen.s, ctx.gen.main_system()
    out: dict[str, Any] = {"decoder": {}, "prior": []}
    for system in dict.fromkeys([main, GLIDE]):
        rows = []
        for g in progress(s.decoder_scales, desc=f"decoder guidance {system[:20]}"):
            rows.append({"decoder_scale": g, **_sweep_point(ctx, system, decoder_scale=g)})
        out["decoder"][system] = rows
    if main.startswith("unCLIP"):
        for g in progress(s.prior_scales, desc="prior guidance"):
            out["prior"].append({"prior_scale": g, "system": main, **_sweep_point(ctx, main, prior_scale=g)})
    return out


def section_steps(ctx: Context) -> list[dict[str, Any]]:
    """Fidelity and FD against decoder sampler and step count (the default steps, justified)."""
    s, system = ctx.gen.s, ctx.gen.main_system()
    prompts = _subset(ctx.sets["single"], s.steps_n)
    real = ctx.real["single"][: len(prompts)]
    rows = []
    k = ctx.gen.steps
    grid = s.step_grid or {"ddim": (max(1, k // 2), k), "dpmpp_2m": (max(1, k // 2),), "ddpm": (k,)}
    for sampler, counts in grid.items():
        for n in counts:
            t0 = time.perf_counter()
            img = ctx.gen.generate(system, "single", prompts, steps=n, sampler=sampler)
            secs = (time.perf_counter() - t0) / max(1, len(prompts))
            f = fidelity(img, prompts)
            rows.append(
                {
                    "sampler": sampler,
                    "steps": n,
                    "all_correct": f["all_correct"],
                    "attr_acc": f["attr_acc"],
                    "fd": ctx.fd(img, real),
                    "seconds_per_image": secs,
                    "n": len(prompts),
                }
            )
    return rows


def evaluate_model(
    model: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    n: int | None = None,
    features_dir: str | Path | None = None,
    sections: Sequence[str] = ("main", "guidance", "manipulations", "steps"),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the shapes suite on a model directory or bundle.

    Returns:
        (results, artefacts): JSON-able results (every metric with its settings, seed and sample
        counts) and in-memory images for the report's grids.
    """
    from unclip.eval.features import feature_info, load_features
    from unclip.eval.shapes_manip import section_manipulations
    from unclip.pipeline import UnCLIPPipeline

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    full = UnCLIPPipeline.from_pretrained(model)
    if not getattr(full.clip, "has_vision", True):
        raise UserError(
            "the shapes suite decodes true CLIP image embeddings, but this model's CLIP has no image "
            "tower (convert it with --image-encoder DIR)"
        )
    # Base resolution only: the oracle reads 32 px almost exactly; upsamplers see only the low-res image.
    pipe = UnCLIPPipeline(full.clip, full.decoder, full.prior, full.prior_ar, (), full.defaults)
    s = Settings.quick(seed, n) if quick else Settings.full(seed, n)
    size = pipe.decoder.config.image_size
    ctx = Context(Generator(pipe, s), load_features(features_dir), make_prompt_sets(s), size)
    for k, ps in ctx.sets.items():
        ctx.real[k], ctx.real2[k] = render_specs(ps.real, size), render_specs(ps.real2, size)
    info = feature_info(features_dir)
    results: dict[str, Any] = {
        "suite": "shapes",
        "model": str(model),
        "seed": seed,
        "settings": dataclasses.asdict(s)
        | {
            "decoder_steps": ctx.gen.steps,
            "decoder_scale": ctx.gen.scale,
            "decoder_sampler": ctx.gen.sampler,
        },
        "model_defaults": dataclasses.asdict(pipe.defaults)
        if dataclasses.is_dataclass(pipe.defaults)
        else {},
        "resolution": size,
        "upsamplers_skipped": len(full.upsamplers),
        "systems": ctx.gen.systems(),
        "main_system": ctx.gen.main_system(),
        "prompt_counts": {k: len(v.prompts) for k, v in ctx.sets.items()},
        "eval_cnn": {"test_accuracy": info["training"]["test_accuracy"], "feature_dim": info["feature_dim"]},
        "timing": {},
    }
    runners = {
        "main": section_main,
        "guidance": section_guidance,
        "manipulations": section_manipulations,
        "steps": section_steps,
    }
    for name in sections:
        t0 = time.perf_counter()
        results[name] = runners[name](ctx)
        results["timing"][name] = round(time.perf_counter() - t0, 1)
    results["timing"]["total"] = round(time.perf_counter() - t_start, 1)
    results["images_generated"] = ctx.gen.images_made
    artefacts = {"grids": ctx.grids, "sets": ctx.sets, "real": ctx.real, "size": size}
    return results, artefacts
