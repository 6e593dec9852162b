"""Audio decoding and length fitting (the clip cache is :mod:`.cache`, the log-mel front end :mod:`.features`).

Decoding uses soundfile (wav/flac/ogg/aiff, ...) and resampling uses soxr; every
failure to produce usable samples surfaces as :class:`AudioError`.

Memory is bounded by what is decoded, never by what a header declares: samples are read in
blocks of at most :data:`BLOCK_SAMPLES` and mixed down to mono block by block, up to the
``max_seconds`` cap (``audio.max_seconds``, 600 s by default). Headers with more than
:data:`MAX_CHANNELS` channels or a rate outside :data:`RATE_RANGE` are refused.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError)
BLOCK_SAMPLES = 1 << 22  # interleaved samples per read (16 MiB as float32)
MAX_CHANNELS = 64
RATE_RANGE = (100, 768_000)  # Hz


class AudioError(Exception):
    """A clip that cannot be used; ``str(e) == f"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a clip ("file not found", "not a regular file", ...), or None.
    Never raises: a name too long or otherwise unusable for the OS is a reason like any other."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ENOTDIR, ELOOP, EACCES, embedded NUL, lone surrogates
        return f"unusable path ({e.strerror if isinstance(e, OSError) and e.strerror else e})"
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        return "not a regular file"
    return None


def _sf_message(exc: BaseException) -> str:
    """soundfile's own description of a failure, without the path it repeats."""
    message = getattr(exc, "error_string", None) or str(exc)
    return message.strip().rstrip(".")


def _n_frames(seconds: float, rate: int) -> int:
    """``ceil(seconds * rate)``, tolerant of float error such as 0.1 * 44100 = 4410.000000000001."""
    return math.ceil(seconds * rate - 1e-6)


def read_audio(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file to a mono float32 waveform at ``sample_rate``.

    Channels are averaged, ``x[t] = mean_c x[t, c]``, then the signal is resampled with
    soxr ("HQ") when the file's rate ``r`` differs. With ``max_seconds`` only the first
    ``ceil(max_seconds * r)`` frames are read, and the result holds at most
    ``ceil(max_seconds * sample_rate)`` samples.

    Returns a contiguous float32 array of shape [n]. Raises :class:`AudioError` when the
    file is missing, cannot be decoded, has no samples or has NaN/Inf samples.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise AudioError(path, problem)
    return decode_audio(str(path), sample_rate, max_seconds, name=path)


def decode_audio(
    source: str | BinaryIO, sample_rate: int, max_seconds: float | None = None, name: str | os.PathLike | None = None
) -> np.ndarray:
    """:func:`read_audio` on an open binary file (e.g. ``io.BytesIO`` of a tar member) or a path.

    ``name`` is what errors call the clip (default: ``source`` itself).
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    name = source if name is None else name
    try:
        with sf.SoundFile(source) as f:
            file_rate = f.samplerate
            check_header(f, name)
            wave = _read_mono(f, None if max_seconds is None else _n_frames(max_seconds, file_rate), name)
    except _DECODE_ERRORS as e:
        raise AudioError(name, f"cannot decode ({_sf_message(e)})") from e
    if wave.shape[0] == 0:
        raise AudioError(name, "empty audio (0 samples)")
    if file_rate != sample_rate:
        wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ")
        if max_seconds is not None:
            wave = wave[: _n_frames(max_seconds, sample_rate)]
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_header(f: sf.SoundFile, name: str | os.PathLike | BinaryIO) -> None:
    """Raise :class:`AudioError` for a channel count or sample rate no real recording has."""
    if not 1 <= f.channels <= MAX_CHANNELS:
        raise AudioError(name, f"unsupported channel count {f.channels} (at most {MAX_CHANNELS})")
    if not RATE_RANGE[0] <= f.samplerate <= RATE_RANGE[1]:
        raise AudioError(name, f"implausible sample rate {f.samplerate} Hz (expected {RATE_RANGE[0]}-{RATE_RANGE[1]} Hz)")


def _read_mono(f: sf.SoundFile, limit: int | None, name: str | os.PathLike | BinaryIO) -> np.ndarray:
    """Up to ``limit`` frames of ``f`` (all with None) as mono float32, ``x[t] = mean_c x[t, c]``,
    read block by block so that neither a long file nor a header declaring billions of frames
    allocates more than the frames actually decoded. NaN/Inf samples raise :class:`AudioError`."""
    block = max(1, BLOCK_SAMPLES // f.channels)
    parts: list[np.ndarray] = []
    total = 0
    while limit is None or total < limit:
        want = block if limit is None else min(block, limit - total)
        data = f.read(want, dtype="float32", always_2d=True)
        if data.shape[0] and not np.isfinite(data).all():
            raise AudioError(name, "non-finite samples (NaN/Inf)")
        if data.shape[0]:
            parts.append(data.mean(axis=1, dtype=np.float32))
            total += data.shape[0]
        if data.shape[0] < want:
            break
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def fit_length(wave: np.ndarray, n_samples: int, rng: np.random.Generator | None, pad: str = "zeros") -> np.ndarray:
    """Crop or pad ``wave`` [n] to exactly [n_samples].

    Longer input is cropped at offset ``o ~ U{0, ..., n - n_samples}`` drawn from ``rng``
    (training), or at ``o = 0`` when ``rng is None`` (evaluation, deterministic).
    Shorter input is filled by :func:`pad_to`.
    """
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    n = wave.shape[0]
    if n > n_samples:
        offset = 0 if rng is None else int(rng.integers(0, n - n_samples + 1))
        return wave[offset : offset + n_samples]
    if n < n_samples:
        return pad_to(wave, n_samples, pad)
    return wave


def pad_to(wave: np.ndarray, n_samples: int, pad: str = "zeros") -> np.ndarray:
    """``wave`` [n], n ≤ n_samples, filled to [n_samples].

    ``zeros``: ``[x, 0, …, 0]``. ``repeat`` (LAION-CLAP's and Hugging Face's ``repeatpad``): the
    clip tiled ``r = ⌊n_samples / n⌋`` times, then zeros: ``[x, x, …, x, 0, …, 0]``.
    """
    n = wave.shape[0]
    if pad == "repeat" and 0 < n < n_samples:
        wave = np.tile(wave, n_samples // n)
    elif pad not in ("zeros", "repeat"):
        raise ValueError(f"pad must be 'zeros' or 'repeat', got {pad!r}")
    return np.pad(wave, (0, n_samples - wave.shape[0]))
