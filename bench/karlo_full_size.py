"""Time a random-init pipeline of Karlo's full shapes: seconds per image and peak memory.

    python bench/karlo_full_size.py --device cuda --precision fp16        # a GPU
    python bench/karlo_full_size.py --small                                # a quick CPU check of the script

The components are the converted-Karlo kinds (``src/unclip/models/karlo``) built from their
default configs (Karlo v1 alpha's shapes: prior 1.02 B, decoder 0.89 B, two 0.69 B super-res
UNets, CLIP ViT-L/14 text tower), with random weights: the timing does not depend on the weights,
and none can be downloaded here. Weights stay fp32; the networks run under autocast in
``--precision``. Two settings are timed:

* reference: diffusers' UnCLIPPipeline defaults: ancestral DDPM, prior 25 / decoder 25 /
  super-res 7 steps, guidance 4 / 8;
* fast: prior DDIM 10, decoder DPM-Solver++(2M) 15, super-res DDIM 5, same guidance.

Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from unclip.clip.hf_clip import HFClipConfig, build_hf_clip
from unclip.clip.interface import TextEncoding
from unclip.models.karlo.prior import KarloPriorConfig
from unclip.models.karlo.stages import (
    KarloDecoder,
    KarloDecoderConfig,
    KarloPrior,
    KarloPriorStageConfig,
    KarloUpsampler,
    KarloUpsamplerConfig,
)
from unclip.models.karlo.text_proj import KarloTextProjConfig
from unclip.models.karlo.unet import KarloUNetConfig
from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.model_dir import PipelineDefaults

SETTINGS = {
    "reference": {"prior_steps": 25, "decoder_steps": 25, "up_steps": 7, "prior_sampler": "ddpm",
                  "decoder_sampler": "ddpm", "upsampler_sampler": "ddpm"},
    "fast": {"prior_steps": 10, "decoder_steps": 15, "up_steps": 5, "prior_sampler": "ddim",
             "decoder_sampler": "dpmpp_2m", "upsampler_sampler": "ddim"},
}  # fmt: skip


def build(small: bool) -> UnCLIPPipeline:
    """A random-init Karlo-shaped pipeline (``small``: every width / depth cut down)."""
    width, layers, heads = (64, 2, 2) if small else (768, 12, 12)
    text = {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "projection_dim": width,
    }
    clip = build_hf_clip(HFClipConfig(text_config=text, projection_dim=width, normalize=False))
    if small:
        prior_net = KarloPriorConfig(
            num_attention_heads=2, attention_head_dim=32, num_layers=2, embedding_dim=width
        )
        unet = KarloUNetConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=16,
                               cross_attention_dim=64)  # fmt: skip
        sr = KarloUNetConfig.karlo_super_res().replace(
            block_out_channels=(32, 32, 64, 64), layers_per_block=1
        )
        proj = KarloTextProjConfig(clip_embeddings_dim=width, time_embed_dim=4 * 32, cross_attention_dim=64)
    else:
        prior_net, unet, sr, proj = (
            KarloPriorConfig(),
            KarloUNetConfig(),
            KarloUNetConfig.karlo_super_res(),
            KarloTextProjConfig(),
        )
    prior = KarloPrior(KarloPriorStageConfig(net=prior_net, text_width=width))
    decoder = KarloDecoder(KarloDecoderConfig(unet=unet, text_proj=proj, text_dim=width))
    up = KarloUpsampler(KarloUpsamplerConfig(unet=sr, scale=sr.sample_size // unet.sample_size))
    return UnCLIPPipeline(clip, decoder, prior=prior, upsamplers=[up])


def encoding(pipe: UnCLIPPipeline, batch: int, device: torch.device) -> TextEncoding:
    """B captions of 12 random tokens (no tokenizer can be downloaded here)."""
    ids = torch.randint(1, 49000, (batch, 77), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(batch, 77, dtype=torch.bool)
    mask[:, :12] = True
    return pipe.clip.encode_tokens(ids.to(device), mask.to(device))


def run_once(pipe: UnCLIPPipeline, text: TextEncoding, setting: dict, precision: str) -> float:
    d = pipe.defaults
    pipe.defaults = d.replace(
        decoder_sampler=setting["decoder_sampler"], upsampler_sampler=setting["upsampler_sampler"]
    )
    n = len(text)
    gens = pipe.generators(range(n))
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        emb = torch.cat(
            [
                pipe.prior.sample(text[i : i + 1], 1, guidance_scale=4.0, steps=setting["prior_steps"], generator=g,
                                  sampler=setting["prior_sampler"], precision=precision)
                for i, g in enumerate(gens)
            ]
        )  # fmt: skip
        pipe.decode(
            emb, pipe.decoder_noise(gens), text=text, steps=setting["decoder_steps"], guidance_scale=8.0,
            sampler=setting["decoder_sampler"], generator=gens, upsampler_steps=setting["up_steps"],
            upsampler_generators=gens, precision=precision,
        )  # fmt: skip
    sync()
    pipe.defaults = d
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, help="fp16 / bf16 / fp32 (default: the device's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="cut-down shapes: a quick check of the script")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    from unclip.nn.precision import default_precision

    precision = args.precision or default_precision(device)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    pipe = build(args.small).to(device)
    pipe.defaults = PipelineDefaults(prior_best_of=1)
    build_s = time.perf_counter() - t0
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in pipe.components().items()}
    text = encoding(pipe, args.batch, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "batch": args.batch,
        "small": args.small,
        "params": params,
        "build_seconds": round(build_s, 2),
    }
    for name, setting in SETTINGS.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_once(pipe, text, setting, precision)  # warm-up
        best = min(run_once(pipe, text, setting, precision) for _ in range(args.repeats))
        result[name] = {**setting, "seconds_per_image": round(best / args.batch, 3)}
        if device.type == "cuda":
            result[name]["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
