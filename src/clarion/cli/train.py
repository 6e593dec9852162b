"""``clarion`` commands: train, objectives."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .options import add_batch_size, add_command, add_device, add_on_bad_sample

# command-line flag -> config key (a flag left out leaves the config's value)
FLAG_KEYS = {
    "train": "data.train", "val": "data.val", "objective": "objective.name", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "device": "train.device", "on_bad_sample": "data.on_bad_sample",
    "cache_dir": "data.cache_dir", "noise_ratio": "data.noise_ratio", "validate": "data.validate",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", _train, "train a dual encoder", "Train a dual encoder. Trailing key=value "
                    "arguments override the config, e.g. train.lr=3e-4 objective.options.multi_positive=true.")
    p.add_argument("--train", help="training manifest (CSV/JSONL) or dataset spec NAME:PATH@SPLIT; "
                   "webdataset:DIR streams shards (data.stream)")
    p.add_argument("--val", help="validation manifest, scored every epoch (best model by mean R@1)")
    p.add_argument("--objective", help="objective name (see `clarion objectives`)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--epochs", type=int)
    add_batch_size(p, None)
    add_device(p, None, "auto | cpu | cuda | cuda:N")
    p.add_argument("--config", type=Path, help="YAML recipe")
    add_on_bad_sample(p, None)
    p.add_argument("--cache-dir", help="cache decoded, resampled clips here")
    p.add_argument("--noise-ratio", type=float, help="shuffle the captions of this fraction of training pairs "
                   "(seeded by data.noise_seed; the corrupted pairs are listed in RUN/noisy_pairs.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--validate-data", dest="validate", action="store_const", const="fail",
                       help="check the train/val data first (as `clarion data check --strict`) and refuse to start on "
                       "problems (data.validate=fail)")
    check.add_argument("--validate-data-warn", dest="validate", action="store_const", const="warn",
                       help="check the data first, report problems and train anyway (data.validate=warn)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    add_command(sub, "objectives", _objectives, "list the registered training objectives")


def _train(args: argparse.Namespace) -> int:
    from ..models import load_model_config
    from ..train.loop import train

    flags = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.overrides)
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").exists():
        config_path = args.out / "config.yaml"
    cfg = load_model_config(config_path, overrides)
    summary = train(cfg, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 reports
        print(json.dumps(summary, indent=2))
    return 0


def _objectives(args: argparse.Namespace) -> int:
    from ..objectives import available

    print("\n".join(available()))
    return 0
