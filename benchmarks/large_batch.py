"""Symmetric InfoNCE at large batch sizes: dense (open_clip ClipLoss) vs tiled, printed as JSON.

    python benchmarks/large_batch.py [--device cpu|cuda] [--batches 1024 4096 ...] [--dtypes fp32 bf16]
                                     [--methods dense tiled] [--tile 4096] [--dim 512] [--out FILE]

One forward + backward of ``½ [CE(s·a tᵀ) + CE(s·t aᵀ)]`` on random unit embeddings a, t
[B, d] (unique clips, so no masking) with a learnable scale:

- ``dense``: the open_clip ``ClipLoss`` computation, logits ``s·a tᵀ`` [B, B] materialised, then
  ``F.cross_entropy`` both ways (the matrix product in the inputs' dtype, the loss in fp32);
- ``tiled``: ``clarion.objectives.tiled.tiled_symmetric_cross_entropy`` (both directions in one
  pass over T×T blocks).

Each (method, B, dtype) runs in a fresh subprocess, so an out-of-memory case is reported
(``"oom": true``) instead of ending the sweep, and the CPU peak is that process's own.
``time_ms`` is the median over ``--repeats`` runs after one warm-up. ``peak_extra_mib``: peak
memory beyond the inputs (CUDA: ``max_memory_allocated`` minus the allocation before the step;
CPU: growth of the process's peak resident set, ``ru_maxrss``). ``tflops`` counts the matmul
work 6·B²·d the way the issue's bound does (forward a tᵀ, and the two gradient products).
On CUDA the sweep also measures the device's dense bf16 matmul rate and reports
``bound_ms = 6·B²·d / rate`` next to each bf16 row.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from clarion.objectives.tiled import tiled_symmetric_cross_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dense_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * (a @ t.T).float()
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def tiled_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, tile: int) -> torch.Tensor:
    return tiled_symmetric_cross_entropy(a, t, scale, torch.arange(len(a), device=a.device), tile=tile)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, batch: int, dtype: str, dim: int, tile: int, repeats: int, device: torch.device) -> dict:
    """One configuration, in this process (the worker side of the sweep)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=-1).to(DTYPES[dtype]).requires_grad_()
    t = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=-1).to(DTYPES[dtype]).requires_grad_()
    logit_scale = torch.tensor(2.659, device=device, requires_grad=True)

    def step() -> float:
        a.grad = t.grad = logit_scale.grad = None
        scale = logit_scale.exp()
        loss = dense_loss(a, t, scale) if method == "dense" else tiled_loss(a, t, scale, tile)
        loss.backward()
        return float(loss)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = peak_rss_mib()
    loss = step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        peak = peak_rss_mib() - before
    seconds = statistics.median(times)
    return {
        "method": method, "batch": batch, "dtype": dtype, "dim": dim, "tile": tile if method == "tiled" else None,
        "time_ms": round(seconds * 1e3, 2), "peak_extra_mib": round(peak, 1), "tflops": round(6 * batch**2 * dim / seconds / 1e12, 3),
        "loss": round(loss, 5), "oom": False,
    }


def matmul_rate(device: torch.device, n: int = 8192) -> float:
    """Measured dense bf16 FLOP/s of an n×n×n product on ``device``."""
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        x @ x
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        x @ x
    torch.cuda.synchronize(device)
    return 20 * 2 * n**3 / (time.perf_counter() - start)


def run_worker(args: argparse.Namespace, method: str, batch: int, dtype: str, timeout: float) -> dict:
    command = [
        sys.executable, __file__, "--worker", method, str(batch), dtype, "--dim", str(args.dim), "--tile", str(args.tile),
        "--repeats", str(args.repeats), "--device", args.device,
    ]
    base = {"method": method, "batch": batch, "dtype": dtype, "dim": args.dim}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "timed_out": True}
    if done.returncode != 0:
        out_of_memory = "out of memory" in done.stderr.lower() or done.returncode in (-9, 137)
        return {**base, "oom": out_of_memory, "error": None if out_of_memory else done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--methods", nargs="+", default=["dense", "tiled"], choices=["dense", "tiled"])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tile", type=int)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--out")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.tile = args.tile or (8192 if cuda else 1024)
    if args.worker:
        method, batch, dtype = args.worker
        print(json.dumps(measure(method, int(batch), dtype, args.dim, args.tile, args.repeats, device)))
        return
    batches = args.batches or ([2**k * 1024 for k in range(0, 11)] if cuda else [1024, 4096, 16384])
    rate = matmul_rate(device) if cuda else None
    rows = []
    for dtype in args.dtypes:
        for batch in batches:
            for method in args.methods:
                row = run_worker(args, method, batch, dtype, args.timeout)
                if rate and dtype == "bf16":
                    row["bound_ms"] = round(6 * batch**2 * args.dim / rate * 1e3, 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "bf16_matmul_tflops": round(rate / 1e12, 1) if rate else None, "rows": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
