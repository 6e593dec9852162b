"""Cost of the m-LTM loss (clarion's solvers) vs the reference approach and InfoNCE, printed as JSON.

    python benchmarks/ot_solver.py [--device cpu|cuda] [--batches 128 256 1024 4096] [--pairing aligned|random] [--quick]

Each row: forward + backward of one loss on random unit embeddings a, t [B, d] (d = 1024),
median seconds over repeats after a warm-up, the solver's iteration count, and peak memory on
CUDA (torch.cuda.max_memory_allocated; null on CPU). Methods:

- ``infonce``: clarion's symmetric InfoNCE (the baseline step).
- ``mltm``: clarion's m-LTM loss (log-domain Sinkhorn to tol 1e-5, implicit-differentiation backward).
- ``mltm partial``: the same with entropic partial OT, mass 0.9.
- ``reference``: the authors' approach: POT ``ot.sinkhorn`` (exp domain, numItermax 1000,
  stopThr 1e-9 as POT's default) on torch tensors, autograd through every unrolled iteration.
- ``reference partial``: POT ``ot.partial.entropic_partial_wasserstein`` (numItermax 1000), likewise.

The reference rows are skipped where their unrolled graphs would not fit (``skipped`` says why).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clarion.objectives import build_objective
from clarion.objectives.mltm import GroundMetric, ground_cost

REFERENCE_MAX_ITER = 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, repeats: int, budget_s: float) -> dict:
    """Median seconds of ``fn()`` (which returns an iteration count or None) and peak CUDA MiB."""
    iterations = fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        iterations = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"ms": round(1e3 * statistics.median(times), 3), "repeats": len(times),
            "iterations": iterations, "peak_MiB": peak and round(peak, 1)}


def matching_loss(plan: torch.Tensor) -> torch.Tensor:
    """−(1/B) Σ log π_ii − log B (every clip once in the batch)."""
    b = plan.shape[0]
    return -plan.diagonal().clamp(min=1e-30).log().mean() - torch.log(torch.tensor(float(b)))


def reference_step(a: torch.Tensor, t: torch.Tensor, eps: float, partial_mass: float | None) -> int:
    import ot

    b = len(a)
    cost = ground_cost(GroundMetric("euclidean", None), t, a, 1e-6)
    weights = torch.full((b,), 1.0 / b, dtype=a.dtype, device=a.device)
    if partial_mass is None:
        plan, log = ot.sinkhorn(weights, weights, cost, eps, numItermax=REFERENCE_MAX_ITER, log=True)
        iterations = int(log["niter"])
    else:
        plan, log = ot.partial.entropic_partial_wasserstein(
            weights, weights, cost, eps, m=partial_mass, numItermax=REFERENCE_MAX_ITER, log=True)
        iterations = len(log["err"]) * 10  # POT records the error every 10 iterations
    matching_loss(plan).backward()
    return iterations


def reference_skip(device: torch.device, b: int, partial: bool) -> str | None:
    """Why the unrolled reference is not run at this size, or None."""
    if partial and b > (1024 if device.type == "cuda" else 256):
        return "1000 unrolled partial-OT iterations keep ~4 B×B tensors each: out of memory"
    if not partial and device.type == "cpu" and b > 1024:
        return "minutes per step on CPU"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.05])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed repeats per row, at most")
    parser.add_argument("--quick", action="store_true", help="B = 128 and 256, ε = 0.05, 2 repeats")
    parser.add_argument("--pairing", choices=["aligned", "random"], default="aligned",
                        help="aligned: t_i = normalize(a_i + 0.8 noise), a batch a trained model would see (near-permutation "
                             "plans, few Sinkhorn iterations); random: independent a, t, as at initialisation (dense plans)")
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = args.batches or ([128, 256] if args.quick else [128, 256, 1024] + ([4096] if device.type == "cuda" else []))
    eps_values = [0.05] if args.quick else args.eps
    repeats = 2 if args.quick else args.repeats
    rows = []
    for b in batches:
        g = torch.Generator(device="cpu").manual_seed(b)
        a0 = F.normalize(torch.randn(b, args.dim, generator=g), dim=1).to(device)
        noise = F.normalize(torch.randn(b, args.dim, generator=g), dim=1).to(device)
        t0 = noise if args.pairing == "random" else F.normalize(a0 + 0.8 * noise, dim=1)
        ids = torch.arange(b, device=device)

        def leaves():
            return a0.clone().requires_grad_(True), t0.clone().requires_grad_(True)

        infonce = build_objective("infonce").to(device)

        def infonce_step():
            a, t = leaves()
            infonce(a, t, ids).loss.backward()

        rows.append({"method": "infonce", "B": b, "d": args.dim, "eps": None, **measure(infonce_step, device, repeats, args.budget)})
        for eps in eps_values:
            for label, mass in (("mltm", None), ("mltm partial", 0.9)):
                objective = build_objective("mltm", {"eps": eps, "partial_mass": mass}).to(device)

                def mltm_step(objective=objective):
                    a, t = leaves()
                    out = objective(a, t, ids)
                    out.loss.backward()
                    return int(out.diagnostics["ot_iterations"])

                rows.append({"method": label, "B": b, "d": args.dim, "eps": eps, **measure(mltm_step, device, repeats, args.budget)})
            for label, mass in (("reference", None), ("reference partial", 0.9)):
                skip = reference_skip(device, b, mass is not None)
                if skip:
                    rows.append({"method": label, "B": b, "d": args.dim, "eps": eps, "skipped": skip})
                    continue

                def ref_step(eps=eps, mass=mass):
                    a, t = leaves()
                    return reference_step(a, t, eps, mass)

                try:
                    rows.append({"method": label, "B": b, "d": args.dim, "eps": eps, **measure(ref_step, device, repeats, args.budget)})
                except torch.cuda.OutOfMemoryError:  # the unrolled graph at large B: reported, not fatal
                    torch.cuda.empty_cache()
                    rows.append({"method": label, "B": b, "d": args.dim, "eps": eps, "oom": True})
            print(json.dumps(rows[-5:]), file=sys.stderr)
    by_key = {(r["method"], r["B"], r["eps"]): r for r in rows}
    speedups = []
    for (method, b, eps), row in by_key.items():
        if method.startswith("mltm") and "ms" in row:
            ref = by_key.get((method.replace("mltm", "reference"), b, eps), {})
            base = by_key[("infonce", b, None)]
            speedups.append({"method": method, "B": b, "eps": eps,
                             "speedup_vs_reference": ref.get("ms") and round(ref["ms"] / row["ms"], 1),
                             "ratio_to_infonce": round(row["ms"] / base["ms"], 1)})
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    json.dump({"device": device_name, "pairing": args.pairing, "rows": rows, "summary": speedups}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
