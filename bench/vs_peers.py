"""Side-by-side throughput against the peers: dalle2-pytorch and diffusers' unCLIP parts.

Our side runs in this process (the project venv); each peer runs in a subprocess of the peers'
own venv (``.bench-venv``, made by ``bench/peers_env.py``) through ``bench/_peer_worker.py``,
which imports only torch and the peer libraries. Settings are matched: parameter counts within
10% (each peer's width or depth is chosen from a fixed family to be nearest to ours), the same
resolution, batch, sampler step count, guidance scale (3) and thread count; random weights.

Cases (``--cases``):

* ``decoder32`` / ``decoder64``: decoder sampling, images/s, image-embedding conditioned, 50 DDIM
  steps, guidance 3. Ours: ``Decoder.sample`` (DDIM 50, and DDIM at the shipped bundle's default
  decoder step count); dalle2-pytorch ``Decoder.sample``; diffusers ``UNet2DConditionModel`` in
  the Karlo layout in a plain ``UnCLIPScheduler`` loop with batched CFG.
* ``prior``: prior sampling, embeddings/s, 64 steps, guidance 3, best-of 1. Ours
  ``DiffusionPrior.sample``; dalle2-pytorch ``DiffusionPrior`` + ``DiffusionPriorNetwork``;
  diffusers ``PriorTransformer`` in a plain ``UnCLIPScheduler`` loop.
* ``train``: decoder training, images/s (forward + backward + AdamW) at batch 16, 32 px. Ours
  (fp32, and bf16 autocast + channels_last, our default) vs dalle2-pytorch ``Decoder`` loss.
* ``e2e128``: end to end, text -> 128 px images/s, 4 prompts x 2 images. Ours: ``UnCLIPPipeline``
  built with random weights from the shipped ``shapes`` bundle's component configs (CLIP text
  tower, diffusion prior, 32 px decoder, one x4 upsampler), at the bundle's default steps and
  best-of, and at the peers' steps (25/25/7, diffusers' defaults) with best-of 1. dalle2-pytorch:
  ``DALLE2`` over an ``x_clip`` CLIP, a ``DiffusionPrior`` and a two-unet ``Decoder`` (DDIM);
  diffusers: its ``UnCLIPPipeline``, called as is (under bf16 its one bicubic upscaling runs in
  fp32: no bf16 CPU kernel). Each stage's parameter count is matched to ours within 10%; all
  three tokenize with the bundle's BPE tokenizer file.

Ours always in fp32 and in our bf16 default; peers in fp32 (their default) and under
``torch.autocast("cpu", dtype=torch.bfloat16)``. The plain 2048x2048 matmul GFLOP/s (fp32, bf16)
is measured in the same run, at the start and at the end. ``--quick`` times only a few sampler
steps (2 of the decoder's 50, 4 of the prior's 64; scaled linearly to the full count) and one
training step; ``e2e128`` has stages of unequal per-step cost, so there it instead runs every
stage at a quarter of its step count (rounded up, at least 2) and reports images/s at those
counts. The default is the real measurement. Run::

    python bench/vs_peers.py [--threads 2] [--quick] [--cases decoder32 prior] [--json OUT]

On a shared CPU use ``--threads 1``; results move with load, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers_common import (
    PARAM_TOLERANCE,
    PRECISIONS,
    case_tables,
    cut_steps,
    flop_fields,
    fmt_params,
    fmt_stages,
    measure,
    measure_calls,
    params_match,
    rel_diff,
    stage_diffs,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_peer_worker.py"
CASES = ("decoder32", "decoder64", "prior", "train", "e2e128")
CLIP_DIM = 128  # the shapes CLIP's embedding width: the decoder's conditioning
PRIOR_DIM = 256  # prior case: embedding width = prior width (dalle2-pytorch requires them equal)
TEXT_LEN = 32
GUIDANCE = 3.0

# e2e128: prompts in the shapes world's style; the peers' step counts are diffusers'
# UnCLIPPipeline defaults (prior, decoder, super-res: Karlo's settings; dalle2-pytorch's only
# default is 1000 DDPM steps per stage).
E2E_PROMPTS = (
    "a small red circle",
    "a big blue square left of a green triangle",
    "two yellow stars",
    "a purple circle above a small orange square",
)
PEER_E2E_STEPS = (25, 25, 7)
E2E_WARMUP_STEPS = (2, 2, 2)  # one untimed call first; diffusers' UnCLIPScheduler needs >= 2 steps
E2E_STAGES = {"text": "clip", "prior": "prior", "decoder": "decoder", "upsampler": "upsampler1"}

# step counts and sizes; --quick times `*_timed` steps and scales to the full count
FULL = {
    "repeats": 2,
    "decoder_batch": 8,
    "decoder_steps": 50,
    "decoder_timed": None,
    "prior_batch": 16,
    "prior_steps": 64,
    "prior_timed": None,
    "train_batch": 16,
    "train_steps": 3,
    "e2e_prompts": 4,
    "e2e_per_prompt": 2,
    "e2e_step_div": 1,
    "worker_timeout_s": 3600,
}
QUICK = dict(
    FULL, repeats=2, decoder_timed=2, prior_timed=4, train_steps=1, e2e_step_div=4, worker_timeout_s=900
)


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    flags = ""
    with contextlib.suppress(OSError):
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "threads": threads,
        "loadavg_start": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def matmul_gflops(repeats: int, n: int = 2048) -> dict[str, float]:
    import torch
    from _peers_common import best_time

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t = best_time(
            lambda a=a, b=b: [a @ b for _ in range(2)], max(2, repeats), warmup=lambda a=a, b=b: a @ b
        )
        out[name] = 2 * n**3 * 2 / t / 1e9
    return out


# ----------------------------------------------------------------------------- ours


def our_decoder(size: int) -> Any:
    """Our decoder-shapes preset, image-embedding conditioned (text_dim 0), at 32 or 64 px.

    At 64 px the preset's attention level (8 px at 32 px input: the lowest level) moves to the
    lowest level of the 64 px network, 16 px, so the architecture is the same.
    """
    import torch

    from unclip.models.decoder import Decoder, DecoderConfig
    from unclip.presets import get_preset

    model = dict(get_preset("decoder-shapes")["model"])
    unet = dict(model["unet"])
    if size != unet["image_size"]:
        unet.update(image_size=size, attention_resolutions=[size // 4])
    cfg = DecoderConfig.from_dict({**model, "unet": unet, "clip_dim": CLIP_DIM, "text_dim": 0})
    torch.manual_seed(0)
    return Decoder(cfg)


def decoder_desc(dec: Any) -> str:
    u = dec.config.unet
    return (
        f"decoder-shapes preset: UNet(model_channels={u.model_channels}, channel_mult={tuple(u.channel_mult)}, "
        f"num_res_blocks={u.num_res_blocks}, attention at {tuple(u.attention_resolutions)} px, "
        f"num_head_channels={u.num_head_channels}), clip_dim={dec.config.clip_dim}, text_dim=0, "
        f"context_dim={dec.config.context_dim}, {dec.config.prediction}-prediction, {dec.config.variance}"
    )


def bundle_decoder_default() -> tuple[int, str] | None:
    """The shipped shapes bundle's default decoder (steps, sampler), from its model.json."""
    import unclip

    path = Path(unclip.__file__).parent / "bundles" / "shapes" / "model.json"
    try:
        d = json.loads(path.read_text())["defaults"]
        return int(d["decoder_steps"]), str(d.get("decoder_sampler", "ddim"))
    except (OSError, KeyError, ValueError):
        return None


def nparams(m: Any) -> int:
    return sum(p.numel() for p in m.parameters())


def ours_decoder_sample(size: int, s: dict) -> list[dict]:
    import torch

    from unclip.pipeline import PipelineDefaults

    dec = our_decoder(size).eval()
    b = s["decoder_batch"]
    emb = torch.randn(b, CLIP_DIM)

    rows = []
    variants = [(s["decoder_steps"], "ddim", f"ours Decoder.sample, DDIM {s['decoder_steps']}")]
    default = bundle_decoder_default()
    if default and default != (s["decoder_steps"], "ddim"):
        steps, sampler = default
        variants.append((steps, sampler, f"ours, {sampler} {steps} (shipped bundle default)"))
    for steps, sampler, label in variants:

        def run(n: int, precision: str, sampler: str = sampler) -> None:
            dec.sample(emb, guidance_scale=GUIDANCE, steps=n, sampler=sampler, precision=precision)

        timed = min(steps, s["decoder_timed"] or steps)
        res = measure(PRECISIONS, run, b, s["repeats"], steps, timed, warmup_steps=2)
        res.update(flop_fields(run, b, steps))
        note = None
        if (steps, sampler) != (s["decoder_steps"], "ddim"):
            note = (
                f"PipelineDefaults is DDIM {PipelineDefaults().decoder_steps}; the shapes bundle ships "
                f"{sampler} {steps} (one network evaluation per step, like DDIM)"
            )
        rows.append(
            {
                "side": "ours",
                "label": label,
                "params": nparams(dec),
                "config": decoder_desc(dec),
                "steps": steps,
                "steps_timed": timed,
                "note": note,
                **res,
            }
        )
    return rows


def ours_prior_sample(s: dict) -> dict:
    import torch

    from unclip.models.prior import DiffusionPrior, DiffusionPriorConfig
    from unclip.presets import get_preset

    model = {**get_preset("prior-diffusion-shapes")["model"], "embed_dim": PRIOR_DIM, "text_width": PRIOR_DIM}
    cfg = DiffusionPriorConfig.from_dict(model)
    torch.manual_seed(0)
    prior = DiffusionPrior(cfg).eval()
    b = s["prior_batch"]
    text = SimpleNamespace(
        text_emb=torch.randn(b, PRIOR_DIM),
        text_tokens=torch.randn(b, TEXT_LEN, PRIOR_DIM),
        text_mask=torch.ones(b, TEXT_LEN, dtype=torch.bool),
    )

    def run(steps: int, precision: str) -> None:
        prior.sample(text, guidance_scale=GUIDANCE, steps=steps, best_of=1, precision=precision)

    timed = min(s["prior_steps"], s["prior_timed"] or s["prior_steps"])
    res = measure(PRECISIONS, run, b, s["repeats"], s["prior_steps"], timed, warmup_steps=2)
    res.update(flop_fields(run, b, s["prior_steps"]))
    desc = (
        f"prior-diffusion-shapes preset: width={cfg.width}, layers={cfg.layers}, heads={cfg.heads}, "
        f"embed_dim={cfg.embed_dim}, text_width={cfg.text_width}, {TEXT_LEN} caption tokens"
    )
    note = "best_of=1 (default 2); caption prefix keys/values cached across steps; CFG batched"
    return {
        "side": "ours",
        "label": "ours DiffusionPrior.sample",
        "params": nparams(prior),
        "config": desc,
        "steps": s["prior_steps"],
        "steps_timed": timed,
        "note": note,
        **res,
    }


def ours_train(s: dict) -> dict:
    import torch

    from unclip.nn.precision import autocast
    from unclip.train.decoder import decoder_loss

    dec = our_decoder(32).train()
    b = s["train_batch"]
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-4)
    batch = {"image": torch.rand(b, 3, 32, 32) * 2 - 1, "image_emb": torch.randn(b, CLIP_DIM)}

    def run(steps: int, precision: str) -> None:
        # Our default recipe: bf16 autocast + channels_last; fp32 is contiguous (the --fp32 switch).
        fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
        dec.to(memory_format=fmt)
        for _ in range(steps):
            with autocast("cpu", precision):
                loss, _ = decoder_loss(dec, batch)
            loss.float().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    n = s["train_steps"]
    res = measure(PRECISIONS, run, b * n, s["repeats"], steps_timed=n, warmup_steps=1)
    res.update(flop_fields(run, b))
    dec.to(memory_format=torch.contiguous_format)
    return {
        "side": "ours",
        "label": "ours Decoder, decoder_loss + AdamW",
        "params": nparams(dec),
        "config": decoder_desc(dec) + "; bf16 column also channels_last (our default), fp32 contiguous",
        "note": "bf16 column: bf16 autocast + channels_last (our training default)",
        **res,
    }


def shapes_bundle() -> Path:
    import unclip

    return Path(unclip.__file__).parent / "bundles" / "shapes"


def our_e2e_components() -> tuple[dict[str, Any], Any, Path]:
    """Random-init CLIP, prior, decoder and upsampler at the shapes bundle's configs (its
    component.json files; the weights are not read), the bundle's pipeline defaults and the
    path of its BPE tokenizer file."""
    import torch

    from unclip.checkpoint import get_kind, read_component_header
    from unclip.clip.model import TOKENIZER_FILE, attach_tokenizer_from
    from unclip.pipeline import read_index

    root = shapes_bundle()
    index = read_index(root)
    mods = {}
    for i, name in enumerate(E2E_STAGES.values()):
        header = read_component_header(root / index["components"][name]["path"])
        kind = get_kind(header["kind"])
        torch.manual_seed(i)
        mods[name] = kind.build(kind.config_cls.from_dict(header["config"]))
    # Our BPE tokenizer (a data file, not weights) is needed to encode prompts.
    clip_dir = root / index["components"]["clip"]["path"]
    mods["clip"] = attach_tokenizer_from(mods["clip"], clip_dir)
    return mods, index["defaults"], clip_dir / TOKENIZER_FILE


def e2e_stage_params(mods: dict[str, Any]) -> dict[str, int]:
    """Parameters per stage; for CLIP only the text tower, which is all that text -> image runs."""
    return {
        stage: nparams(mods[name].text if stage == "text" else mods[name])
        for stage, name in E2E_STAGES.items()
    }


def e2e_peer_settings(
    mods: dict[str, Any], defaults: Any, tokenizer_file: Path, stages: dict[str, int]
) -> dict[str, Any]:
    """What the peer workers need to match our e2e stack: widths, depths, tokenizer, guidance."""
    from unclip.clip.tokenizer import EOT, PAD, SOT

    clip, prior, dec, up = (mods[n] for n in E2E_STAGES.values())
    text = clip.config.text
    return {
        "tokenizer_file": str(tokenizer_file),
        "special_tokens": {"pad": PAD, "bos": SOT, "eos": EOT},
        "vocab_size": text.vocab_size,
        "text_len": text.context_length,
        "text_width": text.width,
        "text_layers": text.layers,
        "text_heads": text.heads,
        "embed_dim": clip.embed_dim,
        "prior_heads": prior.config.heads,
        "prior_head_dim": prior.config.width // prior.config.heads,
        "decoder_size": dec.config.unet.image_size,
        "image_size": dec.config.unet.image_size * up.config.scale,
        "context_dim": dec.config.context_dim,
        "prior_guidance": defaults.prior_guidance_scale,
        "decoder_guidance": defaults.decoder_guidance_scale,
        "stage_targets": stages,
    }


def e2e_desc(mods: dict[str, Any]) -> str:
    clip, prior, dec, up = (mods[n] for n in E2E_STAGES.values())
    t, pc, du, uu = clip.config.text, prior.config, dec.config.unet, up.config.unet
    return (
        f"shapes bundle configs, random weights: CLIP text transformer (width {t.width}, {t.layers} layers, "
        f"{t.heads} heads, vocab {t.vocab_size}, {t.context_length} tokens) -> DiffusionPrior (width {pc.width}, "
        f"{pc.layers} layers, {pc.heads} heads, embed {pc.embed_dim}) -> Decoder ({du.image_size} px, "
        f"{du.model_channels} ch x {tuple(du.channel_mult)}, text_dim {dec.config.text_dim}) -> Upsampler "
        f"(x{up.config.scale}, {uu.model_channels} ch x {tuple(uu.channel_mult)}, no attention)"
    )


def e2e_label(head: str, steps: Sequence[int], full: Sequence[int], tail: str = "") -> str:
    """'<head> 25/25/7 steps<tail>', with the full counts named when --quick cut them."""
    cut = "" if tuple(steps) == tuple(full) else f" (quick cut of {'/'.join(map(str, full))})"
    return f"{head} {'/'.join(map(str, steps))} steps{cut}{tail}"


def ours_e2e(s: dict) -> list[dict]:
    """Our UnCLIPPipeline end to end, at the bundle's default steps and at the peers' steps."""
    import dataclasses

    from unclip.pipeline import UnCLIPPipeline

    mods, defaults, tokenizer_file = our_e2e_components()
    stages = e2e_stage_params(mods)
    settings = e2e_peer_settings(mods, defaults, tokenizer_file, stages)
    prompts = list(E2E_PROMPTS[: s["e2e_prompts"]])
    n = s["e2e_per_prompt"]
    bundle_steps = (defaults.prior_steps, defaults.decoder_steps, defaults.upsampler_steps[0])
    variants = [
        (bundle_steps, defaults.prior_best_of, "shapes bundle defaults"),
        (PEER_E2E_STEPS, 1, "peers' steps"),
    ]
    rows = []
    for full, best_of, what in variants:
        steps = cut_steps(full, s["e2e_step_div"])
        pipe = UnCLIPPipeline(
            mods["clip"],
            mods["decoder"],
            prior=mods["prior"],
            upsamplers=[mods["upsampler1"]],
            defaults=dataclasses.replace(defaults, prior_best_of=best_of),
        )

        def run(warmup: bool, precision: str, pipe: Any = pipe, steps: tuple = steps) -> None:
            p, d, u = E2E_WARMUP_STEPS if warmup else steps
            pipe(
                prompts,
                num_images_per_prompt=n,
                prior_steps=p,
                decoder_steps=d,
                upsampler_steps=u,
                prior_guidance_scale=defaults.prior_guidance_scale,
                decoder_guidance_scale=defaults.decoder_guidance_scale,
                precision=precision,
                output_type="pt",
                seed=0,
            )

        res = measure_calls(PRECISIONS, run, len(prompts) * n, s["repeats"])
        note = (
            f"per stage: {fmt_stages(stages)}; UnCLIPPipeline.__call__, output_type='pt'; the prior runs "
            "once for all images (per-image generators), caption prefix cached; CFG batched"
        )
        rows.append(
            {
                "side": "ours",
                "label": e2e_label("ours UnCLIPPipeline,", steps, full, f", best-of {best_of} ({what})"),
                "params": sum(stages.values()),
                "stage_params": stages,
                "config": e2e_desc(mods),
                "steps": list(steps),
                "best_of": best_of,
                "note": note,
                "peer_settings": settings,
                **res,
            }
        )
    return rows


# ----------------------------------------------------------------------------- peers


def run_peer(py: Path, job: dict, label: str, timeout: float) -> dict:
    """One peer job in the peers' venv; a failed worker becomes a row with errors."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    env.pop("PYTHONPATH", None)
    row: dict[str, Any] = {"side": "peer", "label": label, "lib": job["lib"]}
    row.update({k: job[k] for k in ("batch", "steps", "steps_timed", "train_steps") if k in job})
    try:
        proc = subprocess.run(
            [str(py), str(WORKER), json.dumps(job)], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {
            **row,
            "params": None,
            "rates": {},
            "errors": dict.fromkeys(job["precisions"], "worker timed out"),
        }
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:200]
        return {
            **row,
            "params": None,
            "rates": {},
            "errors": dict.fromkeys(job["precisions"], f"worker: {tail}"),
        }
    res = json.loads(lines[-1][len("RESULT ") :])
    return {**row, **res}


def peer_jobs(case: str, s: dict, threads: int, ours: dict) -> list[tuple[dict, str]]:
    """The peer worker jobs of one case, matched to our first row ``ours``, with their labels."""
    base = {
        "threads": threads,
        "precisions": list(PRECISIONS),
        "repeats": s["repeats"],
        "target_params": ours["params"],
    }
    if case.startswith("decoder"):
        size = int(case[len("decoder") :])
        steps = s["decoder_steps"]
        job = dict(
            base,
            case="decoder_sample",
            size=size,
            batch=s["decoder_batch"],
            steps=steps,
            steps_timed=min(steps, s["decoder_timed"] or steps),
            warmup_steps=2,
            embed_dim=CLIP_DIM,
            context_dim=256,
            guidance=GUIDANCE,
        )
        return [
            (dict(job, lib="dalle2"), f"dalle2-pytorch Decoder.sample, DDIM {steps}"),
            (
                dict(job, lib="diffusers"),
                f"diffusers UNet2DConditionModel (Karlo layout), UnCLIPScheduler {steps}",
            ),
        ]
    if case == "prior":
        steps = s["prior_steps"]
        job = dict(
            base,
            case="prior_sample",
            batch=s["prior_batch"],
            steps=steps,
            steps_timed=min(steps, s["prior_timed"] or steps),
            warmup_steps=2,
            embed_dim=PRIOR_DIM,
            text_len=TEXT_LEN,
            guidance=GUIDANCE,
        )
        return [
            (dict(job, lib="dalle2"), f"dalle2-pytorch DiffusionPrior, DDIM {steps}"),
            (dict(job, lib="diffusers"), f"diffusers PriorTransformer, UnCLIPScheduler {steps}"),
        ]
    if case == "train":
        job = dict(
            base,
            case="decoder_train",
            batch=s["train_batch"],
            size=32,
            train_steps=s["train_steps"],
            embed_dim=CLIP_DIM,
            context_dim=256,
        )
        return [(dict(job, lib="dalle2"), "dalle2-pytorch Decoder loss + AdamW")]
    if case == "e2e128":
        steps = cut_steps(PEER_E2E_STEPS, s["e2e_step_div"])
        job = dict(
            base,
            **ours["peer_settings"],
            case="e2e",
            prompts=list(E2E_PROMPTS[: s["e2e_prompts"]]),
            per_prompt=s["e2e_per_prompt"],
            batch=s["e2e_prompts"] * s["e2e_per_prompt"],
            steps=list(steps),
            warmup_steps=list(E2E_WARMUP_STEPS),
            best_of=1,
        )
        return [
            (
                dict(job, lib="dalle2"),
                e2e_label("dalle2-pytorch DALLE2, DDIM", steps, PEER_E2E_STEPS, ", best-of 1"),
            ),
            (dict(job, lib="diffusers"), e2e_label("diffusers UnCLIPPipeline,", steps, PEER_E2E_STEPS)),
        ]
    raise ValueError(f"unknown case {case!r}")


TITLES = {
    "decoder32": ("Decoder sampling, 32 px, batch {decoder_batch}, guidance 3", "img/s"),
    "decoder64": ("Decoder sampling, 64 px, batch {decoder_batch}, guidance 3", "img/s"),
    "prior": ("Prior sampling, {prior_steps} steps, batch {prior_batch}, guidance 3", "emb/s"),
    "train": ("Decoder training, 32 px, batch {train_batch}, forward + backward + AdamW", "img/s"),
    "e2e128": (
        "End to end, text -> 128 px, {e2e_prompts} prompts x {e2e_per_prompt} images, guidance "
        "{prior_guidance:g} (prior) / {decoder_guidance:g} (decoder), steps prior/decoder/upsampler",
        "img/s",
    ),
}


def run_case(case: str, s: dict, threads: int, py: Path, log: Any) -> dict:
    if case.startswith("decoder"):
        ours = ours_decoder_sample(int(case[len("decoder") :]), s)
    elif case == "prior":
        ours = [ours_prior_sample(s)]
    elif case == "e2e128":
        ours = ours_e2e(s)
    else:
        ours = [ours_train(s)]
    target, stages = ours[0]["params"], ours[0].get("stage_params")
    log(f"  ours: {fmt_params(target)} params; {ours[0]['config']}")
    if stages:
        log(f"    per stage: {fmt_stages(stages)}")
    rows = list(ours)
    for job, label in peer_jobs(case, s, threads, ours[0]):
        t0 = time.perf_counter()
        row = run_peer(py, job, label, s["worker_timeout_s"])
        rows.append(row)
        if row.get("params"):
            d = row["params_rel_diff"] = rel_diff(target, row["params"])
            row["params_match"] = params_match(target, row["params"])
            flag = "" if row["params_match"] else f"  MISMATCH (> {PARAM_TOLERANCE:.0%})"
            log(f"  {label}: {fmt_params(row['params'])} params ({d:+.1%}){flag}; {row['config']}")
            if stages and row.get("stage_params"):
                diffs = row["stage_params_rel_diff"] = stage_diffs(stages, row["stage_params"])
                off = [k for k, v in diffs.items() if abs(v) > PARAM_TOLERANCE]
                flag = f"  MISMATCH in {', '.join(off)} (> {PARAM_TOLERANCE:.0%})" if off else ""
                log(f"    per stage: {fmt_stages(row['stage_params'], stages)}{flag}")
                stage_note = f"per stage: {fmt_stages(row['stage_params'], stages)}"
                row["note"] = f"{stage_note}; {row['note']}" if row.get("note") else stage_note
        else:
            log(f"  {label}: failed: {next(iter(row['errors'].values()), '?')}")
        log(f"    ({time.perf_counter() - t0:.0f} s)")
    title, unit = TITLES[case]
    fields = dict(s, **ours[0].get("peer_settings", {}))
    title = title.format(**fields)
    if case == "e2e128" and s["e2e_step_div"] > 1:
        title += f" (quick: step counts cut to 1/{s['e2e_step_div']}, img/s at those counts)"
    return {"case": case, "title": title, "unit": unit, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few timed steps, scaled to the full count; e2e128: 1/4 of the steps (~5 min in all)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        metavar="CASE",
        help=f"subset of {', '.join(CASES)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best of (default 2)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON"
    )
    parser.add_argument("--peer-venv", type=Path, default=ROOT / ".bench-venv", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import peers_env

    try:
        py = peers_env.ensure(args.peer_venv, quiet=True)
    except peers_env.EnvError as exc:
        print(f"vs_peers: error: peer environment: {exc}", file=sys.stderr)
        return 1

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    s = QUICK if args.quick else FULL
    if args.repeats is not None:
        s = dict(s, repeats=args.repeats)

    def log(msg: str) -> None:
        print(msg, flush=True)

    info = machine_info(args.threads)
    mode = "full run"
    if args.quick:
        mode = "quick run (few timed steps, scaled to the full count"
        mode += "; e2e128: 1/4 of the steps, not scaled)" if "e2e128" in args.cases else ")"
    isa = "AMX bf16" if info["amx"] else ("AVX-512 bf16" if info["avx512_bf16"] else "no bf16 matmul units")
    log(
        f"vs_peers: {mode}; {info['cpu']} ({isa}), {info['cores']} cores, {args.threads} thread(s), "
        f"torch {info['torch']}"
    )
    log(f"load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    mm_start = matmul_gflops(s["repeats"])
    log(f"plain 2048^2 matmul: fp32 {mm_start['fp32']:.0f} GFLOP/s, bf16 {mm_start['bf16']:.0f} GFLOP/s")

    t0 = time.perf_counter()
    results = []
    for case in args.cases:
        log(f"\n== {case}")
        results.append(run_case(case, s, args.threads, py, log))
    mm_end = matmul_gflops(s["repeats"])
    info["loadavg_end"] = os.getloadavg()

    log("")
    log(
        f"## Results: {mode}, {args.threads} thread(s), {s['repeats']} repeat(s), {time.perf_counter() - t0:.0f} s"
    )
    log("")
    log(
        f"Plain 2048x2048 matmul, same run: fp32 {mm_start['fp32']:.0f} / {mm_end['fp32']:.0f} GFLOP/s, "
        f"bf16 {mm_start['bf16']:.0f} / {mm_end['bf16']:.0f} GFLOP/s (start / end)."
    )
    for case in results:
        log("")
        log(case_tables(case))
    if args.json:
        payload = {
            "mode": "quick" if args.quick else "full",
            "settings": s,
            "machine": info,
            "matmul_gflops": {"start": mm_start, "end": mm_end},
            "peer_versions": peers_env.versions(args.peer_venv),
            "cases": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
