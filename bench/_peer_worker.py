"""The peer side of ``bench/vs_peers.py``: runs in ``.bench-venv`` and imports only torch and the
peer libraries (dalle2-pytorch, diffusers), never ``unclip``.

Called as ``.bench-venv/bin/python bench/_peer_worker.py 'JOB_JSON'``; prints one line
``RESULT {json}`` on stdout. A job names the library, the case and the matched settings, and
carries our parameter count; the worker picks, from a fixed family of its library's configs
(the same level layout as ours, only the width or depth varies), the one whose parameter count
is nearest, and reports every candidate's count so the choice can be checked.

Random weights throughout: throughput does not depend on them. The end-to-end jobs ("e2e")
match each stage (text tower, prior, decoder, upsampler) on its own and report every stage's
count; ``"counts_only": true`` returns the choice without building or timing anything.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from _peers_common import closest, flop_fields, measure, measure_calls

DEC_MULTS = (1, 2, 2)  # our decoder-shapes preset's channel multipliers, kept for every peer
UP_MULTS = (1, 2, 4)  # our shapes bundle upsampler's channel multipliers (e2e case)


def precision_ctx(precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pick(
    target: int,
    family: dict[str, Callable[[], torch.nn.Module]],
    counter: Callable[[torch.nn.Module], int] = count,
) -> tuple[str, dict[str, int]]:
    """Build every candidate on the meta device (no memory, no init cost) and pick the nearest
    (``counter`` counts the parameters that take part, by default all of them)."""
    counts = {}
    for name, build in family.items():
        with torch.device("meta"):
            counts[name] = counter(build())
    name, _ = closest(target, counts)
    return name, counts


def measure_job(job: dict, run: Callable[[int, str], object], items: int) -> dict:
    """Sampling jobs: time ``run(steps, precision)`` for each of the job's precisions, and count
    the FLOPs of the full step count."""
    res = measure(
        job["precisions"],
        run,
        items,
        job["repeats"],
        job.get("steps"),
        job.get("steps_timed"),
        job["warmup_steps"],
    )
    return {**res, **flop_fields(run, items, job.get("steps"))}


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
    res.update(flop_fields(run, b))
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


def diffusers_unet(
    c: int, embed_dim: int, size: int, context_dim: int, out_channels: int = 3
) -> torch.nn.Module:
    """UNet2DConditionModel in the Karlo/unCLIP decoder layout, at our levels and multipliers."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    chans = tuple(c * m for m in DEC_MULTS)
    unet = UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=out_channels,
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


# ----------------------------------------------------------------------------- end to end (e2e)
#
# Text -> CLIP text encoding -> prior -> 32 px decoder -> x4 upsampler -> 128 px, through each
# library's own end-to-end entry point. Every stage's size is picked to be nearest to ours
# (job["stage_targets"]). All three sides tokenize with our shapes bundle's BPE tokenizer file
# (job["tokenizer_file"], read with `tokenizers`; no unclip import), so the vocabularies and the
# caption length match.


def bpe_tokenizer(job: dict) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(job["tokenizer_file"])
    tok.no_padding()
    tok.no_truncation()
    return tok


def bpe_ids(tok: Any, prompts: list[str], length: int) -> torch.Tensor:
    """(B, length) token ids, padded with 0 (the pad id of our tokenizer and of x_clip)."""
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, enc in enumerate(tok.encode_batch(prompts)):
        row = enc.ids[:length]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def e2e_texts(job: dict) -> list[str]:
    """Prompt-major, one entry per image (for the libraries without num_images_per_prompt)."""
    return [p for p in job["prompts"] for _ in range(job["per_prompt"])]


def e2e_choices(job: dict, families: dict[str, tuple[dict, Callable[[torch.nn.Module], int]]]) -> dict:
    """Pick each stage's candidate nearest to our stage's count: {stage: (name, counts)}."""
    targets = job["stage_targets"]
    return {k: pick(targets[k], fam, counter) for k, (fam, counter) in families.items()}


def e2e_result(chosen: dict, cfg: str, extra: dict | None = None) -> dict:
    """The worker's row: total and per-stage parameter counts of the chosen configs."""
    stages = {k: counts[name] for k, (name, counts) in chosen.items()}
    out = {
        "config": cfg,
        "params": sum(stages.values()),
        "stage_params": stages,
        "candidates": {k: counts for k, (_, counts) in chosen.items()},
    }
    return {**out, **(extra or {})}


def dalle2_e2e_families(job: dict) -> dict:
    from dalle2_pytorch import DiffusionPriorNetwork, Unet
    from x_clip.x_clip import TextTransformer

    e, w, n = job["embed_dim"], job["text_width"], job["text_len"]

    def text(m: float) -> torch.nn.Module:
        # x_clip's text tower; its feed-forward is GEGLU (3 matrices), so the width multiplier
        # is searched at our depth, heads and width.
        return TextTransformer(
            dim=w,
            num_tokens=job["vocab_size"],
            max_seq_len=n,
            dim_head=64,
            depth=job["text_layers"],
            heads=job["text_heads"],
            ff_mult=m,
        )

    def prior(k: int) -> torch.nn.Module:
        return DiffusionPriorNetwork(
            dim=e, depth=k, dim_head=job["prior_head_dim"], heads=job["prior_heads"], max_text_len=n
        )

    def decoder(d: int) -> torch.nn.Module:
        return Unet(
            dim=d,
            image_embed_dim=e,
            text_embed_dim=w,
            cond_on_image_embeds=True,
            cond_on_text_encodings=True,
            max_text_len=n,
            dim_mults=DEC_MULTS,
            num_resnet_blocks=2,
        )

    def upsampler(d: int) -> torch.nn.Module:
        # Ours has no attention anywhere (middle included); GroupNorm groups must divide the width.
        return Unet(
            dim=d,
            dim_mults=UP_MULTS,
            num_resnet_blocks=2,
            lowres_cond=True,
            attend_at_middle=False,
            resnet_groups=math.gcd(d, 8),
        )

    latent = w * e  # x_clip's to_text_latent (no bias), part of the text stage
    return {
        "text": (
            {f"ff_mult={m:.3g}": (lambda m=m: text(m)) for m in (2, 8 / 3, 3, 4)},
            lambda mod: count(mod) + latent,
        ),
        "prior": ({f"depth={k}": (lambda k=k: prior(k)) for k in range(1, 13)}, count),
        "decoder": ({f"dim={d}": (lambda d=d: decoder(d)) for d in range(32, 129, 8)}, count),
        "upsampler": ({f"dim={d}": (lambda d=d: upsampler(d)) for d in range(16, 65, 2)}, count),
    }


def dalle2_e2e(job: dict) -> dict:
    from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior
    from x_clip import CLIP

    families = dalle2_e2e_families(job)
    chosen = e2e_choices(job, families)
    name = {k: v[0] for k, v in chosen.items()}
    e, w, n = job["embed_dim"], job["text_width"], job["text_len"]
    cfg = (
        f"x_clip CLIP text tower (TextTransformer(dim={w}, depth={job['text_layers']}, heads={job['text_heads']}, "
        f"dim_head=64, {name['text']}, vocab {job['vocab_size']}, {n} tokens); a 1-layer 32-wide image tower, "
        f"unused, not counted) -> DiffusionPrior(DiffusionPriorNetwork(dim={e}, {name['prior']}, "
        f"heads={job['prior_heads']}, dim_head={job['prior_head_dim']}), DDIM) -> Decoder(unets=("
        f"Unet({name['decoder']}, dim_mults={DEC_MULTS}, num_resnet_blocks=2, image + text conditioned), "
        f"Unet({name['upsampler']}, dim_mults={UP_MULTS}, num_resnet_blocks=2, lowres_cond, no attention)), "
        f"image_sizes=({job['decoder_size']}, {job['image_size']}), predict_v, fixed variance, cosine, DDIM eta 0) "
        "in DALLE2"
    )
    if job.get("counts_only"):
        return e2e_result(chosen, cfg)
    (p_steps, d_steps, u_steps), b = job["steps"], len(e2e_texts(job))
    note = (
        f"DALLE2(token ids, cond_scale=({job['decoder_guidance']:g}, 1), prior_cond_scale={job['prior_guidance']:g}), "
        f"prior_num_samples={job['best_of']}; tokenizing (our BPE) is timed; CFG: two separate forwards per "
        f"guided step; its prior DDIM runs {p_steps - 1} network steps when asked for {p_steps}; "
        "the decoder re-encodes the text with CLIP"
    )

    torch.manual_seed(0)
    fam = {k: v[0] for k, v in families.items()}
    clip = CLIP(
        text_encoder=fam["text"][name["text"]](),
        dim_text=w,
        dim_image=32,
        dim_latent=e,
        text_seq_len=n,
        visual_enc_depth=1,
        visual_heads=1,
        visual_dim_head=32,
        visual_image_size=32,
        visual_patch_size=8,
    )
    prior = DiffusionPrior(
        net=fam["prior"][name["prior"]](),
        clip=clip,
        timesteps=1000,
        sample_timesteps=p_steps,
        cond_drop_prob=0.1,
        condition_on_text_encodings=True,
    )
    decoder = Decoder(
        unet=(fam["decoder"][name["decoder"]](), fam["upsampler"][name["upsampler"]]()),
        clip=clip,
        image_sizes=(job["decoder_size"], job["image_size"]),
        timesteps=1000,
        sample_timesteps=(d_steps, u_steps),
        beta_schedule=("cosine", "cosine"),
        predict_v=True,
        learned_variance=False,
        image_cond_drop_prob=0.1,
        text_cond_drop_prob=0.5,
    )
    model = DALLE2(prior=prior, decoder=decoder, prior_num_samples=job["best_of"]).eval()
    tok, texts = bpe_tokenizer(job), e2e_texts(job)

    def run(warmup: bool, precision: str) -> None:
        p, d, u = job["warmup_steps"] if warmup else job["steps"]
        prior.sample_timesteps, decoder.sample_timesteps = p, (d, u)
        ids = bpe_ids(tok, texts, n)
        with precision_ctx(precision):
            images = model(
                ids, cond_scale=(job["decoder_guidance"], 1.0), prior_cond_scale=job["prior_guidance"]
            )
        assert images.shape == (b, 3, job["image_size"], job["image_size"]), images.shape

    res = measure_calls(job["precisions"], run, b, job["repeats"])
    return e2e_result(chosen, cfg, {"note": note, **res})


def diffusers_e2e_families(job: dict) -> dict:
    import transformers
    from diffusers import PriorTransformer, UNet2DModel

    e, w, n = job["embed_dim"], job["text_width"], job["text_len"]
    if e != w:
        raise ValueError("diffusers' UnCLIPTextProjModel needs the text width equal to the CLIP width")
    tok = bpe_tokenizer(job)
    ids = {k: tok.token_to_id(v) for k, v in job["special_tokens"].items()}

    def text(k: int) -> torch.nn.Module:
        cfg = transformers.CLIPTextConfig(
            vocab_size=job["vocab_size"],
            hidden_size=w,
            intermediate_size=4 * w,
            num_attention_heads=job["text_heads"],
            num_hidden_layers=k,
            max_position_embeddings=n,
            projection_dim=e,
            pad_token_id=ids["pad"],
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
        )
        return transformers.CLIPTextModelWithProjection(cfg)

    def prior(k: int) -> torch.nn.Module:
        return PriorTransformer(
            num_attention_heads=job["prior_heads"],
            attention_head_dim=job["prior_head_dim"],
            num_layers=k,
            embedding_dim=e,
            num_embeddings=n,
            additional_embeddings=4,
        )

    def upsampler(c: int) -> torch.nn.Module:
        # Karlo's super-res layout (no attention, as ours), 6 input channels: x_t + upscaled image.
        return UNet2DModel(
            sample_size=job["image_size"],
            in_channels=6,
            out_channels=3,
            block_out_channels=tuple(c * m for m in UP_MULTS),
            layers_per_block=2,
            down_block_types=("ResnetDownsampleBlock2D",) * len(UP_MULTS),
            up_block_types=("ResnetUpsampleBlock2D",) * len(UP_MULTS),
            resnet_time_scale_shift="scale_shift",
            add_attention=False,
            norm_num_groups=math.gcd(c, 32),
        )

    def decoder(c: int) -> torch.nn.Module:
        # out_channels 6 (learned variance range): the pipeline splits the decoder's output in two.
        return diffusers_unet(c, e, job["decoder_size"], job["context_dim"], out_channels=6)

    return {
        "text": ({f"num_hidden_layers={k}": (lambda k=k: text(k)) for k in range(1, 7)}, count),
        "prior": ({f"num_layers={k}": (lambda k=k: prior(k)) for k in range(1, 13)}, count),
        "decoder": (
            {
                f"block_out_channels={tuple(c * m for m in DEC_MULTS)}": (lambda c=c: decoder(c))
                for c in range(32, 129, 16)
            },
            count,
        ),
        "upsampler": (
            {
                f"block_out_channels={tuple(c * m for m in UP_MULTS)}": (lambda c=c: upsampler(c))
                for c in range(16, 65, 8)
            },
            count,
        ),
    }


def interpolate_bf16_in_fp32() -> None:
    """Let UnCLIPPipeline run under bf16 autocast on CPU: its bicubic antialiased upscaling of the
    decoder output (bf16 there) has no bf16 CPU kernel, so that one call runs in fp32 (cast in
    and out). ``functools.wraps`` keeps the signature the pipeline inspects for ``antialias``."""
    import functools

    import diffusers.pipelines.deprecated.unclip.pipeline_unclip as mod

    functional = torch.nn.functional

    @functools.wraps(functional.interpolate)
    def interpolate(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.dtype == torch.bfloat16:
            return functional.interpolate(x.float(), *args, **kwargs).to(x.dtype)
        return functional.interpolate(x, *args, **kwargs)

    class Functional:
        def __getattr__(self, name: str) -> Any:
            return getattr(functional, name)

    shim = Functional()
    shim.interpolate = interpolate
    mod.F = shim


def diffusers_e2e(job: dict) -> dict:
    import transformers
    from diffusers import UnCLIPPipeline, UnCLIPScheduler

    families = diffusers_e2e_families(job)
    chosen = e2e_choices(job, families)
    name = {k: v[0] for k, v in chosen.items()}
    e, n, tokens = job["embed_dim"], job["text_len"], job["special_tokens"]
    cfg = (
        f"UnCLIPPipeline: CLIPTextModelWithProjection(hidden_size={job['text_width']}, {name['text']}, "
        f"heads={job['text_heads']}, vocab {job['vocab_size']}, {n} tokens) -> PriorTransformer("
        f"num_attention_heads={job['prior_heads']}, attention_head_dim={job['prior_head_dim']}, {name['prior']}, "
        f"embedding_dim={e}, num_embeddings={n}) -> UNet2DConditionModel({name['decoder']}, Karlo blocks, "
        f"out_channels=6) + UnCLIPTextProjModel(clip_embeddings_dim={e}) -> UNet2DModel({name['upsampler']}, "
        f"layers_per_block=2, no attention, {job['image_size']} px) as super_res_first and super_res_last; "
        "UnCLIPScheduler x3 (Karlo settings)"
    )
    note = (
        f"UnCLIPPipeline.__call__ (guidance {job['prior_guidance']:g}/{job['decoder_guidance']:g}, "
        "output_type='np'); CFG batched; "
        "super_res_first and super_res_last are one module (Karlo ships two of one architecture: "
        "memory, not time); decoder out_channels 6 (learned_range), as the pipeline requires; bf16: "
        "its bicubic upscaling of the decoder output runs in fp32 (no bf16 CPU kernel)"
    )
    if job.get("counts_only"):
        return e2e_result(chosen, cfg)

    torch.manual_seed(0)
    fam = {k: v[0] for k, v in families.items()}
    dec = fam["decoder"][name["decoder"]]()
    super_res = fam["upsampler"][name["upsampler"]]()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(job),
        pad_token=tokens["pad"],
        bos_token=tokens["bos"],
        eos_token=tokens["eos"],
        model_max_length=n,
    )
    pipe = UnCLIPPipeline(
        prior=fam["prior"][name["prior"]]().eval(),
        decoder=dec["unet"].eval(),
        text_proj=dec["text_proj"].eval(),
        text_encoder=fam["text"][name["text"]]().eval(),
        tokenizer=tok,
        super_res_first=super_res.eval(),
        super_res_last=super_res,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    )
    pipe.set_progress_bar_config(disable=True)
    interpolate_bf16_in_fp32()
    b = len(job["prompts"]) * job["per_prompt"]

    def run(warmup: bool, precision: str) -> None:
        p, d, u = job["warmup_steps"] if warmup else job["steps"]
        with precision_ctx(precision):
            out = pipe(
                job["prompts"],
                num_images_per_prompt=job["per_prompt"],
                prior_num_inference_steps=p,
                decoder_num_inference_steps=d,
                super_res_num_inference_steps=u,
                prior_guidance_scale=job["prior_guidance"],
                decoder_guidance_scale=job["decoder_guidance"],
                output_type="np",
            )
        assert out.images.shape == (b, job["image_size"], job["image_size"], 3), out.images.shape

    res = measure_calls(job["precisions"], run, b, job["repeats"])
    return e2e_result(chosen, cfg, {"note": note, **res})


JOBS: dict[tuple[str, str], Callable[[dict], dict]] = {
    ("dalle2", "decoder_sample"): dalle2_decoder_sample,
    ("dalle2", "decoder_train"): dalle2_decoder_train,
    ("dalle2", "prior_sample"): dalle2_prior_sample,
    ("diffusers", "decoder_sample"): diffusers_decoder_sample,
    ("diffusers", "prior_sample"): diffusers_prior_sample,
    ("dalle2", "e2e"): dalle2_e2e,
    ("diffusers", "e2e"): diffusers_e2e,
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
