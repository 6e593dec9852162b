"""Linear probe vs zero-shot over the runs of a `clarion compare` study (issue 20, part 4).

    python scripts/probe_summary.py STUDY_DIR DATA.csv OUT_DIR [--clarion .venv/bin/clarion]

Runs `clarion probe RUN --data DATA.csv --json OUT_DIR/probe_{label}_seed{s}.json` for every
finished run under STUDY_DIR/runs/noise*/{label}/seed{s} (skipping those with a JSON already),
then writes OUT_DIR/probe.md: per label, the probe's and zero-shot's accuracy, each the mean over
folds, then mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", type=Path)
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--clarion", default=".venv/bin/clarion")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    for run in sorted(args.study.glob("runs/noise*/*/seed*")):
        if not (run / "test.json").is_file():
            continue  # not finished
        label, seed = run.parent.name, run.name.removeprefix("seed")
        target = args.out / f"probe_{label}_seed{seed}.json"
        if not target.is_file():
            subprocess.run([args.clarion, "probe", str(run), "--data", args.data, "--json", str(target), "-q"],
                           check=True, stdout=subprocess.DEVNULL)
        rows.setdefault(label, []).append(json.loads(target.read_text()))

    def cell(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"

    lines = ["| training | seeds | linear probe | zero-shot |", "|---|---:|---:|---:|"]
    for label, results in rows.items():
        probe = [r["probe"]["accuracy_mean"] for r in results]
        zeroshot = [r["zeroshot"]["accuracy_mean"] for r in results]
        lines.append(f"| {label} | {len(results)} | {cell(probe)} | {cell(zeroshot)} |")
    first = next(iter(rows.values()))[0]
    lines += ["", f"Top-1 accuracy, %: mean over {first['counts']['folds']} folds ({first['fold_source']}) of "
              f"{first['counts']['clips']} clips in {first['counts']['classes']} classes, then mean ± std over seeds."]
    (args.out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
