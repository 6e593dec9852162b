"""``clarion`` commands for experiments: synth (the synthetic benchmark), compare (a grid of runs), report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError
from .options import add_command, add_device


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "synth", None, "generate the synthetic sound-scene benchmark")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--clips", type=int, default=2000, help="training clips (default 2000)")
    p.add_argument("--val-clips", type=int, default=300)
    p.add_argument("--test-clips", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ..synth.generate import generate

    summary = generate(
        args.out_dir, n_train=args.clips, n_val=args.val_clips, n_test=args.test_clips, seed=args.seed, workers=args.workers
    )
    clips = summary.get("clips", {})
    print(
        f"wrote {' / '.join(f'{n} {split}' for split, n in clips.items())} clips with captions in "
        f"{', '.join(summary.get('languages', []))} to {args.out_dir} (settings in synth.json)"
    )
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "compare", None, "train and evaluate a grid of objectives x seeds x noise ratios, then tabulate",
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
    add_device(p, "auto")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the paired tests")
    p.add_argument("items", nargs="*", metavar="GRID.yaml | key=value",
                   help="a grid YAML (see clarion.compare.grid), then config overrides for every cell")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from ..compare import load_grid, run_grid, synthetic_preset, write_tables
    from ..compare.grid import Grid, parse_objectives

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
    p = add_command(sub, "report", None, "a single-file HTML report of one or more runs",
                    description="Write a self-contained HTML report (inline PNG plots) of training curves, "
                    "retrieval and, with --data, the embedding geometry of one or more runs.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    p.add_argument("--data", help="manifest to embed for the modality gap, similarity and OT plan sections")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default report.html)")
    add_device(p, "auto", "device for embedding --data (auto | cpu | cuda)")
    p.add_argument("--max-clips", type=int, default=40, help="clips in the heatmaps (default 40)")
    p.add_argument("--ot-eps", type=float, default=0.03, help="entropic regularisation of the OT plan heatmap")
    p.add_argument("--png-dir", type=Path, help="also write every figure here as SECTION.png (for READMEs and papers)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..report import build_report

    if args.max_clips < 1:
        raise ValueError(f"--max-clips must be at least 1, got {args.max_clips}")
    out = build_report(
        args.runs, args.out, data=args.data, device=args.device, max_clips=args.max_clips, ot_eps=args.ot_eps, png_dir=args.png_dir
    )
    print(f"wrote {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_add_synth, _add_compare, _add_report):
        add(sub)
