"""Summarise the drift and SVR-radius diagnostics of `clarion compare` runs, per grid label.

    python scripts/drift_summary.py OUT_DIR [OUT_DIR ...]

For every ``OUT/runs/noise{p}/{label}/seed{s}/metrics.jsonl``: the means over the last epoch's
logged steps of ``drift_cos`` (cosine between the text anchors' update direction and the
direction to the paired audio; higher = less drift), ``drift_perp_ratio`` (perpendicular /
parallel part of that update), and for SVR runs the per-side ratio R/‖a−t‖ and damping factor
1 − R/‖a−t‖; then mean ± std over seeds. ``R > ‖a−t‖ (max)`` is the largest share of anchors
with a radius past the pair distance at any logged step of any seed (0 means never).
"""

import json
import statistics
import sys
from pathlib import Path

KEYS = ["drift_cos", "drift_perp_ratio", "svr_ratio_text", "svr_ratio_audio", "svr_damping_text", "svr_damping_audio"]


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_summary(metrics: Path) -> tuple[dict[str, float], float | None]:
    """(last-epoch means of KEYS present, max share of R > ‖a−t‖ over every logged step or None)."""
    steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "step"]
    last = max(r["epoch"] for r in steps)
    tail = [r for r in steps if r["epoch"] == last]
    means = {k: statistics.mean(r[k] for r in tail if k in r) for k in KEYS if any(k in r for r in tail)}
    over = [r[k] for r in steps for k in ("svr_over_share_text", "svr_over_share_audio") if k in r]
    return means, (max(over) if over else None)


def main(outs: list[Path]) -> None:
    groups: dict[tuple[str, str], list[tuple[dict[str, float], float | None]]] = {}
    for out in outs:
        for metrics in sorted(out.glob("runs/noise*/*/seed*/metrics.jsonl")):
            noise, label = metrics.parts[-4][len("noise"):], metrics.parts[-3]
            groups.setdefault((noise, label), []).append(run_summary(metrics))
    print("| noise | objective | seeds | drift_cos | perp / parallel | R/‖a−t‖ text | R/‖a−t‖ audio "
          "| damping text | damping audio | R > ‖a−t‖ (max share) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (noise, label), runs in sorted(groups.items()):
        cells = [mean_std([m[k] for m, _ in runs if k in m]) for k in KEYS]
        overs = [o for _, o in runs if o is not None]
        over = f"{max(overs):.3f}" if overs else "–"
        print(f"| {noise} | {label} | {len(runs)} | " + " | ".join(cells) + f" | {over} |")
    print("\nLast-epoch means over logged steps (every train.drift_every steps), mean ± std over seeds.")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
