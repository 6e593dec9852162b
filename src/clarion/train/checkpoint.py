"""Full training state for exact resumption, as safetensors + JSON (no pickle).

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXXX/`` holding

- ``state.safetensors``: model + objective weights, optimiser tensors, RNG states;
- ``state.json``: everything else (optimiser hyper-parameters, scheduler, epoch/step,
  best score, numpy/python RNG) and the sha256 of ``state.safetensors``.

It is written under a temporary name (``.step_XXXXXXXX.*``), its files fsynced, and renamed
into place, then ``RUN/checkpoints/latest`` is atomically pointed at it; a half-written or
corrupted checkpoint is never loaded (the checksum is verified, and loading falls back to the
newest intact one with a warning). Temporary folders left by a killed process are removed by
the next save. A failed write (disk full, read-only folder) raises :class:`CheckpointWriteError`
and leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import atomic_dir, atomic_write_text, sha256
from ..rundir import RunError, cpu_tensors

log = logging.getLogger("clarion.train")


class CheckpointWriteError(RunError):
    """A checkpoint that could not be written (disk full, unwritable folder); earlier ones are intact."""


@dataclass
class TrainingState:
    epoch: int  # epoch in progress (or the next to start)
    step: int  # optimiser steps done in total
    step_in_epoch: int  # batches of ``epoch`` already consumed
    best_score: float
    best_epoch: int
    epoch_loss_sum: float = 0.0  # running sums of the epoch in progress, so a
    epoch_loss_count: int = 0  # mid-epoch resume reports the same epoch train loss
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient, in all
    nonfinite_streak: int = 0  # ... and in a row, up to now (train.max_nonfinite_steps stops the run)
    overflow_steps: int = 0  # fp16 steps skipped by the gradient scaler (scale too high), in all


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(
    run: Path,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    keep: int = 2,
    extra: dict[str, torch.Tensor] | None = None,
    scaler: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically, point ``latest`` at it, keep the newest ``keep``.

    ``extra``: more ``rng.*`` tensors (the RNG states of the other processes of a torchrun job);
    ``scaler``: the fp16 gradient scaler's state (``GradScaler.state_dict()``: numbers), kept in ``state.json``.
    """
    root = run / "checkpoints"
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = _rng_state()
    tensors = {**model_state, **cpu_tensors(opt_tensors), **rng_tensors, **cpu_tensors(extra or {})}
    name = f"step_{state.step:08d}"
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)  # temporary folders left by a process killed while writing
        # the same step again (end of epoch after a step checkpoint) replaces the folder
        with atomic_dir(final, exists="replace", fsync=True) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            meta = {
                "training": state.__dict__,
                "optimizer": opt_meta,
                "scheduler": scheduler.state_dict(),
                "rng": rng_meta,
                **({"scaler": scaler} if scaler else {}),
                "sha256": sha256(tmp / "state.safetensors"),
            }
            (tmp / "state.json").write_text(json.dumps(meta))
        atomic_write_text(root / "latest", name + "\n")
    except (OSError, SafetensorError) as exc:
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {exc} (disk full or not writable?); "
            "the earlier checkpoints are intact: free space and resume with --resume"
        ) from exc
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    _remove_stale(root)
    return final


def _remove_stale(root: Path) -> None:
    for stale in [*root.glob(".step_*"), *root.glob(".latest.*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and metadata, or ValueError/OSError/KeyError/TypeError when it is unusable."""
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), dict):
        raise ValueError("state.json is not a clarion checkpoint")
    if sha256(path / "state.safetensors") != meta["sha256"]:
        raise ValueError("checksum mismatch (truncated or corrupted state.safetensors)")
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except SafetensorError as exc:  # a file whose checksum was forged along with it
        raise ValueError(f"not a safetensors file ({exc})") from exc
    return tensors, meta


def find_checkpoint(run: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest intact checkpoint of ``run`` (``latest`` first), or None when there is none."""
    root = run / "checkpoints"
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    latest = root / "latest"
    if latest.is_file():
        named = root / latest.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    for path in candidates:
        try:
            tensors, meta = _read_checkpoint(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError, JSONDecodeError: ValueError
            log.warning("skipping unusable checkpoint %s: %s", path, exc)
            continue
        return path, tensors, meta
    return None


def restore_checkpoint(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    load_model_state: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainingState:
    """Load weights (via ``load_model_state(dict)``), optimiser, scheduler and RNG; return counters."""
    load_model_state({k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "rng."))})
    optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(tensors, meta["rng"])
    return TrainingState(**meta["training"])
