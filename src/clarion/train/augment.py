"""The trainer's per-step augmentation: mixup of the batch's waveforms and the seeding of the
audio tower's SpecAugment, both keyed to ``(seed, step, rank)``.

A resumed run repeats every draw without any state in the checkpoint: the step number and the
seed determine them. Wave-level gain and shift are drawn per item by the dataset
(:class:`~clarion.data.loaders.AudioTextDataset`), keyed to ``(seed, epoch, row)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..audio.augment import SpecAugment, mix_lambda, mixup
from ..config import AugmentConfig


class BatchAugment:
    """``augment(batch, step)``: the batch to embed at optimiser step ``step`` (1-based).

    Mixup (``augment.mixup_alpha`` > 0): ``audio`` row i becomes ``λ_i x_i + (1 - λ_i) x_{B-1-i}``
    with ``λ_i ~ Beta(α, α)`` from ``np.random.default_rng([seed, step, rank, 2])``, over this
    process's rows; captions, ``audio_id`` and ``index`` are unchanged, so the positive of row i
    stays its own caption. Every active :class:`SpecAugment` in ``model`` is re-seeded from
    ``[seed, step, rank]`` before the step's forward passes.
    """

    def __init__(self, augment: AugmentConfig, model: nn.Module, seed: int, rank: int = 0):
        self.alpha = augment.mixup_alpha
        self.seed, self.rank = seed, rank
        self.spec = [m for m in model.modules() if isinstance(m, SpecAugment) and m.active]

    def __call__(self, batch: dict, step: int) -> dict:
        for module in self.spec:
            module.reseed([self.seed, step, self.rank])
        if self.alpha > 0 and len(batch["audio"]) > 1:
            lam = mix_lambda(self.alpha, len(batch["audio"]), np.random.default_rng([self.seed, step, self.rank, 2]))
            batch = {**batch, "audio": mixup(batch["audio"], torch.from_numpy(lam))}
        return batch
