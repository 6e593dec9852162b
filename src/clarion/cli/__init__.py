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
    p.add_argument("--train", help="training manifest (CSV/JSONL) or dataset spec NAME:PATH@SPLIT; "
                   "webdataset:DIR streams shards (data.stream)")
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
    check = p.add_mutually_exclusive_group()
    check.add_argument("--validate-data", dest="validate", action="store_const", const="fail",
                       help="check the train/val data first (as `clarion data check --strict`) and refuse to start on "
                       "problems (data.validate=fail)")
    check.add_argument("--validate-data-warn", dest="validate", action="store_const", const="warn",
                       help="check the data first, report problems and train anyway (data.validate=warn)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .train.loop import train

    flags = {
        "data.train": args.train, "data.val": args.val, "objective.name": args.objective,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.device": args.device,
        "data.on_bad_sample": args.on_bad_sample, "data.cache_dir": args.cache_dir,
        "data.noise_ratio": args.noise_ratio, "data.validate": args.validate,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.overrides)
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").exists():
        config_path = args.out / "config.yaml"
    cfg = load_config(config_path, overrides)
    summary = train(cfg, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 reports
        print(json.dumps(summary, indent=2))
    return 0


def _add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", parents=[COMMON], help="write a manifest or dataset as WebDataset tar shards",
                       description="Write one sample per clip ({key}.flac|wav + {key}.json with all its captions under "
                       "\"text\") into OUT_DIR/shard-000000.tar, ... and OUT_DIR/shards.json (counts, source, settings, "
                       "skipped rows and clips). Read them back with the spec webdataset:OUT_DIR (--train streams them).")
    p.add_argument("source", metavar="MANIFEST|SPEC", help="manifest file, or dataset spec NAME:PATH[@SPLIT]")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--max-samples-per-shard", type=int, default=1000, help="default 1000")
    p.add_argument("--max-shard-bytes", type=_size, help="close a shard before it grows past this size "
                   "(bytes, or with a K/M/G suffix, powers of 1024)")
    p.add_argument("--format", choices=["flac", "wav"], default="flac",
                   help="flac: 16-bit (default); wav: 32-bit float, lossless")
    p.add_argument("--sample-rate", type=int, help="resample to this rate before writing (default: keep each file's)")
    p.add_argument("--max-seconds", type=float, help="keep only the first seconds of longer clips")
    p.add_argument("--on-bad-sample", choices=["skip", "fail"], default="skip")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT_DIR")
    p.set_defaults(func=_shards)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000000, 512M, 1G)") from None


def _shards(args: argparse.Namespace) -> int:
    from .data.shards import write_shards

    index = write_shards(
        args.source, args.out_dir, max_samples_per_shard=args.max_samples_per_shard, max_shard_bytes=args.max_shard_bytes,
        audio_format=args.format, sample_rate=args.sample_rate, max_seconds=args.max_seconds,
        on_bad_sample=args.on_bad_sample, overwrite=args.overwrite,
    )
    skipped = index["skipped"]
    print(
        f"wrote {index['total_samples']} samples ({index['total_captions']} captions) in {len(index['shards'])} shards "
        f"to {args.out_dir}; skipped {skipped['rows']} bad rows and {skipped['clips']} bad clips"
        + (f" ({', '.join(f'{n} {r}' for r, n in skipped['by_reason'].items())})" if skipped["by_reason"] else "")
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", parents=[COMMON], help="text-to-audio and audio-to-text retrieval metrics of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", required=True, help="test manifest, or dataset spec NAME:PATH@SPLIT")
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
    _write_json(metrics, args.json)
    print(json.dumps(metrics, indent=2))
    return 0


def _write_json(metrics: dict, path: Path | None) -> None:
    """Write ``metrics`` to ``path`` (the --json option), when given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")


def _add_zeroshot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", parents=[COMMON], help="zero-shot classification accuracy of a run",
                       description="Zero-shot classification: each clip gets the class whose prompt embedding is "
                       "closest. Classes come from the manifest's label column (or --labels); a fold column "
                       "adds per-fold accuracy and their mean.")
    p.add_argument("run", type=Path)
    p.add_argument("--data", required=True, help="manifest with a label column (and optionally fold), or a "
                   "dataset spec such as esc50:PATH")
    p.add_argument("--labels", type=Path, help="class list, one label per line (default: the manifest's labels, sorted)")
    p.add_argument("--prompt", action="append", metavar="TEMPLATE",
                   help="prompt template containing {label}; repeat to average several "
                   "(default: 'This is a sound of {label}.')")
    p.add_argument("--json", type=Path,
                   help="also write the metrics here; stdout leaves the confusion matrix out beyond 20 classes")
    p.add_argument("--device", default="auto")
    p.add_argument("--on-bad-sample", choices=["skip", "fail"], default="skip")
    p.set_defaults(func=_zeroshot)


def _zeroshot(args: argparse.Namespace) -> int:
    from .data.manifest import read_manifest
    from .evaluate.zeroshot import DEFAULT_PROMPT, check_prompts, evaluate_zeroshot, read_labels
    from .rundir import load_model
    from .train.loop import resolve_device

    prompts = check_prompts(args.prompt or [DEFAULT_PROMPT])
    labels = read_labels(args.labels) if args.labels else None
    device = resolve_device(args.device)
    cfg, model = load_model(args.run, device)
    cfg.data.on_bad_sample = args.on_bad_sample
    manifest = read_manifest(args.data, args.on_bad_sample)
    metrics = evaluate_zeroshot(model, manifest, cfg, device, prompts=prompts, labels=labels)
    metrics["counts"]["bad_rows"] = len(manifest.bad)
    _write_json(metrics, args.json)
    if len(metrics["labels"]) > 20:  # a large confusion matrix goes to --json only
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
    print(json.dumps(metrics, indent=2))
    return 0


def _add_objectives(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("objectives", parents=[COMMON], help="list the registered training objectives")
    p.set_defaults(func=lambda args: print("\n".join(__import__("clarion.objectives").objectives.available())) or 0)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", parents=[COMMON], help="train and evaluate a grid of objectives x seeds x noise ratios, then tabulate",
        description="Run a grid from a YAML file, a preset or flags. Finished cells are not rerun; interrupted ones "
        "resume. Writes OUT/results.{md,csv} (mean ± std over seeds) and OUT/significance.{md,csv} (paired "
        "bootstrap over test queries for every pair of objectives).",
    )
    p.add_argument("--preset", choices=["synthetic"], help="the synthetic benchmark's standard comparison")
    p.add_argument("--quick", action="store_true", help="with --preset: a minutes-long smoke version")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path, help="without a grid file: folder with train.csv, val.csv, test.csv")
    p.add_argument("--objectives", nargs="+", help="without a grid file: objective names")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--noise", nargs="+", type=float, default=[0.0])
    p.add_argument("--recipe", type=Path, help="without a grid file: training config YAML")
    p.add_argument("--jobs", type=int, help="cells at once (default: one per GPU, else 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the paired tests")
    p.add_argument("items", nargs="*", metavar="GRID.yaml | key=value",
                   help="a grid YAML (see clarion.compare.grid), then config overrides for every cell")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from .compare import load_grid, run_grid, synthetic_preset, write_tables
    from .compare.grid import Grid, parse_objectives

    files = [Path(x) for x in args.items if "=" not in x]
    if len(files) > 1:
        raise ConfigError(f"one grid file at most, got {', '.join(map(str, files))}")
    args.grid, args.overrides = (files[0] if files else None), [x for x in args.items if "=" in x]
    if sum(x is not None for x in (args.grid, args.preset, args.objectives)) != 1:
        raise ConfigError("give exactly one of: a grid file, --preset, or --objectives (with --data)")
    if args.preset:
        grid = synthetic_preset(args.out, quick=args.quick)
    elif args.grid:
        grid = load_grid(args.grid)
    else:
        if args.data is None:
            raise ConfigError("--objectives needs --data DIR (with train.csv, val.csv, test.csv)")
        val = args.data / "val.csv"
        grid = Grid(args.data / "train.csv", val if val.is_file() else None, args.data / "test.csv",
                    parse_objectives(args.objectives), args.seeds, args.noise, args.recipe)
    grid.overrides = [*grid.overrides, *args.overrides]
    results = run_grid(grid, args.out, args.jobs, args.device)
    paths = write_tables(results, args.out, args.resamples)
    print(paths["results.md"].read_text())
    print(f"tables: {', '.join(str(p) for p in paths.values())}")
    failed = [r for r in results if r.metrics is None]
    for r in failed:
        print(f"clarion compare: cell {r.cell.key} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", parents=[COMMON], help="a single-file HTML report of one or more runs",
                       description="Write a self-contained HTML report (inline PNG plots) of training curves, "
                       "retrieval and, with --data, the embedding geometry of one or more runs.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    p.add_argument("--data", help="manifest to embed for the modality gap, similarity and OT plan sections")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default report.html)")
    p.add_argument("--device", default="auto", help="device for embedding --data (auto | cpu | cuda)")
    p.add_argument("--max-clips", type=int, default=40, help="clips in the heatmaps (default 40)")
    p.add_argument("--ot-eps", type=float, default=0.03, help="entropic regularisation of the OT plan heatmap")
    p.add_argument("--png-dir", type=Path, help="also write every figure here as SECTION.png (for READMEs and papers)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    if args.max_clips < 1:
        raise ValueError(f"--max-clips must be at least 1, got {args.max_clips}")
    out = build_report(
        args.runs, args.out, data=args.data, device=args.device, max_clips=args.max_clips, ot_eps=args.ot_eps, png_dir=args.png_dir
    )
    print(f"wrote {out}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect manifests and public datasets (data check)",
                       description="Tools for manifests and dataset specs NAME:PATH[@SPLIT] (clotho, audiocaps, esc50, "
                       "us8k, wavcaps; see clarion.data.datasets).")
    tools = p.add_subparsers(dest="data_command", required=True)
    c = tools.add_parser("check", parents=[COMMON], help="validate every row and clip of a manifest or dataset",
                         description="Validate every row: file exists and decodes, duration, sample rate, silence, "
                         "NaN/Inf samples, empty captions, duplicate rows and duplicate audio. A dataset spec without "
                         "@SPLIT is checked split by split. Prints a summary per split; exit 0, or 1 with --strict "
                         "when there are problems (missing AudioCaps clips excepted).")
    c.add_argument("target", metavar="MANIFEST|SPEC", help="manifest file, or NAME:PATH[@SPLIT]")
    c.add_argument("--csv", type=Path, help="write the problems here (split, file, source, line, kind, detail)")
    c.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    c.add_argument("--min-seconds", type=float, default=0.1, help="shorter clips are too_short (default 0.1)")
    c.add_argument("--max-seconds", type=float, default=600.0,
                   help="longer clips are too_long (default 600, the decode cap audio.max_seconds)")
    c.add_argument("--silence-db", type=float, default=-60.0, help="clips with RMS below this (dBFS) are silent (default -60)")
    c.add_argument("--headers-only", action="store_true", help="read headers only: no NaN, silence or duplicate-audio checks")
    c.add_argument("--workers", type=int, default=1, help="threads decoding files (default 1)")
    c.set_defaults(func=_data_check)


def _data_check(args: argparse.Namespace) -> int:
    from .data.check import check_data, format_report, write_problems

    result = check_data(args.target, args.min_seconds, args.max_seconds, args.silence_db,
                        decode=not args.headers_only, workers=args.workers)
    print(format_report(result))
    if args.csv:
        print(f"problems written to {write_problems(args.csv, result)}")
    return 1 if args.strict and result.failing else 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", parents=[COMMON], help="a web search page over a search index",
                       description="Serve a search page (text query or example clip, in-page playback) and its JSON "
                       "API (documented in clarion.serve.app) over an index made by `clarion index build`. Binds "
                       "127.0.0.1, this machine only, unless --host says otherwise; there is no authentication.")
    p.add_argument("index", type=Path, metavar="INDEX", help="index folder")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the page to "
                   "the network)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest example clip accepted (default 20 MiB)")
    p.add_argument("--max-k", type=int, default=100, help="most results one search may ask for (default 100)")
    p.add_argument("--device", default="cpu", help="device that embeds queries (default cpu)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .serve.app import create_app
    from .serve.index import SearchIndex

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    index = SearchIndex.open(args.index, device=args.device)
    index.model  # load (and check) the model now: a broken index fails here, not at the first search
    app = create_app(index, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {len(index)} clips from {args.index} at http://{host}:{args.port}/ (Ctrl+C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"clarion serve: warning: {args.host} may be reachable from other machines, and the page has no "
              "authentication", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", parents=[COMMON], help="export a run's model as a self-contained folder",
                       description="Write the model of a run (or of another export) to OUT: config.yaml, tokenizer.json, "
                       "model.safetensors (+ model.json) and the pretrained towers' files; clarion.load(OUT) and "
                       "--model OUT need nothing else.")
    p.add_argument("run", type=Path, metavar="RUN", help="run or export directory")
    p.add_argument("--out", required=True, type=Path, help="export directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .api import load

    model = load(args.run, device="cpu")
    out = model.save(args.out, overwrite=args.overwrite)
    print(f"exported {args.run} to {out} (fingerprint {model.fingerprint[:12]})")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", parents=[COMMON], help="embed a folder of audio files or a manifest to .npy + .csv",
                       description="Write FILE.npy (float32 [N, d], unit-norm rows) and FILE.csv (row, path[, caption]). "
                       "Audio: every audio file under a folder (recursive) or every distinct clip of a manifest; --text: "
                       "every caption of a manifest. Files that cannot be decoded are skipped and listed in "
                       "FILE.skipped.csv.")
    p.add_argument("input", metavar="INPUT", help="audio folder, manifest file, or dataset spec NAME:PATH@SPLIT")
    p.add_argument("--model", required=True, type=Path, help="run or export directory")
    p.add_argument("--out", required=True, type=Path, help="FILE.npy to write (FILE.csv goes beside it)")
    p.add_argument("--text", action="store_true", help="embed the manifest's captions instead of its audio")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_embed)


def _embed(args: argparse.Namespace) -> int:
    from .api import load
    from .bulk import embed_source, write_embedded

    model = load(args.model, args.device)
    data = embed_source(args.input, model, text=args.text, batch_size=args.batch_size, progress=not args.quiet)
    npy, index, skipped = write_embedded(args.out, data)
    what = "captions" if args.text else "clips"
    print(f"embedded {len(data.rows)} {what} (d={data.embeddings.shape[1]}) to {npy}, index {index}")
    if skipped:
        print(f"clarion embed: skipped {len(data.bad)} bad input(s), listed in {skipped}", file=sys.stderr)
    return 0


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or update a search index over an audio folder",
                       description="Search indexes (clarion.serve.index): embeddings of every audio file under a folder "
                       "and the model export, for `clarion search` and `clarion serve`.")
    tools = p.add_subparsers(dest="index_command", required=True)
    b = tools.add_parser("build", parents=[COMMON], help="index every audio file under AUDIO_DIR (incremental)",
                         description="Embed every audio file under AUDIO_DIR (recursive) into INDEX. Re-running it "
                         "embeds only new and changed files (size + mtime) and drops removed ones. An index is tied "
                         "to one folder and one model: --rebuild to change either. Undecodable files are skipped and "
                         "listed in INDEX/skipped.csv.")
    b.add_argument("audio_dir", type=Path, metavar="AUDIO_DIR")
    b.add_argument("--model", required=True, type=Path, help="run or export directory")
    b.add_argument("--out", required=True, type=Path, help="index directory")
    b.add_argument("--rebuild", action="store_true", help="embed everything again (another model or folder)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--device", default="auto")
    b.set_defaults(func=_index_build)


def _index_build(args: argparse.Namespace) -> int:
    from .serve.index import build_index

    summary = build_index(args.audio_dir, args.model, args.out, batch_size=args.batch_size, device=args.device,
                          rebuild=args.rebuild, progress=not args.quiet)
    print(f"index {summary['index']}: {summary['total']} files ({summary['added']} added, {summary['updated']} updated, "
          f"{summary['unchanged']} unchanged, {summary['removed']} removed, {summary['skipped']} skipped)")
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", parents=[COMMON], help="search an index by text or by an example clip",
                       description="Print the k best matches in INDEX for a text QUERY or, with --audio, for the "
                       "sound of a file: rank, cosine score, path (relative to the indexed folder).")
    p.add_argument("index", type=Path, metavar="INDEX")
    p.add_argument("query", nargs="?", help="text query (leave out with --audio)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--audio", type=Path, metavar="FILE", help="search by this clip instead of text")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .serve.index import SearchIndex

    if (args.query is None) == (args.audio is None):
        raise ValueError("give either a text QUERY or --audio FILE")
    index = SearchIndex.open(args.index, device=args.device)
    hits = index.search_audio_file(args.audio, args.k) if args.audio else index.search_text(args.query, args.k)
    if args.json:
        query = {"audio": str(args.audio)} if args.audio else {"text": args.query}
        print(json.dumps({**query, "audio_root": str(index.audio_root), "hits": [asdict(h) for h in hits]}, indent=2))
    else:
        for hit in hits:
            print(f"{hit.rank:3d}  {hit.score:+.4f}  {hit.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_train, _add_shards, _add_evaluate, _add_zeroshot, _add_objectives, _add_compare, _add_report, _add_data, _add_serve,
                _add_export, _add_embed, _add_index, _add_search):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere, also after options (`--objective triplet sampling=hard`)
    trailing = next((name for name in ("overrides", "items") if isinstance(getattr(args, name, None), list)), None)
    if extra and (trailing is None or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, trailing).extend(extra)
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
