"""Diagnostics the trainer runs on a step's embeddings, each on its own schedule (:class:`Probe`).

- :class:`PlanMassProbe`, every step of a noisy run whose objective returns a transport plan:
  where the plan puts its mass on corrupted vs clean pairs
  (:func:`~clarion.evaluate.geometry.plan_mass_by_pair_kind`).
- :class:`DriftProbe`, every ``train.drift_every`` steps: drift statistics of the loss gradient
  w.r.t. the text embeddings (an extra loss-only backward, :func:`~clarion.evaluate.geometry.drift_diagnostics`).
- :class:`CollapseProbe`, every ``train.collapse_every`` steps: ``collapse_*`` statistics
  (:func:`~clarion.evaluate.geometry.collapse_diagnostics`), fed to :class:`CollapseMonitor`.

The trainer runs them in this order, so the step records keep their key order.

Feature-collapse monitor (docs/methods.md §5, "Feature collapse"): warns once when the batch embeddings collapse.

A check is *collapsed* when, for either modality, the mean pairwise cosine exceeds ``max_cos``
or the effective rank falls below ``min_rank`` (statistics from
:func:`clarion.evaluate.geometry.collapse_diagnostics`). The monitor warns, once per run and with
the numbers, after ``patience`` consecutive collapsed checks past step ``after_step``.

Checks up to ``after_step`` (the trainer passes the LR warm-up length) are not counted: a freshly
initialised audio encoder maps every clip to nearly one direction (the demo model starts at mean
pairwise cosine 0.99999, effective rank 1.07), which is no collapse of training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate.geometry import collapse_diagnostics, drift_diagnostics, plan_mass_by_pair_kind
from ..objectives import ObjectiveOutput
from .embedding import Embedded

log = logging.getLogger("clarion.train")


@dataclass
class CollapseMonitor:
    max_cos: float = 0.9
    min_rank: float = 2.0
    patience: int = 3
    after_step: int = 0
    streak: int = 0
    warned_at_step: int | None = None

    def is_collapsed(self, stats: dict[str, float]) -> bool:
        return any(
            stats[f"collapse_{m}_cos"] > self.max_cos or stats[f"collapse_{m}_rank"] < self.min_rank
            for m in ("audio", "text")
        )

    def update(self, step: int, stats: dict[str, float]) -> bool:
        """Record the check at ``step``; True when it is the one that raises the warning."""
        if step <= self.after_step:
            return False
        self.streak = self.streak + 1 if self.is_collapsed(stats) else 0
        if self.streak < self.patience or self.warned_at_step is not None:
            return False
        self.warned_at_step = step
        log.warning(
            "feature collapse suspected at step %d (%d checks in a row): mean pairwise cosine audio %.3f / "
            "text %.3f (limit %.2f), effective rank audio %.2f / text %.2f (limit %.1f), per-dimension "
            "std·√d audio %.3f / text %.3f. Hard negatives are a known cause; consider semihard sampling, "
            "a lower learning rate or another objective.",
            step, self.streak, stats["collapse_audio_cos"], stats["collapse_text_cos"], self.max_cos,
            stats["collapse_audio_rank"], stats["collapse_text_rank"], self.min_rank,
            stats["collapse_audio_std"], stats["collapse_text_std"],
        )
        return True


class Probe:
    """A diagnostic of one step: :meth:`due` says whether it runs after optimiser step ``step``
    (1-based), calling it returns the statistics to log (0-dim tensors or floats)."""

    def due(self, step: int) -> bool:
        return True

    def __call__(self, step: int, out: ObjectiveOutput, batch: Embedded) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class PlanMassProbe(Probe):
    """Plan mass on corrupted vs clean pairs; ``corrupted_rows`` [rows] bool (the noise protocol)."""

    corrupted_rows: torch.Tensor

    def __call__(self, step: int, out: ObjectiveOutput, batch: Embedded) -> dict[str, Any]:
        return {} if out.plan is None else plan_mass_by_pair_kind(out.plan, self.corrupted_rows[batch.index])


@dataclass
class DriftProbe(Probe):
    """Drift statistics every ``every`` steps; ``reduce`` averages the gradient over processes."""

    every: int
    reduce: Callable[[torch.Tensor], torch.Tensor]

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int, out: ObjectiveOutput, batch: Embedded) -> dict[str, Any]:
        stats = drift_diagnostics(out.loss, batch.a, batch.t, self.reduce)
        own = getattr(out, "drift", None)  # an objective's own drift statistics, when it offers them
        if own is not None:
            stats.update(own())
        return stats


@dataclass
class CollapseProbe(Probe):
    """Collapse statistics every ``every`` steps, also handed to ``monitor`` (which may warn)."""

    every: int
    monitor: CollapseMonitor

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int, out: ObjectiveOutput, batch: Embedded) -> dict[str, Any]:
        stats = collapse_diagnostics(batch.a, batch.t)
        self.monitor.update(step, stats)
        return stats
