"""The ``clarion`` command: a thin layer over the Python API.

Errors the user can fix (bad config, bad manifest, missing run files) print one line and
exit with status 2; set CLARION_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config


COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", parents=[COMMON], help="generate the synthetic sound-scene benchmark")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--clips", type=int, default=2000, help="training clips (default 2000)")
    p.add_argument("--val-clips", type=int, default=300)
    p.add_argument("--test-clips", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from .data.synth import generate

    summary = generate(
        args.out_dir, n_train=args.clips, n_val=args.val_clips, n_test=args.test_clips, seed=args.seed, workers=args.workers
    )
    clips = summary.get("clips", {})
    print(
        f"wrote {' / '.join(f'{n} {split}' for split, n in clips.items())} clips with captions in "
        f"{', '.join(summary.get('languages', []))} to {args.out_dir} (settings in synth.json)"
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", parents=[COMMON], help="train a dual encoder", description="Train a dual encoder. Trailing key=value "
                       "arguments override the config, e.g. train.lr=3e-4 objective.options.multi_positive=true.")
    p.add_argument("--train", help="training manifest (CSV/JSONL)")
    p.add_argument("--val", help="validation manifest, scored every epoch (best model by mean R@1)")
    p.add_argument("--objective", help="objective name (see `clarion objectives`)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--config", type=Path, help="YAML recipe")
    p.add_argument("--on-bad-sample", choices=["skip", "fail"])
    p.add_argument("--cache-dir", help="cache decoded, resampled clips here")
    p.add_argument("--noise-ratio", type=float, help="shuffle the captions of this fraction of training pairs "
                   "(seeded by data.noise_seed; the corrupted pairs are listed in RUN/noisy_pairs.csv)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .train.loop import train

    flags = {
        "data.train": args.train, "data.val": args.val, "objective.name": args.objective,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.device": args.device,
        "data.on_bad_sample": args.on_bad_sample, "data.cache_dir": args.cache_dir,
        "data.noise_ratio": args.noise_ratio,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.overrides)
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").exists():
        config_path = args.out / "config.yaml"
    cfg = load_config(config_path, overrides)
    summary = train(cfg, args.out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", parents=[COMMON], help="text-to-audio and audio-to-text retrieval metrics of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", required=True, help="test manifest")
    p.add_argument("--json", type=Path, help="also write the metrics here")
    p.add_argument("--device", default="auto")
    p.add_argument("--on-bad-sample", choices=["skip", "fail"], default="skip")
    p.add_argument("--scoring", choices=["cosine", "ot"], default="cosine",
                   help="rank by cosine, or by an entropic transport plan over the whole test set (m-LTM)")
    p.add_argument("--ot-eps", type=float, default=0.03, help="entropic regularisation of --scoring ot")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .data.manifest import read_manifest
    from .evaluate.embed import evaluate_retrieval
    from .rundir import load_model, load_objective
    from .train.loop import resolve_device

    device = resolve_device(args.device)
    cfg, model = load_model(args.run, device)
    cfg.data.on_bad_sample = args.on_bad_sample
    cost_fn = None
    if args.scoring == "ot":  # an m-LTM run ranks with the metric it learned
        cost_fn = getattr(load_objective(args.run, device), "ground_cost", None)
    manifest = read_manifest(args.data, args.on_bad_sample)
    metrics = evaluate_retrieval(model, manifest, cfg, device, scoring=args.scoring, cost_fn=cost_fn, ot_eps=args.ot_eps)
    metrics["counts"]["bad_rows"] = len(manifest.bad)
    text = json.dumps(metrics, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


def _add_objectives(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("objectives", parents=[COMMON], help="list the registered training objectives")
    p.set_defaults(func=lambda args: print("\n".join(__import__("clarion.objectives").objectives.available())) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_train, _add_evaluate, _add_objectives):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from .data.audio import AudioError
    from .data.manifest import ManifestError
    from .rundir import RunError

    try:
        return args.func(args)
    except (ConfigError, ManifestError, RunError, AudioError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("CLARION_DEBUG"):
            raise
        print(f"clarion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
