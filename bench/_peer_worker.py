"""The peer side of ``bench/vs_peers.py``: runs in ``.bench-venv`` and imports only torch and the
peer libraries (dalle2-pytorch, diffusers), never ``unclip``.

Called as ``.bench-venv/bin/python bench/_peer_worker.py 'JOB_JSON'``; prints one line
``RESULT {json}`` on stdout. A job names the library, the case and the matched settings, and
carries our parameter count; the worker picks, from a fixed family of its library's configs
(the same level layout as ours, only the width or depth varies), the one whose parameter count
is nearest, and reports every candidate's count so the choice can be checked.

Random weights throughout: throughput does not depend on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # dalle2-pytorch wraps its sampling loops in tqdm
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from _peers_common import closest, measure

DEC_MULTS = (1, 2, 2)  # our decoder-shapes preset's channel multipliers, kept for every peer


def precision_ctx(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pick(target: int, family: dict[str, Callable[[], torch.nn.Module]]) -> tuple[str, dict[str, int]]:
    """Build every candidate on the meta device (no memory, no init cost) and pick the nearest."""
    counts = {}
    for name, build in family.items():
        with torch.device("meta"):
            counts[name] = count(build())
    name, _ = closest(target, counts)
    return name, counts


def measure_job(job: dict, run: Callable[[int, str], object], items: int) -> dict:
    """Sampling jobs: time ``run(steps, precision)`` for each of the job's precisions."""
    return measure(
        job["precisions"],
        run,
        items,
        job["repeats"],
        job.get("steps"),
        job.get("steps_timed"),
        job["warmup_steps"],
    )


# ----------------------------------------------------------------------------- dalle2-pytorch


def dalle2_unet(dim: int, embed_dim: int) -> torch.nn.Module:
    from dalle2_pytorch import Unet

    return Unet(
        dim=dim,
        image_embed_dim=embed_dim,
        dim_mults=DEC_MULTS,
        num_resnet_blocks=2,
        cond_on_image_embeds=True,
        cond_on_text_encodings=False,
    )


def dalle2_decoder(job: dict) -> tuple[Any, str, dict[str, int]]:
    from dalle2_pytorch import Decoder

    e = job["embed_dim"]
    family = {f"dim={d}": (lambda d=d: dalle2_unet(d, e)) for d in range(32, 129, 8)}
    name, counts = pick(job["target_params"], family)
    torch.manual_seed(0)
    unet = family[name]()
    # Matched to ours: v-prediction, fixed (not learned) variance, cosine schedule, DDIM (eta 0).
    decoder = Decoder(
        unet=unet,
        image_size=job["size"],
        timesteps=1000,
        sample_timesteps=max(2, job.get("steps_timed") or 2),
        beta_schedule="cosine",
        predict_v=True,
        learned_variance=False,
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )
    cfg = (
        f"Unet({name}, dim_mults={DEC_MULTS}, num_resnet_blocks=2, cond_on_image_embeds=True, "
        f"image_embed_dim={e}) in Decoder(image_size={job['size']}, predict_v=True, learned_variance=False, "
        "beta_schedule=cosine, DDIM eta 0)"
    )
    return decoder, cfg, counts


def dalle2_decoder_sample(job: dict) -> dict:
    decoder, cfg, counts = dalle2_decoder(job)
    b = job["batch"]
    emb = torch.randn(b, job["embed_dim"])

    def run(steps: int, precision: str) -> None:
        decoder.sample_timesteps = (steps,)
        with precision_ctx(precision):
            decoder.sample(image_embed=emb, cond_scale=job["guidance"])

    res = measure_job(job, run, b)
    note = "CFG: two separate forwards per step (dalle2-pytorch does not batch them)"
    return {"config": cfg, "params": count(decoder), "candidates": counts, "note": note, **res}


def dalle2_decoder_train(job: dict) -> dict:
    decoder, cfg, counts = dalle2_decoder(job)
    decoder.train()
    b, s = job["batch"], job["size"]
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-4)
    images = torch.rand(b, 3, s, s)  # dalle2-pytorch takes [0, 1] images and normalises itself
    emb = torch.randn(b, job["embed_dim"])

    def run(steps: int, precision: str) -> None:
        for _ in range(steps):
            with precision_ctx(precision):  # autocast around the forward (and loss) only
                loss = decoder(images, image_embed=emb)
            loss.float().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    n = job["train_steps"]
    res = measure(job["precisions"], run, b * n, job["repeats"], steps_timed=n, warmup_steps=1)
    return {"config": cfg + ", AdamW", "params": count(decoder), "candidates": counts, **res}


def dalle2_prior(job: dict) -> tuple[Any, str, dict[str, int]]:
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

    e, heads = job["embed_dim"], job["embed_dim"] // 64

    def net(depth: int) -> torch.nn.Module:
        return DiffusionPriorNetwork(
            dim=e, depth=depth, dim_head=64, heads=heads, max_text_len=job["text_len"]
        )

    family = {f"depth={k}": (lambda k=k: net(k)) for k in range(1, 13)}
    name, counts = pick(job["target_params"], family)
    torch.manual_seed(0)
    prior = DiffusionPrior(
        net=family[name](),
        image_embed_dim=e,
        timesteps=1000,
        cond_drop_prob=0.1,
        condition_on_text_encodings=True,
    ).eval()
    cfg = (
        f"DiffusionPriorNetwork(dim={e}, {name}, dim_head=64, heads={heads}, max_text_len={job['text_len']}) "
        f"in DiffusionPrior(image_embed_dim={e}, x0, cosine, DDIM)"
    )
    return prior, cfg, counts


def dalle2_prior_sample(job: dict) -> dict:
    prior, cfg, counts = dalle2_prior(job)
    b, e = job["batch"], job["embed_dim"]
    # DiffusionPrior.sample needs a CLIP to embed raw text; with precomputed text conditioning
    # its sampling loop is p_sample_loop (what sample() calls, minus CLIP and best-of).
    text_cond = {"text_embed": torch.randn(b, e), "text_encodings": torch.randn(b, job["text_len"], e)}

    def run(steps: int, precision: str) -> None:
        with torch.no_grad(), precision_ctx(precision):
            prior.p_sample_loop((b, e), text_cond=text_cond, cond_scale=job["guidance"], timesteps=steps)

    res = measure_job(job, run, b)
    note = "p_sample_loop with precomputed text conditioning; CFG: two separate forwards per step"
    return {"config": cfg, "params": count(prior), "candidates": counts, "note": note, **res}


# ----------------------------------------------------------------------------- diffusers


def diffusers_unet(c: int, embed_dim: int, size: int, context_dim: int) -> torch.nn.Module:
    """UNet2DConditionModel in the Karlo/unCLIP decoder layout, at our levels and multipliers."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    chans = tuple(c * m for m in DEC_MULTS)
    unet = UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=chans,
        layers_per_block=2,
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        class_embed_type="identity",
        cross_attention_dim=context_dim,
        attention_head_dim=64,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=32 if c % 32 == 0 else 16,
    )
    proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=4,
        clip_embeddings_dim=embed_dim,
        time_embed_dim=4 * c,
        cross_attention_dim=context_dim,
    )
    return torch.nn.ModuleDict({"unet": unet, "text_proj": proj})


def diffusers_decoder(job: dict) -> tuple[Any, str, dict[str, int]]:
    e, s, ctx = job["embed_dim"], job["size"], job["context_dim"]
    family = {
        f"block_out_channels={tuple(c * m for m in DEC_MULTS)}": (lambda c=c: diffusers_unet(c, e, s, ctx))
        for c in range(32, 129, 16)
    }
    name, counts = pick(job["target_params"], family)
    cfg = (
        f"UNet2DConditionModel({name}, layers_per_block=2, Karlo blocks (ResnetDownsampleBlock2D, "
        f"SimpleCrossAttn down/mid/up), class_embed_type=identity, cross_attention_dim={ctx}, attention_head_dim=64, "
        f"resnet_time_scale_shift=scale_shift, out_channels=3) + UnCLIPTextProjModel(clip_embeddings_dim={e})"
    )
    torch.manual_seed(0)
    return family[name]().eval(), cfg, counts


def diffusers_decoder_sample(job: dict) -> dict:
    from diffusers import UnCLIPScheduler

    model, cfg, counts = diffusers_decoder(job)
    unet, proj = model["unet"], model["text_proj"]
    b, e, s, g = job["batch"], job["embed_dim"], job["size"], job["guidance"]
    sched = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=True)
    emb = torch.randn(b, e)

    @torch.no_grad()
    def run(steps: int, precision: str) -> None:
        with precision_ctx(precision):
            loop(steps)

    def loop(steps: int) -> None:
        # Image-embedding conditioning only: no caption tokens (zero-length text sequence),
        # a zero pooled text embedding; the unconditional half uses the learned CFG embedding.
        hidden, add = proj(
            image_embeddings=emb,
            prompt_embeds=torch.zeros(2 * b, e),
            text_encoder_hidden_states=torch.zeros(2 * b, 0, e),
            do_classifier_free_guidance=True,
        )
        sched.set_timesteps(steps)
        ts = sched.timesteps
        x = torch.randn(b, 3, s, s)
        for i, t in enumerate(ts):
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=hidden, class_labels=add).sample.float()
            uncond, cond = out.chunk(2)
            eps = uncond + g * (cond - uncond)
            prev = ts[i + 1] if i + 1 < len(ts) else None
            x = sched.step(eps, t, x, prev_timestep=prev).prev_sample

    res = measure_job(job, run, b)
    note = "plain loop, UnCLIPScheduler (fixed_small_log, eps), CFG batched (one forward of 2B per step)"
    return {"config": cfg, "params": count(model), "candidates": counts, "note": note, **res}


def diffusers_prior(job: dict) -> tuple[Any, str, dict[str, int]]:
    from diffusers import PriorTransformer

    e, heads, n = job["embed_dim"], job["embed_dim"] // 64, job["text_len"]

    def build(k: int) -> torch.nn.Module:
        return PriorTransformer(
            num_attention_heads=heads,
            attention_head_dim=64,
            num_layers=k,
            embedding_dim=e,
            num_embeddings=n,
            additional_embeddings=4,
        )

    family = {f"num_layers={k}": (lambda k=k: build(k)) for k in range(1, 13)}
    name, counts = pick(job["target_params"], family)
    cfg = (
        f"PriorTransformer(num_attention_heads={heads}, attention_head_dim=64, {name}, embedding_dim={e}, "
        f"num_embeddings={n}, additional_embeddings=4)"
    )
    torch.manual_seed(0)
    return family[name]().eval(), cfg, counts


def diffusers_prior_sample(job: dict) -> dict:
    from diffusers import UnCLIPScheduler

    prior, cfg, counts = diffusers_prior(job)
    b, e, n, g = job["batch"], job["embed_dim"], job["text_len"], job["guidance"]
    # Karlo's prior scheduler settings: x0 ("sample") prediction, clipped to +-5.
    sched = UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", clip_sample=True, clip_sample_range=5.0
    )
    # Unconditional half first, as the unCLIP pipeline batches it.
    text_emb = torch.randn(2 * b, e)
    tokens = torch.randn(2 * b, n, e)
    mask = torch.ones(2 * b, n, dtype=torch.bool)

    @torch.no_grad()
    def run(steps: int, precision: str) -> None:
        with precision_ctx(precision):
            loop(steps)

    def loop(steps: int) -> None:
        sched.set_timesteps(steps)
        ts = sched.timesteps
        x = torch.randn(b, e)
        for i, t in enumerate(ts):
            out = prior(
                torch.cat([x, x]),
                timestep=t,
                proj_embedding=text_emb,
                encoder_hidden_states=tokens,
                attention_mask=mask,
            ).predicted_image_embedding.float()
            uncond, cond = out.chunk(2)
            x0 = uncond + g * (cond - uncond)
            prev = ts[i + 1] if i + 1 < len(ts) else None
            x = sched.step(x0, t, x, prev_timestep=prev).prev_sample
        prior.post_process_latents(x)

    res = measure_job(job, run, b)
    note = "plain loop, UnCLIPScheduler (Karlo prior settings), CFG batched"
    return {"config": cfg, "params": count(prior), "candidates": counts, "note": note, **res}


JOBS: dict[tuple[str, str], Callable[[dict], dict]] = {
    ("dalle2", "decoder_sample"): dalle2_decoder_sample,
    ("dalle2", "decoder_train"): dalle2_decoder_train,
    ("dalle2", "prior_sample"): dalle2_prior_sample,
    ("diffusers", "decoder_sample"): diffusers_decoder_sample,
    ("diffusers", "prior_sample"): diffusers_prior_sample,
}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {n: version(n) for n in ("torch", "dalle2-pytorch", "diffusers")}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: _peer_worker.py 'JOB_JSON'", file=sys.stderr)
        return 2
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    fn = JOBS.get((job["lib"], job["case"]))
    if fn is None:
        print(f"unknown job {job['lib']}/{job['case']}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = fn(job)
    result.update(versions=versions(), threads=torch.get_num_threads(), wall_s=time.perf_counter() - t0)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
