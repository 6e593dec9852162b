"""Audio decoding, length fitting, an on-disk clip cache and the log-mel front end.

Decoding uses soundfile (wav/flac/ogg/aiff, ...) and resampling uses soxr; every
failure to produce usable samples surfaces as :class:`AudioError`.

Memory is bounded by what is decoded, never by what a header declares: samples are read in
blocks of at most :data:`BLOCK_SAMPLES` and mixed down to mono block by block, up to the
``max_seconds`` cap (``audio.max_seconds``, 600 s by default). Headers with more than
:data:`MAX_CHANNELS` channels or a rate outside :data:`RATE_RANGE` are refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch

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
            if not 1 <= f.channels <= MAX_CHANNELS:
                raise AudioError(name, f"unsupported channel count {f.channels} (at most {MAX_CHANNELS})")
            if not RATE_RANGE[0] <= file_rate <= RATE_RANGE[1]:
                raise AudioError(name, f"implausible sample rate {file_rate} Hz (expected {RATE_RANGE[0]}-{RATE_RANGE[1]} Hz)")
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


def fit_length(wave: np.ndarray, n_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """Crop or zero-pad ``wave`` [n] to exactly [n_samples].

    Longer input is cropped at offset ``o ~ U{0, ..., n - n_samples}`` drawn from ``rng``
    (training), or at ``o = 0`` when ``rng is None`` (evaluation, deterministic).
    Shorter input is padded with zeros at the end.
    """
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    n = wave.shape[0]
    if n > n_samples:
        offset = 0 if rng is None else int(rng.integers(0, n - n_samples + 1))
        return wave[offset : offset + n_samples]
    if n < n_samples:
        return np.pad(wave, (0, n_samples - n))
    return wave


class ClipCache:
    """On-disk cache of decoded, resampled clips as ``.npy`` files under ``root``.

    An entry is keyed by sha1 of (absolute path, size, mtime_ns, sample_rate, max_seconds),
    so an edited file or other decode settings never reuse a stale entry. Entries are
    written to a temporary file in their folder and moved in place with ``os.replace``,
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
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=entry.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, wave, allow_pickle=False)
            os.replace(tmp, entry)
        except BaseException:
            os.unlink(tmp)
            raise


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``mel = 2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`: ``f = 700 * (10^(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK mel filters, shape [n_fft // 2 + 1, n_mels], peak 1 (no area normalisation).

    With edges ``e_0 < ... < e_{n_mels+1}`` equally spaced in mel between f_min and f_max
    (converted to Hz) and FFT bin frequencies ``f_k = k * sample_rate / n_fft``, filter m is
    ``W[k, m] = max(0, min((f_k - e_m) / (e_{m+1} - e_m), (e_{m+2} - f_k) / (e_{m+2} - e_{m+1})))``.
    """
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


class LogMel(torch.nn.Module):
    """Log mel spectrogram: wave [B, n] -> ``log(|STFT|^2 @ W + 1e-6)`` [B, n_mels, 1 + n // hop_length].

    The STFT uses a periodic Hann window of length n_fft, centred frames and reflect
    padding; ``W`` is :func:`mel_filterbank`. The computation always runs in float32,
    also under autocast. Window and filterbank are non-persistent buffers: they follow
    ``.to(device)`` but are not written to checkpoints.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
    ):
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer(
            "filterbank", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max), persistent=False
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a wave of shape [B, n], got {tuple(wave.shape)}")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.n_fft,
                window=self.window.float(),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()
            mel = (power.transpose(1, 2) @ self.filterbank.float()).transpose(1, 2)
            return torch.log(mel + 1e-6)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}"
        )
