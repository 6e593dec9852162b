"""Datasets over a :class:`~clarion.data.manifest.Manifest` and their collate function.

A clip that fails to decode does not stop an epoch under ``on_bad_sample="skip"``: its
item is ``{"bad": (path, reason), ...}`` and :func:`collate` drops it from the batch and
reports it under ``"bad"``. Under ``"fail"`` it raises
:class:`~clarion.data.manifest.BadSampleError` naming the manifest line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..audio import AudioError, ClipCache, fit_length, read_audio
from ..audio.augment import augment_wave
from ..config import AugmentConfig, OnBadSample, PadMode
from .records import BadRow, BadSampleError, Manifest

logger = logging.getLogger("clarion.data")


class _ClipLoader:
    """Decodes clips (through the cache when given) and applies the bad-sample policy.

    Under "skip" a bad clip is logged once per path and process (each worker logs its own).
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int,
        clip_seconds: float,
        cache: ClipCache | None,
        on_bad_sample: OnBadSample,
        max_seconds: float | None,
        pad: PadMode = "zeros",
    ):
        if cache is not None and cache.sample_rate != sample_rate:
            raise ValueError(f"cache decodes at {cache.sample_rate} Hz but the dataset needs {sample_rate} Hz")
        if cache is not None and max_seconds is not None and cache.max_seconds != max_seconds:
            raise ValueError(f"cache caps clips at {cache.max_seconds} s but the dataset asks for {max_seconds} s")
        self.manifest = manifest
        self.sample_rate = sample_rate
        self.n_samples = round(clip_seconds * sample_rate)
        if self.n_samples <= 0:
            raise ValueError(f"clip_seconds must give at least one sample, got {clip_seconds}")
        self.cache = cache
        self.on_bad_sample = on_bad_sample
        self.max_seconds = max_seconds
        self.pad = pad
        self._warned: set[str] = set()

    def load(self, audio: Path, line: int, rng: np.random.Generator | None) -> np.ndarray | tuple[str, str]:
        """The clip fitted to [n_samples] float32, or ``(path, reason)`` when it is bad under "skip"."""
        try:
            if self.cache is not None:
                wave = self.cache.load(audio)
            else:
                wave = read_audio(audio, self.sample_rate, self.max_seconds)
        except AudioError as e:
            if self.on_bad_sample == "fail":
                raise BadSampleError.for_row(BadRow(self.manifest.path, line, str(audio), e.reason)) from e
            if e.path not in self._warned:
                self._warned.add(e.path)
                logger.warning("skipping bad clip (%s:%d) %s", self.manifest.path, line, e)
            return str(audio), e.reason
        return fit_length(wave, self.n_samples, rng, self.pad)


class AudioTextDataset(torch.utils.data.Dataset):
    """One item per manifest row (caption level).

    Item i is ``{"audio": float32 [n_samples], "caption": str, "audio_id": int, "index": i}``
    with ``n_samples = round(clip_seconds * sample_rate)`` (a shorter clip filled as ``pad`` says), or ``{"bad": (path, reason),
    "index": i}`` for an undecodable clip under "skip". In training the crop offset comes
    from ``np.random.default_rng([seed, epoch, i])``, so it depends neither on the number
    of workers nor on resuming; in evaluation the crop starts at 0. With ``augment`` (training
    only), the cropped clip then gets a random gain and a circular time shift
    (:mod:`clarion.audio.augment`) drawn from ``np.random.default_rng([seed, epoch, i, 1])``.

    With a cache, its sample rate and ``max_seconds`` apply. :meth:`set_epoch` must be
    called before the DataLoader iterator of the epoch is created (workers hold a copy),
    which rules out ``persistent_workers=True`` for training.
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int,
        clip_seconds: float,
        train: bool,
        cache: ClipCache | None = None,
        on_bad_sample: OnBadSample = "skip",
        seed: int = 0,
        max_seconds: float | None = None,
        augment: AugmentConfig | None = None,
        pad: PadMode = "zeros",
    ):
        self.manifest = manifest
        self.train = train
        self.seed = seed
        self.gain_db = augment.gain_db if augment is not None and train else 0.0
        self.shift_samples = round(augment.shift_seconds * sample_rate) if augment is not None and train else 0
        self.epoch = 0
        self.audio_ids = manifest.audio_ids
        self._loader = _ClipLoader(manifest, sample_rate, clip_seconds, cache, on_bad_sample, max_seconds, pad)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.manifest.rows[i]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        audio = self._loader.load(row.audio, row.line, rng)
        if isinstance(audio, tuple):
            return {"bad": audio, "index": i}
        if self.gain_db > 0 or self.shift_samples > 0:
            audio = augment_wave(audio, self.gain_db, self.shift_samples, np.random.default_rng([self.seed, self.epoch, i, 1]))
        return {"audio": audio, "caption": row.caption, "audio_id": int(self.audio_ids[i]), "index": i}


class ClipDataset(torch.utils.data.Dataset):
    """One item per distinct clip, cropped deterministically, for embedding audio in evaluation.

    This is ``audio.long=first`` (the first ``clip_seconds``); whole clips in windows are
    streamed by :func:`clarion.evaluate.embed.embed_clip_windows` instead, which needs no dataset.

    Item j is ``{"audio": float32 [n_samples], "clip": j}`` for ``manifest.clips[j]``, or
    ``{"bad": (path, reason), "clip": j}`` under "skip".
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int,
        clip_seconds: float,
        cache: ClipCache | None = None,
        on_bad_sample: OnBadSample = "skip",
        max_seconds: float | None = None,
        pad: PadMode = "zeros",
    ):
        self.manifest = manifest
        self.clips = manifest.clips
        first_line: dict[Path, int] = {}
        for row in manifest.rows:
            first_line.setdefault(row.audio, row.line)
        self._lines = [first_line[clip] for clip in self.clips]
        self._loader = _ClipLoader(manifest, sample_rate, clip_seconds, cache, on_bad_sample, max_seconds, pad)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, j: int) -> dict:
        audio = self._loader.load(self.clips[j], self._lines[j], None)
        if isinstance(audio, tuple):
            return {"bad": audio, "clip": j}
        return {"audio": audio, "clip": j}


def collate(samples: list[dict]) -> dict:
    """Batch dataset items, dropping bad ones.

    Returns ``{"audio": float [B, n], "caption": list[str], "audio_id": long [B],
    "index" | "clip": long [B], "bad": list[(path, reason)]}`` where B counts the good
    items; keys other than audio and bad appear when the items carry them. With no good
    item, audio has shape [0, 0].
    """
    good = [s for s in samples if "bad" not in s]
    batch: dict = {"bad": [s["bad"] for s in samples if "bad" in s]}
    batch["audio"] = torch.from_numpy(np.stack([s["audio"] for s in good])) if good else torch.zeros(0, 0)
    if good and "caption" in good[0]:
        batch["caption"] = [s["caption"] for s in good]
    for key in ("audio_id", "index", "clip"):
        if any(key in s for s in samples):
            batch[key] = torch.tensor([s[key] for s in good], dtype=torch.long)
    return batch
