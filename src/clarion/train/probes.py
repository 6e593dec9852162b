"""Feature-collapse monitor (METHODS.md §5): warns once when the batch embeddings collapse.

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
from dataclasses import dataclass

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
