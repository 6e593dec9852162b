"""Training and evaluation throughput of the default model, printed as JSON.

    python benchmarks/train_throughput.py [--data SYNTH_DIR] [--clips 512] [--device cpu|cuda] [--batch-size 64] [key=value ...]

Trains two epochs on the synthetic benchmark (generating a small one when --data is not
given) with the on-disk clip cache: epoch 1 decodes (cold cache), epoch 2 reads the cache
(warm). Reports clips/s for each epoch, the share of step time spent waiting for the data
loader, and evaluation (embedding) throughput for clips and captions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from clarion.models import load_model_config
from clarion.data.manifest import read_manifest
from clarion.evaluate.embed import embed_captions, embed_clips, eval_precision
from clarion.rundir import load_model
from clarion.runtime import resolve_device
from clarion.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="output folder of `clarion synth` (default: generate --clips clips)")
    parser.add_argument("--clips", type=int, default=512, help="training clips to generate without --data (a quarter as many for validation)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from clarion.synth.generate import generate

            data = tmp / "synth"
            generate(data, n_train=args.clips, n_val=max(args.clips // 4, 2), n_test=8, seed=0)
        device = resolve_device(args.device)
        cfg = load_model_config(None, [
            f"data.train={data / 'train.csv'}", f"data.cache_dir={tmp / 'cache'}", "data.pairs=one_per_clip",
            f"data.num_workers={args.workers}", f"train.batch_size={args.batch_size}", "train.epochs=2",
            f"train.device={device}", *args.overrides,
        ])
        summary = train(cfg, tmp / "run")
        epochs = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in epochs if r["type"] == "epoch"]
        steps_per_epoch = summary["step"] // 2
        clips = steps_per_epoch * args.batch_size

        _, model = load_model(tmp / "run", device)
        val = read_manifest(data / "val.csv")
        embed_clips(model, val, cfg, device)  # warm-up
        start = time.perf_counter()
        _, index, _ = embed_clips(model, val, cfg, device)
        clip_s = time.perf_counter() - start
        start = time.perf_counter()
        embed_captions(model, val.captions, device, cfg.train.eval_batch_size, eval_precision(cfg, device))
        caption_s = time.perf_counter() - start

    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "overrides": args.overrides,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_clips_per_s_cold_cache": round(clips / epochs[0]["time_s"], 1),
        "train_clips_per_s_warm_cache": round(clips / epochs[1]["time_s"], 1),
        "data_wait_share_cold_cache": round(epochs[0]["data_wait_share"], 4),
        "data_wait_share_warm_cache": round(epochs[1]["data_wait_share"], 4),
        "eval_clips_per_s": round(len(index) / clip_s, 1),
        "eval_captions_per_s": round(len(val.captions) / caption_s, 1),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
