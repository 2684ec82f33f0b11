"""Load test of `unclip serve` on loopback: req/s, p50/p99 latency and 429 rate (not a test).

Starts ``unclip serve`` in a subprocess on 127.0.0.1 (a tiny random model unless ``--model``),
then for micro-batching on (``--max-batch 8``) and off (``--max-batch 1``) runs 1, 8 and 64
concurrent clients for ``--seconds`` each, every client posting text-to-image requests in a
loop. Stops by itself; never talks to anything but 127.0.0.1.

    python bench/serve_load.py --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def start_server(model: Path, port: int, max_batch: int, queue_size: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "unclip",
        "-q",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--queue-size",
        str(queue_size),
        "--timeout",
        "60",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def run_clients(url: str, clients: int, seconds: float, size: str) -> dict[str, float]:
    latencies: list[float] = []
    counts = {"ok": 0, "429": 0, "other": 0}
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client(i: int) -> None:
            k = 0
            while time.monotonic() < end:
                body = {
                    "prompt": "a big red circle",
                    "n": 1,
                    "size": size,
                    "seed": i * 1000 + k,
                    "response_format": "b64_json",
                }
                t = time.monotonic()
                r = await http.post("/v1/images/generations", json=body)
                k += 1
                if r.status_code == 200:
                    counts["ok"] += 1
                    latencies.append(time.monotonic() - t)
                elif r.status_code == 429:
                    counts["429"] += 1
                    await asyncio.sleep(0.05)
                else:
                    counts["other"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.monotonic() - t0
    total = sum(counts.values())
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "rps": counts["ok"] / wall,
        "p50": q[49],
        "p99": q[98],
        "rate429": counts["429"] / max(total, 1),
        "errors": counts["other"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: a tiny random model)")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each cell")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--queue-size", type=int, default=16)
    ap.add_argument("--size", default="64x64")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from pipeline_helpers import make_tiny_model

            model = make_tiny_model(Path(tmp) / "tiny")
        rows = []
        for max_batch in (8, 1):
            proc = start_server(model, args.port, max_batch, args.queue_size)
            try:
                for clients in (1, 8, 64):
                    r = asyncio.run(
                        run_clients(f"http://127.0.0.1:{args.port}", clients, args.seconds, args.size)
                    )
                    rows.append((max_batch, clients, r))
                    print(
                        f"max_batch={max_batch} clients={clients:3d}  {r['rps']:6.2f} req/s  "
                        f"p50 {r['p50'] * 1000:7.0f} ms  p99 {r['p99'] * 1000:7.0f} ms  "
                        f"429 {r['rate429'] * 100:5.1f}%  errors {r['errors']}",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(10)
    on = {c: r["rps"] for b, c, r in rows if b == 8}
    off = {c: r["rps"] for b, c, r in rows if b == 1}
    for c in (8, 64):
        print(f"micro-batching on/off throughput at {c} clients: {on[c] / max(off[c], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
