"""Decoder and upsampler throughput: bf16 autocast (+ channels_last) vs fp32, in one run.

Measures, at the CPU bundle sizes (decoder 32 px, upsampler 32 -> 128 trained on 32 px crops):

* training images/s (forward + backward + AdamW step) per precision / memory layout;
* sampling image-evaluations/s (one network forward per image per step; the decoder's guided
  batch counts both the conditional and the unconditional half);
* achieved GFLOP/s of those, with FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``,
  next to the plain-matmul GFLOP/s of this machine measured in the same run (fp32 and bf16), so
  "how far from the hardware" is a ratio rather than a guess.

Timings take the best of several repeats (the CPU may be shared). Run::

    python bench/decoder_throughput.py [--threads 2] [--repeats 3] [--compile]

``--compile`` adds a last mode, bf16 + channels_last under ``torch.compile`` (the model compiled
in place, as ``unclip train --compile`` does; compiling is in the warm-up, not the timings, and
the FLOPs are the eager mode's, the same arithmetic).

On a shared, oversubscribed CPU use ``--threads 1``: OpenMP threads spin-wait on each other
and bf16 convolution backward passes in particular slow down erratically.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unclip.models.decoder import Decoder, DecoderConfig
from unclip.models.upsampler import Upsampler, UpsamplerConfig
from unclip.nn.precision import autocast
from unclip.presets import get_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers_common import count_flops

CLIP_DIM, TEXT_DIM, TEXT_LEN = 128, 192, 32  # the shapes CLIP's widths


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(dtype: torch.dtype, repeats: int, n: int = 1024) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    k = 8
    t = best_time(lambda: [a @ b for _ in range(k)], repeats)
    return 2 * n**3 * k / t / 1e9


def make_decoder() -> tuple[Decoder, Callable[[int], dict]]:
    cfg = DecoderConfig.from_dict(
        {**get_preset("decoder-shapes")["model"], "clip_dim": CLIP_DIM, "text_dim": TEXT_DIM}
    )
    torch.manual_seed(0)
    model = Decoder(cfg)

    def batch(b: int) -> dict:
        s = cfg.image_size
        return {
            "x": torch.randn(b, 3, s, s),
            "kw": {
                "image_emb": torch.randn(b, CLIP_DIM),
                "text_tokens": torch.randn(b, TEXT_LEN, TEXT_DIM),
                "text_mask": torch.ones(b, TEXT_LEN, dtype=torch.bool),
                "drop_image": torch.zeros(b, dtype=torch.bool),
                "drop_text": torch.zeros(b, dtype=torch.bool),
            },
        }

    return model, batch


def make_upsampler(size: int) -> tuple[Upsampler, Callable[[int], dict]]:
    cfg = UpsamplerConfig.from_dict(get_preset("upsampler-32-128")["model"])
    torch.manual_seed(0)
    model = Upsampler(cfg)

    def batch(b: int) -> dict:
        return {
            "x": torch.randn(b, 3, size, size),
            "kw": {"low_res": torch.randn(b, 3, size, size), "noise_level": torch.zeros(b, dtype=torch.long)},
        }

    return model, batch


def measure(
    model: torch.nn.Module,
    batch: Callable[[int], dict],
    train_b: int,
    eval_b: int,
    repeats: int,
    compile_last: bool = False,
) -> dict:
    """Train img/s and eval img-evals/s (+ GFLOP/s) for fp32, bf16 and bf16 + channels_last.

    ``compile_last`` adds bf16 + channels_last with the model compiled in place (it stays so).
    """
    results = {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tb, eb = batch(train_b), batch(eval_b)
    t_train = torch.randint(0, 1000, (train_b,))
    t_eval = torch.randint(0, 1000, (eval_b,))
    modes = [("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+cl", "bf16", True)]
    for name, prec, cl in modes + ([("compiled", "bf16", True)] if compile_last else []):
        model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        model.train()
        if name == "compiled":
            model.compile()

        def step(prec: str = prec) -> None:
            with autocast("cpu", prec):
                out = model(tb["x"], t_train, **tb["kw"])
            out.float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def fwd_bwd(prec: str = prec) -> None:
            with autocast("cpu", prec):
                out = model(tb["x"], t_train, **tb["kw"])
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        train_s = best_time(step, repeats)
        eager = results.get("bf16+cl")  # the compiled mode does the same arithmetic
        train_flops = eager["train_flops"] if name == "compiled" else count_flops(fwd_bwd)
        model.eval()

        def evaluate(prec: str = prec) -> None:
            with torch.inference_mode(), autocast("cpu", prec):
                model(eb["x"], t_eval, **eb["kw"])

        eval_s = best_time(evaluate, repeats)
        eval_flops = eager["eval_flops"] if name == "compiled" else count_flops(evaluate)
        results[name] = {
            "train_img_s": train_b / train_s,
            "train_gflops": train_flops / train_s / 1e9,
            "eval_img_s": eval_b / eval_s,
            "eval_gflops": eval_flops / eval_s / 1e9,
            "gflop_per_img_fwd": eval_flops / eval_b / 1e9,
            "train_flops": train_flops,
            "eval_flops": eval_flops,
        }
    model.to(memory_format=torch.contiguous_format)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="decoder training batch (the bundle preset's)")
    parser.add_argument("--crops", type=int, default=64, help="upsampler training batch of 32 px crops")
    parser.add_argument("--compile", action="store_true", help="also time bf16 + channels_last compiled")
    parser.add_argument("--only", choices=["decoder", "upsampler"], help="time one model only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mm = {
        "fp32": matmul_gflops(torch.float32, args.repeats),
        "bf16": matmul_gflops(torch.bfloat16, args.repeats),
    }
    print(
        f"threads {args.threads}; plain 1024^3 matmul: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s"
    )

    rows = []
    if args.only != "upsampler":
        dec, dec_batch = make_decoder()
        print(f"decoder: {sum(p.numel() for p in dec.parameters()) / 1e6:.1f}M params, 32 px")
        rows.append(("decoder 32px", measure(dec, dec_batch, args.batch, 2 * 16, args.repeats, args.compile)))
    if args.only == "decoder":
        report(rows, mm)
        return
    up, up_crop = make_upsampler(32)
    print(
        f"upsampler: {sum(p.numel() for p in up.parameters()) / 1e6:.1f}M params, train 32 px crops, sample 128 px"
    )
    train_res = measure(up, up_crop, args.crops, 16, args.repeats, args.compile)
    up, up_full = make_upsampler(128)  # a fresh, uncompiled module (same seed, same weights)
    full_res = measure(up, up_full, 4, 4, args.repeats, args.compile)
    for k in train_res:  # training on crops, sampling at full size
        train_res[k].update({n: full_res[k][n] for n in ("eval_img_s", "eval_gflops", "gflop_per_img_fwd")})
    rows.append(("upsampler 32->128", train_res))
    report(rows, mm)


def report(rows: list, mm: dict) -> None:
    """The table: per model and mode, train and sampling rates and their share of the bf16 peak."""
    head = f"{'model':<18} {'mode':<8} {'train img/s':>11} {'GFLOP/s':>8} {'%bf16mm':>7} {'sample img-eval/s':>17} {'GFLOP/s':>8} {'%bf16mm':>7}"
    print(head)
    for name, res in rows:
        for mode, r in res.items():
            pct_t = 100 * r["train_gflops"] / mm["bf16"]
            pct_e = 100 * r["eval_gflops"] / mm["bf16"]
            print(
                f"{name:<18} {mode:<8} {r['train_img_s']:>11.1f} {r['train_gflops']:>8.1f} {pct_t:>6.1f}% "
                f"{r['eval_img_s']:>17.1f} {r['eval_gflops']:>8.1f} {pct_e:>6.1f}%"
            )
        base = res["fp32"]
        best = max(res, key=lambda k: res[k]["train_img_s"])
        print(
            f"{name:<18} speed-up over fp32: train x{res['bf16+cl']['train_img_s'] / base['train_img_s']:.2f} "
            f"(bf16+cl), x{res['bf16']['train_img_s'] / base['train_img_s']:.2f} (bf16); "
            f"sampling x{res['bf16+cl']['eval_img_s'] / base['eval_img_s']:.2f} (bf16+cl), "
            f"x{res['bf16']['eval_img_s'] / base['eval_img_s']:.2f} (bf16); fastest training: {best}; "
            f"{res['fp32']['gflop_per_img_fwd']:.2f} GFLOP per forward image"
        )
        if "compiled" in res:
            c, e = res["compiled"], res["bf16+cl"]
            print(
                f"{name:<18} torch.compile over bf16+cl: train x{c['train_img_s'] / e['train_img_s']:.2f}, "
                f"sampling x{c['eval_img_s'] / e['eval_img_s']:.2f}"
            )


if __name__ == "__main__":
    main()
