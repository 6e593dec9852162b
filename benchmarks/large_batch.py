"""Symmetric InfoNCE at large batch sizes: dense (open_clip ClipLoss) vs tiled vs fused, printed as JSON.

    python benchmarks/large_batch.py [--device cpu|cuda] [--batches 1024 4096 ...] [--dtypes fp32 bf16]
                                     [--methods dense tiled fused] [--tile 4096] [--dim 512] [--out FILE]

One forward + backward of ``½ [CE(s·a tᵀ) + CE(s·t aᵀ)]`` on random unit embeddings a, t
[B, d] (unique clips, so no masking) with a learnable scale:

- ``dense``: the open_clip ``ClipLoss`` computation, logits ``s·a tᵀ`` [B, B] materialised, then
  ``F.cross_entropy`` both ways (the matrix product in the inputs' dtype, the loss in fp32);
- ``tiled``: ``clarion.objectives.tiled.tiled_symmetric_cross_entropy`` (both directions in one
  pass over T×T blocks).
- ``fused``: ``clarion.objectives.fused.fused_symmetric_cross_entropy`` (the Triton kernels; a
  row is an error, never a silent tiled run, where they cannot run: on the CPU set
  ``TRITON_INTERPRET=1``, for tiny batches only). ``--fused-blocks m,n,k,grad_m,grad_n,warps,stages``
  sets its tiles.

Each (method, B, dtype) runs in a fresh subprocess, so an out-of-memory case is reported
(``"oom": true``) instead of ending the sweep, and the CPU peak is that process's own.
``time_ms`` is the median over ``--repeats`` runs after one warm-up. ``peak_extra_mib``: peak
memory beyond the inputs (CUDA: ``max_memory_allocated`` minus the allocation before the step;
CPU: growth of the process's peak resident set, ``ru_maxrss``). ``tflops`` counts the matmul
work 6·B²·d the way the issue's bound does (forward a tᵀ, and the two gradient products).
On CUDA the sweep also measures the device's dense matmul rates (bf16, and fp32 as torch runs
it by default) and reports next to each row ``bound_ms = 6·B²·d / rate`` (the matmul bound for
that dtype) and ``x_bound = time_ms / bound_ms``. The fused kernels do 12·B²·d (two products
forward, four backward), so their best is ``x_bound`` ≈ 2 at the matmul rate.
``peak_beyond_grads_mib`` is ``peak_extra_mib`` less the two input gradients (2·B·d elements).
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

from clarion.objectives import fused
from clarion.objectives.tiled import tiled_symmetric_cross_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dense_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * (a @ t.T).float()
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def tiled_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, tile: int) -> torch.Tensor:
    return tiled_symmetric_cross_entropy(a, t, scale, torch.arange(len(a), device=a.device), tile=tile)


def fused_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, blocks: "fused.Blocks | None") -> torch.Tensor:
    reason = fused.unavailable_reason(a)
    if reason is not None:
        raise RuntimeError(f"fused kernels cannot run here: {reason}")
    return fused.fused_symmetric_cross_entropy(a, t, scale, torch.arange(len(a), device=a.device), blocks=blocks)


def loss_of(method: str, a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, tile: int, blocks) -> torch.Tensor:
    if method == "dense":
        return dense_loss(a, t, scale)
    if method == "tiled":
        return tiled_loss(a, t, scale, tile)
    return fused_loss(a, t, scale, blocks)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, batch: int, dtype: str, dim: int, tile: int, repeats: int, device: torch.device,
            blocks: "fused.Blocks | None" = None) -> dict:
    """One configuration, in this process (the worker side of the sweep)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=-1).to(DTYPES[dtype]).requires_grad_()
    t = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=-1).to(DTYPES[dtype]).requires_grad_()
    logit_scale = torch.tensor(2.659, device=device, requires_grad=True)

    def step() -> float:
        a.grad = t.grad = logit_scale.grad = None
        scale = logit_scale.exp()
        loss = loss_of(method, a, t, scale, tile, blocks)
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
    grads_mib = 2 * batch * dim * a.element_size() / 2**20
    return {
        "method": method, "batch": batch, "dtype": dtype, "dim": dim, "tile": tile if method == "tiled" else None,
        "blocks": list(vars(blocks or fused.default_blocks(dim)).values()) if method == "fused" else None,
        "time_ms": round(seconds * 1e3, 2), "peak_extra_mib": round(peak, 1),
        "peak_beyond_grads_mib": round(peak - grads_mib, 1) if device.type == "cuda" else None,
        "tflops": round(6 * batch**2 * dim / seconds / 1e12, 3), "loss": round(loss, 5), "oom": False,
    }


def matmul_rate(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured dense FLOP/s of an n×n×n product in ``dtype`` on ``device`` (random data)."""
    x = torch.randn(n, n, device=device, dtype=dtype)
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
    ] + (["--fused-blocks", args.fused_blocks] if args.fused_blocks else [])
    base = {"method": method, "batch": batch, "dtype": dtype, "dim": args.dim}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "timed_out": True}
    if done.returncode != 0:
        out_of_memory = "out of memory" in done.stderr.lower() or done.returncode in (-9, 137)
        out_of_memory = out_of_memory and "outofresources" not in done.stderr.lower().replace(" ", "")  # Triton shared memory
        return {**base, "oom": out_of_memory, "error": None if out_of_memory else done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--methods", nargs="+", default=["dense", "tiled", "fused"], choices=["dense", "tiled", "fused"])
    p.add_argument("--fused-blocks", help="fused kernels' tiles: m,n,k,grad_m,grad_n,warps,stages (default: by d)")
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
        blocks = fused.Blocks(*(int(v) for v in args.fused_blocks.split(","))) if args.fused_blocks else None
        print(json.dumps(measure(method, int(batch), dtype, args.dim, args.tile, args.repeats, device, blocks)))
        return
    batches = args.batches or ([2**k * 1024 for k in range(0, 11)] if cuda else [1024, 4096, 16384])
    rates = {name: matmul_rate(device, dtype=DTYPES[name]) for name in args.dtypes} if cuda else {}
    rows = []
    for dtype in args.dtypes:
        for batch in batches:
            for method in args.methods:
                row = run_worker(args, method, batch, dtype, args.timeout)
                if dtype in rates:
                    row["bound_ms"] = round(6 * batch**2 * args.dim / rates[dtype] * 1e3, 2)
                    if "time_ms" in row:
                        row["x_bound"] = round(row["time_ms"] / row["bound_ms"], 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "triton": getattr(fused.triton, "__version__", None),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "bf16_matmul_tflops": round(rates["bf16"] / 1e12, 1) if "bf16" in rates else None,
        "fp32_matmul_tflops": round(rates["fp32"] / 1e12, 1) if "fp32" in rates else None, "rows": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
