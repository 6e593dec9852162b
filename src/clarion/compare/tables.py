"""Results tables of a grid: mean ± std over seeds per (noise, objective), and paired tests."""

from __future__ import annotations

import csv
import io
from itertools import combinations
from pathlib import Path

import numpy as np

from .runner import CellResult
from .stats import mean_std, paired_bootstrap

METRICS = [("t2a", "R@1"), ("t2a", "R@5"), ("t2a", "R@10"), ("a2t", "R@1"), ("a2t", "R@5"), ("a2t", "R@10")]


def _groups(results: list[CellResult]) -> dict[tuple[float, str], list[CellResult]]:
    groups: dict[tuple[float, str], list[CellResult]] = {}
    for r in results:
        if r.metrics is not None:
            groups.setdefault((r.cell.noise, r.cell.objective.label), []).append(r)
    return groups


def summary_rows(results: list[CellResult]) -> list[dict]:
    """One row per (noise, objective): seeds, and mean / std of each retrieval metric and the gap."""
    rows = []
    for (noise, label), cells in _groups(results).items():
        row = {"noise": noise, "objective": label, "seeds": len(cells)}
        for side, k in METRICS:
            row[f"{side}_{k}_mean"], row[f"{side}_{k}_std"] = mean_std([c.metrics[side][k] for c in cells])
        row["modality_gap_mean"], row["modality_gap_std"] = mean_std([c.metrics["geometry"]["modality_gap"] for c in cells])
        rows.append(row)
    return rows


def significance_rows(results: list[CellResult], n_resamples: int = 10_000) -> list[dict]:
    """Per noise ratio and pair of objectives, the paired bootstrap of T2A and A2T R@1 over test queries."""
    groups = _groups(results)
    rows = []
    for noise in sorted({n for n, _ in groups}):
        labels = [label for n, label in groups if n == noise]
        for a, b in combinations(labels, 2):
            for side in ("t2a", "a2t"):
                hits = [np.stack([getattr(c, f"{side}_ranks") == 1 for c in groups[(noise, x)]]) for x in (a, b)]
                if hits[0].shape[1] != hits[1].shape[1]:
                    continue  # different query sets (e.g. a clip undecodable in one run): not paired
                test = paired_bootstrap(hits[0], hits[1], n_resamples)
                rows.append({"noise": noise, "a": a, "b": b, "metric": f"{side} R@1", **test})
    return rows


def _pct(mean: float, std: float, seeds: int) -> str:
    return f"{100 * mean:.1f}" if seeds < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_summary(rows: list[dict]) -> str:
    head = "| noise | objective | seeds | " + " | ".join(f"{s.upper()} {k}" for s, k in METRICS) + " | gap |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(METRICS) + 1)]
    for r in rows:
        cells = [_pct(r[f"{s}_{k}_mean"], r[f"{s}_{k}_std"], r["seeds"]) for s, k in METRICS]
        lines.append(f"| {r['noise']:g} | {r['objective']} | {r['seeds']} | {' | '.join(cells)} | {r['modality_gap_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def markdown_significance(rows: list[dict]) -> str:
    lines = ["| noise | A | B | metric | A − B (points) | 95 % CI | p |", "|---|---|---|---|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['noise']:g} | {r['a']} | {r['b']} | {r['metric']} | {100 * r['diff']:+.1f} | "
            f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {r['p_value']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(results: list[CellResult], out: Path, n_resamples: int = 10_000) -> dict[str, Path]:
    """Write results.{md,csv} and significance.{md,csv} to ``out``; returns their paths."""
    summary, tests = summary_rows(results), significance_rows(results, n_resamples)
    failed = [r.cell.key for r in results if r.metrics is None]
    note = f"\nFailed cells (not in the table): {', '.join(failed)}\n" if failed else ""
    paths = {
        "results.md": markdown_summary(summary) + note, "results.csv": to_csv(summary),
        "significance.md": markdown_significance(tests), "significance.csv": to_csv(tests),
    }
    for name, text in paths.items():
        (out / name).write_text(text)
    return {name: out / name for name in paths}
