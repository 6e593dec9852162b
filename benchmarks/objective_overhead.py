"""Cost of SVR over its base objective, printed as JSON.

    python benchmarks/objective_overhead.py [--device cpu|cuda] [--quick]

1. ``loss``: forward + backward of the objective alone on random unit embeddings, for
   B ∈ {64, 128, 256, 512, 1024} and d ∈ {256, 512, 1024}; median of repeats, ratio to the
   base objective (infonce or siglip) at the same (B, d). Peak memory on CUDA only
   (torch.cuda.max_memory_allocated); on CPU it is reported as null.
2. ``train_step``: one full optimiser step of the default model (log-mel CNN + transformer,
   B = 64 clips of 4 s) with each objective; median over steps after warm-up, ratio to base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clarion.config import Config
from clarion.models import build_model, train_tokenizer
from clarion.objectives import build_objective

OBJECTIVES = [
    ("infonce", "infonce", {}),
    ("infonce+svr static", "infonce+svr", {"radius": "static"}),
    ("infonce+svr dynamic", "infonce+svr", {"radius": "dynamic"}),
    ("siglip", "siglip", {}),
    ("siglip+svr static", "siglip+svr", {"radius": "static"}),
    ("siglip+svr dynamic", "siglip+svr", {"radius": "dynamic"}),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up, and peak CUDA MiB."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def loss_grid(device: torch.device, batches: list[int], dims: list[int], repeats: int) -> list[dict]:
    rows = []
    for b in batches:
        for d in dims:
            a = F.normalize(torch.randn(b, d, device=device), dim=1).requires_grad_(True)
            t = F.normalize(torch.randn(b, d, device=device), dim=1).requires_grad_(True)
            ids = torch.arange(b, device=device)
            base_time = {}
            for label, name, options in OBJECTIVES:
                objective = build_objective(name, options, batch_size=b).to(device)

                def step():
                    a.grad = t.grad = None
                    objective.zero_grad(set_to_none=True)
                    objective(a, t, ids).loss.backward()

                seconds, peak = timed(step, device, repeats)
                base = label.split("+")[0]
                base_time.setdefault(base, seconds)
                rows.append({"objective": label, "B": b, "d": d, "ms": round(1e3 * seconds, 3),
                             "ratio_to_base": round(seconds / base_time[base], 3), "peak_MiB": peak and round(peak, 1)})
    return rows


def train_steps(device: torch.device, batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    cfg = Config()
    captions = ["a loud siren wails then a short high beep sounds twice"] * batch
    tokenizer = train_tokenizer(captions, cfg.model.vocab_size)
    wave = torch.randn(batch, int(cfg.audio.sample_rate * cfg.audio.clip_seconds), device=device)
    ids = torch.arange(batch, device=device)
    rows, base_time = [], {}
    for label, name, options in OBJECTIVES:
        model = build_model(cfg, tokenizer).to(device).train()
        objective = build_objective(name, options, batch_size=batch).to(device)
        optimizer = torch.optim.AdamW([*model.parameters(), *objective.parameters()], lr=1e-4)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                a, t = model.embed_audio(wave), model.embed_text(captions)
            loss = objective(a.float(), t.float(), ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds, peak = timed(step, device, repeats)
        base = label.split("+")[0]
        base_time.setdefault(base, seconds)
        rows.append({"objective": label, "B": batch, "ms": round(1e3 * seconds, 1),
                     "ratio_to_base": round(seconds / base_time[base], 3), "peak_MiB": peak and round(peak, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="B ∈ {64, 256}, d = 256, fewer repeats")
    parser.add_argument("--step-batch", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches, dims, repeats = ([64, 256], [256], 3) if args.quick else ([64, 128, 256, 512, 1024], [256, 512, 1024], 10)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "loss": loss_grid(device, batches, dims, repeats),
        "train_step": train_steps(device, args.step_batch, 3 if args.quick else 8),
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
