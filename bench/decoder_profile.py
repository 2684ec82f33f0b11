"""Where a decoder sampling forward spends its time, and how fast its convolutions can run here.

    python bench/decoder_profile.py [--size 32|64] [--threads 1] [--batch 16] [--top 10]

Two measurements in one run, for the speed work of docs/benchmarks.md:

1. ``torch.profiler`` on the forward that sampling repeats: the ``decoder-shapes`` UNet of
   ``bench/vs_peers.py`` at ``--size`` px, a guided batch (``--batch`` = 2 x images), bf16
   autocast + channels_last (our default). Prints each op's share of self CPU time.
2. Every distinct 3x3 convolution of that network, timed alone in bf16 (channels_last) at the
   batch it sees, next to a plain bf16 matmul of the same run: if the lone convolutions already
   run at the matmul rate, a network whose time is mostly convolution is bound by oneDNN, not by
   the code around it.

Random weights: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_throughput import best_time
from vs_peers import CLIP_DIM, our_decoder


def conv_shapes(
    model: torch.nn.Module, x: torch.Tensor, *args: object, **kw: object
) -> list[tuple[int, ...]]:
    """(in, out, H, W) of every 3x3 stride-1 convolution a forward runs, first occurrence order."""
    seen: dict[tuple[int, ...], None] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1):

            def hook(mod: torch.nn.Conv2d, inp: tuple[torch.Tensor, ...], _out: object) -> None:
                h, w = inp[0].shape[-2:]
                seen.setdefault((mod.in_channels, mod.out_channels, h, w), None)

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, *args, **kw)
    for h in hooks:
        h.remove()
    return list(seen)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32, choices=(32, 64))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16, help="forward batch (a guided batch of batch/2 images)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dec = our_decoder(args.size).eval().to(memory_format=torch.channels_last)
    b = args.batch
    x = torch.randn(b, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    t = torch.full((b,), 500)
    emb = torch.randn(b, CLIP_DIM)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            dec(x, t, image_emb=emb)

    fwd = best_time(forward, args.repeats)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            forward()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    print(f"decoder-shapes UNet at {args.size} px, batch {b}, bf16 + channels_last, {args.threads} thread(s)")
    print(f"forward: {fwd * 1e3:.1f} ms (best of {args.repeats})\n")
    print("| op | share of self CPU time | calls per forward |")
    print("|---|---:|---:|")
    for e in events[: args.top]:
        print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} % | {e.count // 3} |")

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    mm = 2 * 2048**3 / best_time(lambda: a @ a, args.repeats) / 1e9
    print(f"\nplain 2048^2 bf16 matmul, same run: {mm:.0f} GFLOP/s\n")
    print("| 3x3 conv (in -> out, H x W) | bf16 GFLOP/s alone | of the matmul rate |")
    print("|---|---:|---:|")
    for cin, cout, h, w in conv_shapes(dec, x, t, image_emb=emb):
        wt = torch.randn(cout, cin, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        xi = torch.randn(b, cin, h, w, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        sec = best_time(lambda xi=xi, wt=wt: F.conv2d(xi, wt, padding=1), args.repeats)
        gf = 2 * 9 * cin * cout * h * w * b / sec / 1e9
        print(f"| {cin} -> {cout}, {h} x {w} | {gf:.0f} | {100 * gf / mm:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
