"""Run a grid: train and evaluate every cell, resumably, optionally several cells at once.

Each cell lives in ``OUT/runs/noise{p}/{label}/seed{s}`` and is finished when ``test.json`` (the
test metrics, written last) is there, next to ``ranks.npz`` (per-query ranks for the paired
tests). A finished cell is never rerun; a cell interrupted mid-training resumes from its
checkpoint. A failing cell is logged and reported; the others still run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import load_model_config
from ..runtime import resolve_device
from ..data.open import open_source
from ..evaluate.embed import embed_manifest, retrieval_report
from ..evaluate.retrieval import a2t_relevant_ranks, t2a_ranks
from ..rundir import atomic_write_text, load_model
from .grid import Cell, Grid

log = logging.getLogger("clarion.compare")


@dataclass
class CellResult:
    cell: Cell
    metrics: dict[str, Any] | None  # test.json, None when the cell failed
    t2a_ranks: np.ndarray | None = None  # [n_captions]
    a2t_ranks: np.ndarray | None = None  # [n_clips] rank of each clip's best-ranked caption
    error: str | None = None


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.key


def load_cell(out: Path, cell: Cell) -> CellResult | None:
    """The finished cell's results, or None when it has not finished."""
    run = cell_dir(out, cell)
    if not (run / "test.json").is_file() or not (run / "ranks.npz").is_file():
        return None
    with np.load(run / "ranks.npz", allow_pickle=False) as ranks:
        return CellResult(cell, json.loads((run / "test.json").read_text()), ranks["t2a"], ranks["a2t"])


def evaluate_cell(run: Path, test: Path, device: torch.device) -> tuple[dict, np.ndarray, np.ndarray]:
    """Cosine retrieval metrics, geometry and per-query ranks of a trained run on ``test``."""
    cfg, model = load_model(run, device)
    data = embed_manifest(model, open_source(test, cfg.data.on_bad_sample), cfg, device)
    metrics = retrieval_report(data)
    sim = data.text @ data.audio.T
    a2t, _ = a2t_relevant_ranks(sim, data.caption_clip)
    return metrics, t2a_ranks(sim, data.caption_clip).numpy(), a2t[:, 0].numpy()


def run_cell(grid: Grid, cell: Cell, out: Path, device: str, threads: int | None = None) -> CellResult:
    """Train (or resume) and evaluate one cell; never raises (a failure is returned)."""
    from ..train.loop import train  # the trainer imports the evaluation code

    if threads:
        torch.set_num_threads(threads)
    run = cell_dir(out, cell)
    try:
        overrides = [*grid.cell_overrides(cell), f"data.train={grid.train}", f"train.device={device}", f"data.cache_dir={out / 'cache'}"]
        if grid.val is not None:
            overrides.append(f"data.val={grid.val}")
        cfg = load_model_config(grid.recipe, overrides)
        started = time.perf_counter()
        summary = train(cfg, run, resume=(run / "config.yaml").exists())
        metrics, t2a, a2t = evaluate_cell(run, grid.test, resolve_device(device))
        metrics["train"] = {"seconds": time.perf_counter() - started, **summary}
        metrics["cell"] = {"label": cell.objective.label, "noise": cell.noise, "seed": cell.seed}
        np.savez(run / "ranks.npz", t2a=t2a, a2t=a2t)
        atomic_write_text(run / "test.json", json.dumps(metrics, indent=2) + "\n")
        return CellResult(cell, metrics, t2a, a2t)
    except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the grid
        log.exception("cell %s failed", cell.key)
        return CellResult(cell, None, error=f"{type(exc).__name__}: {exc}")


def default_jobs(device: str) -> int:
    """One cell per GPU when training on CUDA; one at a time on the CPU (the cores are shared)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def run_grid(grid: Grid, out: Path, jobs: int | None = None, device: str = "auto") -> list[CellResult]:
    """Run every unfinished cell of ``grid`` under ``out``; returns the results of all cells."""
    out.mkdir(parents=True, exist_ok=True)
    if grid.synth is not None and not grid.train.is_file():
        from ..synth.generate import generate

        log.info("generating the synthetic benchmark in %s", grid.train.parent)
        generate(grid.train.parent, **grid.synth)
    results = {c.key: r for c in grid.cells() if (r := load_cell(out, c)) is not None}
    todo = [c for c in grid.cells() if c.key not in results]
    log.info("%d cells: %d finished, %d to run", len(grid.cells()), len(results), len(todo))
    jobs = max(1, jobs or default_jobs(device))
    use_gpus = device in ("auto", "cuda") and torch.cuda.is_available()
    devices = [f"cuda:{i % torch.cuda.device_count()}" if use_gpus else device for i in range(len(todo))]
    if jobs == 1 or len(todo) <= 1:
        for i, (cell, dev) in enumerate(zip(todo, devices)):
            results[cell.key] = _report(run_cell(grid, cell, out, dev), i + 1, len(todo))
    else:
        threads = None if use_gpus else max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_cell, grid, cell, out, dev, threads) for cell, dev in zip(todo, devices)]
            for i, future in enumerate(as_completed(futures)):
                result = future.result()
                results[result.cell.key] = _report(result, i + 1, len(todo))
    return [results[c.key] for c in grid.cells()]


def _report(result: CellResult, done: int, total: int) -> CellResult:
    if result.metrics is None:
        log.warning("[%d/%d] %s FAILED: %s", done, total, result.cell.key, result.error)
    else:
        m = result.metrics
        log.info("[%d/%d] %s: T2A R@1 %.3f, A2T R@1 %.3f (%.0f s)", done, total, result.cell.key,
                 m["t2a"]["R@1"], m["a2t"]["R@1"], m["train"]["seconds"])
    return result
