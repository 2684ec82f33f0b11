"""Training memory per model size: parameters, optimizer state and activations per sample.

For each preset, in a fresh subprocess (so peaks don't mix): build the model, run one training
step (forward + backward + AdamW) at two batch sizes under bf16 autocast on this CPU, and read the
process's peak resident memory. Then

* state = parameters + gradients + AdamW moments + EMA, all fp32 = 20 bytes per parameter;
* activations per sample = (peak at batch 2b - peak at batch b) / b.

The activation figure is what autocast keeps for the backward pass; it carries over to a GPU in
bf16/fp16 roughly as is (the GPU adds the CUDA context, ~0.3-0.5 GB, and allocator slack). Use
it to choose the per-GPU micro-batch: memory ~= state + micro_batch x activations. Run::

    python bench/train_memory.py [--presets decoder-shapes,decoder-64,...] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

DEFAULT = "prior-diffusion-shapes,decoder-shapes,upsampler-32-128,decoder-64,upsampler-64-256"
CLIP_DIM, TEXT_DIM, TEXT_LEN = 512, 512, 77  # a ViT-B-sized CLIP's widths for the large presets


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _child(preset: str, batch: int) -> dict[str, float]:
    """One training step of ``preset`` at ``batch``; returns peak MB and the parameter count."""
    import torch

    from unclip.nn.precision import autocast
    from unclip.presets import get_preset

    torch.manual_seed(0)
    recipe = get_preset(preset)
    kind, model_cfg = recipe["kind"], recipe["model"]
    small = "shapes" in preset or "32-128" in preset
    clip_dim, text_dim, text_len = (128, 128, 32) if small else (CLIP_DIM, TEXT_DIM, TEXT_LEN)
    if kind == "decoder":
        from unclip.models.decoder import Decoder, DecoderConfig
        from unclip.train.decoder import decoder_loss, with_clip_dims

        model = Decoder(DecoderConfig.from_dict(with_clip_dims(model_cfg, clip_dim, text_dim)))
        s = model.config.image_size
        data = {
            "image": torch.randn(batch, 3, s, s),
            "image_emb": torch.randn(batch, clip_dim),
            "text_tokens": torch.randn(batch, text_len, text_dim),
            "text_mask": torch.ones(batch, text_len, dtype=torch.bool),
        }
        loss_fn = decoder_loss
    elif kind == "upsampler":
        from unclip.models.upsampler import Upsampler, UpsamplerConfig
        from unclip.train.upsampler import upsampler_loss

        model = Upsampler(UpsamplerConfig.from_dict(model_cfg))
        c = model.config.crop_size
        data = {"image": torch.randn(batch, 3, c, c), "low_res": torch.randn(batch, 3, c, c)}
        loss_fn = upsampler_loss
    elif kind == "diffusion_prior":
        from unclip.models.prior import DiffusionPrior, DiffusionPriorConfig
        from unclip.train.prior import prior_loss

        cfg = {**model_cfg, "embed_dim": clip_dim, "text_width": text_dim, "max_text_len": text_len}
        model = DiffusionPrior(DiffusionPriorConfig.from_dict(cfg))
        data = {
            "image_emb": torch.nn.functional.normalize(torch.randn(batch, clip_dim), dim=-1),
            "text_emb": torch.nn.functional.normalize(torch.randn(batch, clip_dim), dim=-1),
            "text_tokens": torch.randn(batch, text_len, text_dim),
            "text_mask": torch.ones(batch, text_len, dtype=torch.bool),
        }
        loss_fn = prior_loss
    else:
        raise SystemExit(f"{preset}: kind {kind} is not measured here")
    model.train()
    if kind != "diffusion_prior":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = _peak_mb()
    with autocast("cpu", "bf16"):
        loss, _ = loss_fn(model, data)
    loss.float().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    return {"peak_mb": _peak_mb(), "base_mb": base, "params": n}


def measure(preset: str, batch: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", preset, "--batch", str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=DEFAULT)
    ap.add_argument("--batch", type=int, default=4, help="b: steps are measured at b and 2b")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.batch)))
        return
    print("| preset | parameters | state (fp32 weights, grads, AdamW, EMA) | activations per sample (bf16) |")
    print("|---|---|---|---|")
    for preset in args.presets.split(","):
        # Priors keep little per sample: measure them at a batch large enough to register.
        bs = args.batch * (32 if "prior" in preset else 1)
        a, b = measure(preset, bs), measure(preset, 2 * bs)
        act = max(b["peak_mb"] - a["peak_mb"], 0.0) / bs
        state_mb = a["params"] * 20 / 2**20
        print(f"| {preset} | {a['params'] / 1e6:.1f} M | {state_mb:,.0f} MB | {act:,.1f} MB |")


if __name__ == "__main__":
    main()
