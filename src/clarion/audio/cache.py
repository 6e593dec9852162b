"""An on-disk cache of decoded, resampled clips (``audio.cache_dir``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..files import AtomicFile
from .decode import AudioError, file_problem, read_audio


class ClipCache:
    """On-disk cache of decoded, resampled clips as ``.npy`` files under ``root``.

    An entry is keyed by sha1 of (absolute path, size, mtime_ns, sample_rate, max_seconds),
    so an edited file or other decode settings never reuse a stale entry. Entries are
    written with :class:`~clarion.files.AtomicFile` (a temp file renamed in place, mode ``0o666 & ~umask``),
    which keeps concurrent DataLoader workers safe. Decode errors are not cached.
    ``hits`` and ``misses`` count lookups in this process.
    """

    def __init__(self, root: str | os.PathLike, sample_rate: int, max_seconds: float | None = None):
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.hits = 0
        self.misses = 0
        self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, path: str | os.PathLike) -> Path:
        """Where the decoded clip of ``path`` (as it is now on disk) is stored."""
        path = os.path.abspath(path)
        problem = file_problem(path)
        if problem is not None:
            raise AudioError(path, problem)
        st = os.stat(path)
        key = repr((path, st.st_size, st.st_mtime_ns, self.sample_rate, self.max_seconds))
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """The float32 waveform [n] of ``path``, from the cache or decoded by :func:`read_audio`."""
        entry = self.entry(path)
        if entry.exists():
            try:
                wave = np.load(entry, allow_pickle=False)
            except (OSError, ValueError):
                pass  # unreadable entry: decode again and overwrite it
            else:
                self.hits += 1
                return wave
        self.misses += 1
        wave = read_audio(path, self.sample_rate, self.max_seconds)
        self._store(entry, wave)
        return wave

    @staticmethod
    def _store(entry: Path, wave: np.ndarray) -> None:
        with AtomicFile(entry) as f:
            np.save(f.file, wave, allow_pickle=False)
