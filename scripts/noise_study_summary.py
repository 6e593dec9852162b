"""Summarise scripts/noise_study.sh: mean ± std over seeds of T2A / A2T R@1, and the plan's mass diagnostics.

    python scripts/noise_study_summary.py OUT_DIR
"""

import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(out: Path) -> None:
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    mass: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for path in sorted(out.glob("p*/s*/*/test*.json")):
        noise, run = path.parts[-4], path.parent
        scoring = "ot" if path.name == "test_ot.json" else "cosine"
        metrics = json.loads(path.read_text())
        results.setdefault((noise, run.name, scoring), []).append((metrics["t2a"]["R@1"], metrics["a2t"]["R@1"]))
        if scoring == "cosine":
            steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            last_epoch = max(r["epoch"] for r in steps)
            tail = [r for r in steps if r["type"] == "step" and r["epoch"] == last_epoch and "ot_row_mass_corrupted" in r]
            if tail:
                mass.setdefault((noise, run.name), []).append(tuple(
                    statistics.mean(r[f"ot_{kind}_mass_{pair}"] for r in tail)
                    for kind in ("row", "pair") for pair in ("corrupted", "clean")))
    print("| noise | objective | scoring | seeds | T2A R@1 | A2T R@1 |\n|---|---|---|---:|---:|---:|")
    for (noise, name, scoring), values in sorted(results.items()):
        print(f"| {noise[1:]} | {name} | {scoring} | {len(values)} | {mean_std([v[0] for v in values])} | {mean_std([v[1] for v in values])} |")
    if mass:
        print("\nLast epoch, corrupted vs clean pairs: the share of a caption's mass the plan transports (row mass,"
              " 1 = all) and the share it sends to the caption's own, labelled audio (pair mass B·π_ii)")
        print("| noise | objective | row mass corrupted | row mass clean | pair mass corrupted | pair mass clean |")
        print("|---|---|---:|---:|---:|---:|")
        for (noise, name), values in sorted(mass.items()):
            means = [statistics.mean(v[k] for v in values) for k in range(4)]
            print(f"| {noise[1:]} | {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
