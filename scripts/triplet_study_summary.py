"""Summarise scripts/triplet_study.sh: mean ± std over seeds of T2A / A2T R@1 per strategy, with the
collapse monitor's last-epoch statistics, the triplet diagnostics (share of active hinges, loss per
anchor over 2m) and the runs the monitor warned about.

    python scripts/triplet_study_summary.py OUT_DIR
"""

import json
import statistics
import sys
from pathlib import Path

ORDER = ["infonce", "random", "full", "hard", "semihard", "easy_text", "hard_text", "easy_audio", "hard_audio",
         "semihard_band", "hardest", "sum"]
STATS = ["collapse_audio_cos", "collapse_text_cos", "collapse_audio_rank", "collapse_text_rank"]
TRIPLET = ["triplet_active_share", "triplet_loss_per_anchor"]  # share of hinges > 0; loss / 2m (1 = pinned)


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def last_epoch_collapse(run: Path) -> tuple[dict[str, float], int | None]:
    """Mean collapse statistics over the last epoch's checks, and the step the monitor warned at."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = max(r["epoch"] for r in records)
    steps = [r for r in records if r["type"] == "step" and r["epoch"] == last]
    warned = [r.get("collapse_warning_step") for r in records if r["type"] == "epoch"]
    means = {k: statistics.mean(values) for k in STATS + TRIPLET if (values := [r[k] for r in steps if k in r])}
    return means, warned[-1] if warned else None


def main(out: Path) -> None:
    rows: dict[str, list[dict]] = {}
    for path in sorted(out.glob("s*/*/test.json")):
        metrics = json.loads(path.read_text())
        collapse, warned = last_epoch_collapse(path.parent)
        rows.setdefault(path.parent.name, []).append(
            {"t2a": metrics["t2a"]["R@1"], "a2t": metrics["a2t"]["R@1"], "warned": warned, **collapse})
    print("| objective | seeds | T2A R@1 | A2T R@1 | audio cos | text cos | audio erank | text erank "
          "| active hinges | loss / 2m | collapse warnings |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        runs = rows[name]
        warned = [str(r["warned"]) for r in runs if r["warned"] is not None]
        cells = [mean_std([r[k] for r in runs if k in r], 1.0, 2) for k in STATS + TRIPLET]
        label = name if name == "infonce" else f"triplet {name}"
        print(f"| {label} | {len(runs)} | {mean_std([r['t2a'] for r in runs])} | {mean_std([r['a2t'] for r in runs])} | "
              f"{' | '.join(cells)} | {len(warned)}/{len(runs)}{' (steps ' + ', '.join(warned) + ')' if warned else ''} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
