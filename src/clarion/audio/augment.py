"""Training-time augmentation: random gain and time shift of a waveform, mixup of a batch, and
SpecAugment masks on a log-mel (:class:`SpecAugment`).

Every function takes its randomness from an explicit generator, so the trainer can key each draw
to ``(seed, epoch, row)`` or ``(seed, step, rank)`` and a resumed run draws exactly what the
uninterrupted run drew (no generator state in checkpoints). None of it runs at inference:
:class:`SpecAugment` is the identity in eval mode, and the wave and batch functions are only called
by the training dataset and :class:`~clarion.train.loop.Trainer`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def random_gain(wave: np.ndarray, max_db: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``wave · 10^(g / 20)`` with ``g ~ U[-max_db, max_db]`` dB; returns the scaled wave and ``g``."""
    gain_db = float(rng.uniform(-max_db, max_db))
    return (wave * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32, copy=False), gain_db


def time_shift(wave: np.ndarray, max_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Circular shift by ``s ~ U{-max_samples, …, max_samples}`` samples: ``out[(i + s) mod n] = wave[i]``
    (``np.roll``; nothing is lost or padded). Returns the shifted wave and ``s``."""
    shift = int(rng.integers(-max_samples, max_samples + 1))
    return np.roll(wave, shift), shift


def augment_wave(wave: np.ndarray, gain_db: float, shift_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The training dataset's wave augmentation: :func:`random_gain` (when ``gain_db`` > 0), then
    :func:`time_shift` (when ``shift_samples`` > 0), both drawn from ``rng`` in that order."""
    if gain_db > 0:
        wave, _ = random_gain(wave, gain_db, rng)
    if shift_samples > 0:
        wave, _ = time_shift(wave, shift_samples, rng)
    return wave


def mix_lambda(alpha: float, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """One mixing weight per row, ``λ_i ~ Beta(α, α)`` (LAION-CLAP's ``get_mix_lambda``), float32 [B]."""
    return rng.beta(alpha, alpha, size=batch_size).astype(np.float32)


def mixup(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """LAION-CLAP's ``do_mixup``: row i becomes ``λ_i x_i + (1 - λ_i) x_{B-1-i}`` (the batch mixed
    with itself in reversed order). ``x`` [B, ...], ``lam`` [B]."""
    lam = lam.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x.flip(0)


def mask_spans(batch: int, count: int, max_width: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` spans per row along an axis of ``size``: width ``w ~ U{0, …, min(max_width, size)}``,
    start ``s ~ U{0, …, size - w}``; returns the bool mask [batch, size] (True = masked)."""
    width = torch.randint(0, min(max_width, size) + 1, (batch, count), generator=generator)
    start = (torch.rand(batch, count, generator=generator) * (size - width + 1)).floor().long()
    positions = torch.arange(size)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])  # [batch, count, size]
    return inside.any(1)


class SpecAugment(nn.Module):
    """Time and frequency masks on a log-mel (Park et al., 2019), in training mode only.

    For each row: ``time_masks`` spans of at most ``time_width`` frames and ``freq_masks`` spans of
    at most ``freq_width`` mel bins (:func:`mask_spans`) are set to 0. The encoders call it after
    their per-mel normalisation, where 0 is the batch mean. ``freq_axis`` / ``time_axis`` say where
    the axes are (``cnn``: [B, M, T]; PANNs: [B, 1, T, M]). Draws come from :attr:`generator`, which
    the trainer re-seeds every step from ``(seed, step, rank)`` (:meth:`reseed`) and GradCache
    replays per chunk; without a seed the global torch RNG is used. No parameters, no buffers:
    checkpoints and exports are unchanged.
    """

    def __init__(self, time_masks: int = 0, time_width: int = 0, freq_masks: int = 0, freq_width: int = 0,
                 freq_axis: int = -2, time_axis: int = -1):
        super().__init__()
        self.time_masks, self.time_width = time_masks, time_width
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.freq_axis, self.time_axis = freq_axis, time_axis
        self.generator: torch.Generator | None = None

    @property
    def active(self) -> bool:
        return (self.time_masks > 0 and self.time_width > 0) or (self.freq_masks > 0 and self.freq_width > 0)

    def reseed(self, key: list[int]) -> None:
        """Seed :attr:`generator` from a key such as ``[seed, step, rank]`` (non-negative ints)."""
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.active:
            return x
        shape = [1] * x.dim()
        shape[0] = x.shape[0]
        mask = torch.zeros((), dtype=torch.bool, device=x.device)
        for axis, count, width in ((self.time_axis, self.time_masks, self.time_width),
                                   (self.freq_axis, self.freq_masks, self.freq_width)):
            if count > 0 and width > 0:
                spans = mask_spans(x.shape[0], count, width, x.shape[axis], self.generator).to(x.device)
                axis_shape = list(shape)
                axis_shape[axis] = x.shape[axis]
                mask = mask | spans.reshape(axis_shape)
        return x.masked_fill(mask, 0.0)

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, time_width={self.time_width}, "
                f"freq_masks={self.freq_masks}, freq_width={self.freq_width}")
