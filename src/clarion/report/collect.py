"""Read run directories into plain data for the report: metrics, config facts, retrieval numbers.

Nothing here plots or renders; every function returns lists, dicts and floats.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import RunError, load_run_config

log = logging.getLogger("clarion.report")

Series = tuple[list[float], list[float]]  # (x, y)
Band = tuple[list[float], list[float], list[float]]  # (x, mean, std): a group's line and its ±std band
KS = (1, 5, 10)


@dataclass
class RunData:
    """One run as the report sees it. ``epochs`` holds the epoch records (0-based ``epoch``)."""

    path: Path
    name: str
    objective: str
    options: dict[str, Any]
    noise_ratio: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None  # RUN/test.json, as written by `clarion evaluate --json`
    skipped_lines: int = 0  # metrics.jsonl lines that were not JSON objects (a torn last line)

    @property
    def options_str(self) -> str:
        return options_string(self.options)

    @property
    def label(self) -> str:
        """The noise-curve grouping key: the label of the ``clarion compare`` cell the run belongs to
        (its ``test.json`` ``cell``; one objective may have per-noise options there), else the
        objective name plus its options, e.g. ``mltm (partial_mass=0.9)``."""
        return self.grid_label or objective_label(self.objective, self.options)

    @property
    def grid_label(self) -> str | None:
        """The ``clarion compare`` cell label from ``test.json``, or None for a run outside a grid."""
        cell = (self.test or {}).get("cell")
        if isinstance(cell, dict) and isinstance(cell.get("label"), str) and cell["label"]:
            return cell["label"]
        return None

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        return best_epoch_record(self.epochs)

    def retrieval(self) -> tuple[str, dict[str, dict[str, float]]] | None:
        return retrieval_summary(self.test, self.epochs)


def options_string(options: dict[str, Any]) -> str:
    """``k=v`` pairs sorted by key, comma-separated; ``""`` for no options."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return f"{v:g}"
        return str(v)

    return ",".join(f"{k}={value(v)}" for k, v in sorted(options.items()))


def objective_label(name: str, options: dict[str, Any]) -> str:
    opts = options_string(options)
    return f"{name} ({opts})" if opts else name


def read_metrics(path: Path) -> tuple[list[dict], list[dict], int]:
    """Step records, epoch records and the count of unreadable lines of a ``metrics.jsonl``."""
    steps, epochs, skipped = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict):
            skipped += 1
        elif record.get("type") == "step":
            steps.append(record)
        elif record.get("type") == "epoch":
            epochs.append(record)
    return steps, epochs, skipped


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read a run directory; a missing directory, ``metrics.jsonl`` or ``config.yaml`` is a :class:`RunError`."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunError(f"{path} has no metrics.jsonl (is it a clarion run directory?)")
    cfg = load_run_config(path)
    steps, epochs, skipped = read_metrics(metrics)
    if skipped:
        log.warning("%s: %d unreadable line(s) skipped", metrics, skipped)
    test = None
    test_path = path / "test.json"
    if test_path.is_file():
        try:
            test = json.loads(test_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{test_path} is not valid JSON: {exc}") from exc
    return RunData(
        path=path, name=name or path.name, objective=cfg.objective.name, options=dict(cfg.objective.options),
        noise_ratio=float(cfg.data.noise_ratio), steps=steps, epochs=epochs, test=test, skipped_lines=skipped,
    )


def unique_names(paths: list[Path]) -> list[str]:
    """Run names for display: the folder name, or as many trailing path parts as make it unique."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for i, own in enumerate(parts):
        for depth in range(1, len(own) + 1):
            name = "/".join(own[-depth:])
            if all(j == i or "/".join(other[-depth:]) != name for j, other in enumerate(parts)):
                break
        names.append(name)
    return names


def load_runs(paths: list[str | Path]) -> list[RunData]:
    paths = [Path(p) for p in paths]
    return [load_run(p, n) for p, n in zip(paths, unique_names(paths))]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: list[dict], key: str, x: str = "step") -> Series:
    """(x, y) over the records that carry a finite number under ``key`` (others are skipped)."""
    xs, ys = [], []
    for record in records:
        y = _number(record.get(key))
        if y is not None and _number(record.get(x)) is not None:
            xs.append(float(record[x]))
            ys.append(y)
    return xs, ys


def val_series(epochs: list[dict], side: str | None) -> Series:
    """Validation R@1 per epoch (x = 1-based epoch): ``side=None`` the mean of both, else ``t2a`` / ``a2t``."""
    xs, ys = [], []
    for record in epochs:
        if side is None:
            y = _number(record.get("val_mean_R@1"))
        else:
            y = _number(((record.get("val") or {}).get(side) or {}).get("R@1"))
        if y is not None:
            xs.append(float(record.get("epoch", len(xs))) + 1)
            ys.append(y)
    return xs, ys


def curves(runs: list[RunData], key: str, records: str = "steps") -> dict[str, Series]:
    """Per run name, the series of ``key``; runs without it are left out."""
    out = {}
    for run in runs:
        xs, ys = series(getattr(run, records), key)
        if xs:
            out[run.name] = (xs, ys)
    return out


def best_epoch_record(epochs: list[dict]) -> dict | None:
    """The epoch whose weights are ``model.safetensors``: the last record marked ``best``, else the
    one with the highest ``val_mean_R@1``, else the last one."""
    marked = [r for r in epochs if r.get("best")]
    if marked:
        return marked[-1]
    scored = [r for r in epochs if _number(r.get("val_mean_R@1")) is not None]
    if scored:
        return max(scored, key=lambda r: r["val_mean_R@1"])
    return epochs[-1] if epochs else None


def _recalls(metrics: dict) -> dict[str, dict[str, float]] | None:
    out = {}
    for side in ("t2a", "a2t"):
        values = metrics.get(side)
        if not isinstance(values, dict):
            return None
        out[side] = {f"R@{k}": v for k in KS if (v := _number(values.get(f"R@{k}"))) is not None}
    return out if any(out.values()) else None


def retrieval_summary(test: dict | None, epochs: list[dict]) -> tuple[str, dict[str, dict[str, float]]] | None:
    """``("test", {t2a: {R@1, R@5, R@10}, a2t: {...}})`` from test.json, else ``("val", ...)`` from the
    best epoch's validation; None when neither has numbers."""
    if isinstance(test, dict) and (recalls := _recalls(test)):
        return "test", recalls
    best = best_epoch_record(epochs)
    if best is not None and isinstance(best.get("val"), dict) and (recalls := _recalls(best["val"])):
        return "val", recalls
    return None


def noise_curves(runs: list[RunData]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """R@1 against noise ratio, one curve per objective label, for ``t2a`` and ``a2t``.

    Returns ``{label: {"t2a": [(noise, R@1), ...], "a2t": [...]}}`` sorted by noise; several
    runs of one label at one noise ratio (seeds) are averaged. Empty when all runs share one
    noise ratio (no curve to draw) or none has retrieval numbers.
    """
    points: dict[str, dict[str, dict[float, list[float]]]] = {}
    for run in runs:
        summary = run.retrieval()
        if summary is None:
            continue
        for side, values in summary[1].items():
            if "R@1" in values:
                points.setdefault(run.label, {}).setdefault(side, {}).setdefault(run.noise_ratio, []).append(values["R@1"])
    ratios = {noise for label in points.values() for side in label.values() for noise in side}
    if len(ratios) < 2:
        return {}
    return {
        label: {side: [(noise, sum(v) / len(v)) for noise, v in sorted(by_noise.items())] for side, by_noise in sides.items()}
        for label, sides in points.items()
    }


def run_groups(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Runs by line of the report's figures, in first-seen order.

    Runs that carry a grid label (``clarion compare`` cells) and share it and the noise ratio are
    one group (its seeds): named by the label, plus ``· noise p`` when the labelled runs span
    several noise ratios. Every other run is a group of its own under its run name.
    """
    labelled = [r for r in runs if r.grid_label is not None]
    several_noises = len({r.noise_ratio for r in labelled}) > 1
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        if run.grid_label is None:
            continue
        name = f"{run.grid_label} · noise {run.noise_ratio:g}" if several_noises else run.grid_label
        groups.setdefault(name, []).append(run)
    out: dict[str, list[RunData]] = {}
    for run in runs:
        if run.grid_label is None:
            name = run.name if run.name not in groups else f"{run.name} (run)"
            out[name] = [run]
        else:
            name = next(n for n, members in groups.items() if run in members)
            out.setdefault(name, groups[name])
    return out


def band(series_list: list[Series]) -> Band:
    """Mean and standard deviation (n − 1 in the denominator; 0 for one value) over runs at each x
    that any run has; a run missing an x does not count there."""
    values: dict[float, list[float]] = {}
    for xs, ys in series_list:
        for x, y in zip(xs, ys):
            values.setdefault(x, []).append(y)
    xs = sorted(values)
    means, stds = [], []
    for x in xs:
        v = values[x]
        mean = sum(v) / len(v)
        means.append(mean)
        stds.append(math.sqrt(sum((y - mean) ** 2 for y in v) / (len(v) - 1)) if len(v) > 1 else 0.0)
    return xs, means, stds


def group_curves(groups: dict[str, list[RunData]], series_of) -> dict[str, Band]:
    """Per group, the band of ``series_of(run)`` (a :data:`Series`) over its runs; groups where no
    run has data are left out."""
    out = {}
    for name, members in groups.items():
        found = [s for s in (series_of(run) for run in members) if s[0]]
        if found:
            out[name] = band(found)
    return out
