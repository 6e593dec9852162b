"""``clarion`` commands that score a run on a data set: evaluate (retrieval), zeroshot (classification),
probe (a linear probe on frozen embeddings beside zero-shot)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import add_command, add_device, add_long_audio, add_on_bad_sample, long_audio_overrides, write_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", _evaluate, "text-to-audio and audio-to-text retrieval metrics of a run")
    _add_run_and_data(p, "test manifest, or dataset spec NAME:PATH@SPLIT", "also write the metrics here")
    p.add_argument("--scoring", choices=["cosine", "ot"], default="cosine",
                   help="rank by cosine, or by an entropic transport plan over the whole test set (m-LTM)")
    p.add_argument("--ot-eps", type=float, default=0.03, help="entropic regularisation of --scoring ot")

    p = add_command(sub, "zeroshot", _zeroshot, "zero-shot classification accuracy of a run",
                    "Zero-shot classification: each clip gets the class whose prompt embedding is "
                    "closest. Classes come from the manifest's label column (or --labels); a fold column "
                    "adds per-fold accuracy and their mean.")
    _add_run_and_data(p, "manifest with a label column (and optionally fold), or a dataset spec such as esc50:PATH",
                      "also write the metrics here; stdout leaves the confusion matrix out beyond 20 classes")
    p.add_argument("--labels", type=Path, help="class list, one label per line (default: the manifest's labels, sorted)")
    p.add_argument("--prompt", action="append", metavar="TEMPLATE",
                   help="prompt template containing {label}; repeat to average several "
                   "(default: 'This is a sound of {label}.')")

    p = add_command(sub, "probe", _probe, "linear-probe accuracy of a run's audio embeddings, beside zero-shot",
                    "Logistic regression on the frozen audio embeddings, cross-validated by fold (train on the "
                    "other folds, test on one; mean ± std over folds, as LAION-CLAP and HEAR report), and zero-shot "
                    "accuracy on the same folds. Folds come from the manifest's fold column (esc50:PATH, us8k:PATH), "
                    "else --folds stratified folds are made.")
    _add_run_and_data(p, "manifest with a label column (and optionally fold), or a dataset spec such as esc50:PATH",
                      "also write the results here")
    p.add_argument("--C", type=float, default=1.0, dest="c",
                   help="inverse L2 strength of the logistic regression, as scikit-learn's C (default 1)")
    p.add_argument("--folds", type=int, default=5, help="folds to make when the data has none (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of those folds")
    p.add_argument("--prompt", action="append", metavar="TEMPLATE",
                   help="zero-shot prompt template containing {label} (default: 'This is a sound of {label}.')")


def _add_run_and_data(p: argparse.ArgumentParser, data_help: str, json_help: str) -> None:
    p.add_argument("run", type=Path, help="run or export directory, or hf-clap:PATH (a pretrained Hugging Face CLAP "
                   "folder or cached hub id, used untrained)")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--json", type=Path, help=json_help)
    add_device(p)
    add_on_bad_sample(p)
    add_long_audio(p)


def _load_run_and_data(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """(cfg, model, device, manifest) of ``args.run`` on ``args.data`` under ``args.on_bad_sample``."""
    from ..config import config_from_dict
    from ..data.open import open_source
    from ..rundir import load_model
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    cfg, model = load_model(args.run, device)
    cfg.data.on_bad_sample = args.on_bad_sample
    long_audio = long_audio_overrides(args)
    if long_audio:
        cfg = config_from_dict({**cfg.to_dict(), "audio": {**cfg.to_dict()["audio"], **long_audio}})
    return cfg, model, device, open_source(args.data, args.on_bad_sample)


def _report(metrics: dict, manifest: Any, args: argparse.Namespace, printed: dict | None = None) -> int:
    metrics["counts"]["bad_rows"] = len(manifest.bad)
    write_json(metrics, args.json)
    print(json.dumps(metrics if printed is None else printed, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.embed import evaluate_retrieval
    from ..rundir import load_objective

    cfg, model, device, manifest = _load_run_and_data(args)
    cost_fn = None
    if args.scoring == "ot":  # an m-LTM run ranks with the metric it learned
        cost_fn = getattr(load_objective(args.run, device), "ground_cost", None)
    metrics = evaluate_retrieval(model, manifest, cfg, device, scoring=args.scoring, cost_fn=cost_fn, ot_eps=args.ot_eps)
    return _report(metrics, manifest, args)


def _zeroshot(args: argparse.Namespace) -> int:
    from ..evaluate.zeroshot import DEFAULT_PROMPT, check_prompts, evaluate_zeroshot, read_labels

    prompts = check_prompts(args.prompt or [DEFAULT_PROMPT])
    labels = read_labels(args.labels) if args.labels else None
    cfg, model, device, manifest = _load_run_and_data(args)
    metrics = evaluate_zeroshot(model, manifest, cfg, device, prompts=prompts, labels=labels)
    printed = metrics
    if len(metrics["labels"]) > 20:  # a large confusion matrix goes to --json only
        printed = {k: v for k, v in metrics.items() if k != "confusion"}
    return _report(metrics, manifest, args, printed)


def _probe(args: argparse.Namespace) -> int:
    from ..evaluate.probe import evaluate_probe
    from ..evaluate.zeroshot import DEFAULT_PROMPT, check_prompts

    prompts = check_prompts(args.prompt or [DEFAULT_PROMPT])
    cfg, model, device, manifest = _load_run_and_data(args)
    metrics = evaluate_probe(model, manifest, cfg, device, prompts=prompts, c=args.c, n_folds=args.folds, seed=args.seed)
    return _report(metrics, manifest, args)
