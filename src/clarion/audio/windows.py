"""Whole recordings at inference: fixed windows over a file, embedded and pooled (``audio.long=windows``).

A signal of ``n`` samples is cut into ``K = 1 + max(0, ceil((n - w) / h))`` windows of ``w``
samples starting at ``s_k = k·h`` (window ``w = window_seconds · rate``, hop ``h``); the last one
is zero-padded past the end, so every sample lies in some window when ``h <= w``, and a signal
shorter than a window is one padded window. Nothing is random.

Files are streamed: read in blocks of at most :data:`BLOCK_FRAMES` frames, mixed to mono,
resampled with a :class:`soxr.ResampleStream` ("HQ") and cut into windows as samples arrive, so
memory is O(block + window) whatever the file's length (``audio.max_seconds`` does not apply).

Pooling (:class:`WindowPooler`): window embeddings ``e_k`` (unit norm, [d]) become one clip
embedding ``mean``: ``normalize(Σ_k e_k / K)``, or ``max``: ``normalize(max_k e_k)`` per dimension.
:func:`embed_windowed` batches windows across inputs, so short files still fill batches; it holds
at most ``batch_size`` windows and, per unfinished input, one [d] accumulator (plus its [K, d]
window embeddings only when they are asked for).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch

from .decode import _DECODE_ERRORS, AudioError, _sf_message, check_header, file_problem, pad_to

BLOCK_FRAMES = 1 << 18  # frames per read (4 MiB per channel as float32)
THUMB_BINS = 64  # peaks kept per file for a waveform thumbnail


@dataclass(frozen=True)
class WindowPlan:
    """Window and hop in samples at the model's rate (both positive); ``pad``: how a window that
    runs past the end is filled (:func:`clarion.audio.decode.pad_to`: zeros, or the piece repeated)."""

    window: int
    hop: int
    pad: str = "zeros"

    @classmethod
    def from_config(cls, audio) -> WindowPlan:
        """The plan of an ``AudioConfig``: ``window_seconds`` (None: ``clip_seconds``), ``hop_seconds`` (None: the window)."""
        rate = audio.sample_rate
        window = max(1, round((audio.window_seconds or audio.clip_seconds) * rate))
        hop = window if audio.hop_seconds is None else max(1, round(audio.hop_seconds * rate))
        return cls(window, hop, audio.pad)

    def count(self, n: int) -> int:
        """K, the number of windows over ``n`` samples: ``1 + max(0, ceil((n - w) / h))``."""
        return 1 + max(0, math.ceil((n - self.window) / self.hop))

    def starts(self, n: int) -> list[int]:
        """The start sample of each window over ``n`` samples."""
        return [k * self.hop for k in range(self.count(n))]


def _cut(wave: np.ndarray, start: int, window: int, pad: str = "zeros") -> np.ndarray:
    piece = wave[start : start + window]
    if piece.shape[0] < window:
        piece = pad_to(piece, window, pad)
    return np.ascontiguousarray(piece, dtype=np.float32)


def wave_windows(wave: np.ndarray, plan: WindowPlan) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, window [w])`` over an in-memory mono waveform [n] (n >= 1)."""
    for start in plan.starts(wave.shape[0]):
        yield start, _cut(wave, start, plan.window, plan.pad)


def file_windows(
    source: str | os.PathLike | BinaryIO, sample_rate: int, plan: WindowPlan, name: str | os.PathLike | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, window [w])`` over a whole file decoded as :func:`clarion.audio.read_audio` does
    (mono mean, soxr "HQ" to ``sample_rate``) but streamed, with no length cap.

    Raises :class:`AudioError` (possibly after some windows were yielded: a file damaged in the
    middle) for a missing, undecodable, empty or non-finite file.
    """
    name = source if name is None else name
    if isinstance(source, (str, os.PathLike)):
        problem = file_problem(source)
        if problem is not None:
            raise AudioError(name, problem)
        source = str(source)
    try:
        with sf.SoundFile(source) as f:
            check_header(f, name)
            yield from _stream(f, sample_rate, plan, name)
    except _DECODE_ERRORS as e:
        raise AudioError(name, f"cannot decode ({_sf_message(e)})") from e


def _stream(f: sf.SoundFile, sample_rate: int, plan: WindowPlan, name) -> Iterator[tuple[int, np.ndarray]]:
    resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ") if f.samplerate != sample_rate else None
    block = max(1, BLOCK_FRAMES // f.channels)
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = 0  # absolute sample index of buffer[0]
    next_start = 0  # start of the next window to yield
    total = 0  # samples produced so far (at sample_rate)
    done = False
    while not done:
        data = f.read(block, dtype="float32", always_2d=True)
        done = data.shape[0] < block
        if data.shape[0] and not np.isfinite(data).all():
            raise AudioError(name, "non-finite samples (NaN/Inf)")
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[0] else np.zeros(0, dtype=np.float32)
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=done)
        total += mono.shape[0]
        buffer = np.concatenate([buffer, mono]) if buffer.shape[0] else mono
        # every window that lies inside what has arrived
        while next_start + plan.window <= total:
            yield next_start, _cut(buffer, next_start - buffer_start, plan.window)
            next_start += plan.hop
        drop = min(next_start - buffer_start, buffer.shape[0])
        buffer, buffer_start = buffer[drop:], buffer_start + drop
    if total == 0:
        raise AudioError(name, "empty audio (0 samples)")
    # the windows that run past the end (zero-padded): K = plan.count(total) in all
    for start in plan.starts(total)[next_start // plan.hop :]:
        yield start, _cut(buffer, start - buffer_start, plan.window, plan.pad)


def file_summary(path: str | os.PathLike, bins: int = THUMB_BINS) -> tuple[float, np.ndarray]:
    """``(duration in seconds, peaks uint8 [bins])`` of a whole file, streamed at its own rate.

    ``peaks[b] = round(255 · min(1, max |x[t]|))`` over the ``b``-th of ``bins`` equal spans of
    the mono signal (a waveform thumbnail). The signal is first reduced to the max per
    1/100 of a second, so memory stays O(block + duration · 100). Raises :class:`AudioError`.
    """
    problem = file_problem(path)
    if problem is not None:
        raise AudioError(path, problem)
    envelope: list[np.ndarray] = []
    total = 0
    try:
        with sf.SoundFile(str(path)) as f:
            check_header(f, path)
            step = max(1, f.samplerate // 100)
            carry = np.zeros(0, dtype=np.float32)
            while True:
                data = f.read(BLOCK_FRAMES - BLOCK_FRAMES % step, dtype="float32", always_2d=True)
                if data.shape[0] and not np.isfinite(data).all():
                    raise AudioError(path, "non-finite samples (NaN/Inf)")
                total += data.shape[0]
                mono = np.concatenate([carry, np.abs(data.mean(axis=1, dtype=np.float32))])
                last = data.shape[0] < BLOCK_FRAMES - BLOCK_FRAMES % step
                whole = mono.shape[0] if last else mono.shape[0] - mono.shape[0] % step
                if whole:
                    padded = np.pad(mono[:whole], (0, -whole % step))
                    envelope.append(padded.reshape(-1, step).max(axis=1))
                carry = mono[whole:]
                if last:
                    break
            rate = f.samplerate
    except _DECODE_ERRORS as e:
        raise AudioError(path, f"cannot decode ({_sf_message(e)})") from e
    if total == 0:
        raise AudioError(path, "empty audio (0 samples)")
    env = np.concatenate(envelope)
    edges = np.linspace(0, env.shape[0], bins + 1)
    peaks = np.array(
        [env[int(a) : max(int(a) + 1, int(math.ceil(b)))].max() if int(a) < env.shape[0] else 0.0 for a, b in zip(edges[:-1], edges[1:])]
    )
    return total / rate, np.round(255 * np.minimum(1.0, peaks)).astype(np.uint8)


@dataclass
class Pooled:
    """One input of :func:`embed_windowed`: ``embedding`` [d] (None when it failed with ``error``),
    ``starts`` the window starts in samples, ``windows`` [K, d] when they were asked for."""

    index: int
    embedding: torch.Tensor | None = None
    starts: list[int] = field(default_factory=list)
    windows: torch.Tensor | None = None
    error: AudioError | None = None


class WindowPooler:
    """Accumulates the window embeddings of one input into its pooled embedding (module docstring)."""

    def __init__(self, how: str, keep: bool):
        if how not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {how!r}")
        self.how = how
        self.keep = keep
        self.acc: torch.Tensor | None = None
        self.count = 0
        self.kept: list[torch.Tensor] = []

    def add(self, e: torch.Tensor) -> None:
        e = e.float()
        if self.acc is None:
            self.acc = e.clone()
        elif self.how == "mean":
            self.acc += e
        else:
            self.acc = torch.maximum(self.acc, e)
        self.count += 1
        if self.keep:
            self.kept.append(e)

    def result(self) -> torch.Tensor:
        assert self.acc is not None
        pooled = self.acc / self.count if self.how == "mean" else self.acc
        return torch.nn.functional.normalize(pooled, dim=-1)


def embed_windowed(
    inputs: Iterable[Callable[[], Iterator[tuple[int, np.ndarray]]]],
    embed: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    pool: str = "mean",
    keep_windows: bool = False,
) -> Iterator[Pooled]:
    """Embed every window of every input and pool them; yields one :class:`Pooled` per input, in order.

    ``inputs``: per input, a function returning its ``(start, window [w])`` iterator (called
    once, lazily); ``embed(windows [B, w]) -> [B, d]`` unit-norm embeddings. An input whose
    iterator raises :class:`AudioError` comes back with ``error`` set and no embedding.
    """
    open_items: list[tuple[Pooled, WindowPooler]] = []
    pending: list[tuple[WindowPooler, np.ndarray]] = []

    def flush() -> None:
        if pending:
            out = embed(np.stack([w for _, w in pending]))
            for (pooler, _), e in zip(pending, out):
                pooler.add(e)
            pending.clear()

    def finished() -> Iterator[Pooled]:
        while open_items:
            item, pooler = open_items.pop(0)
            if item.error is None:
                item.embedding = pooler.result()
                item.windows = torch.stack(pooler.kept) if keep_windows else None
            yield item

    for index, make in enumerate(inputs):
        item, pooler = Pooled(index), WindowPooler(pool, keep_windows)
        open_items.append((item, pooler))
        mine: list[int] = []
        try:
            for start, window in make():
                item.starts.append(start)
                pending.append((pooler, window))
                mine.append(len(pending) - 1)
                if len(pending) >= batch_size:
                    flush()
                    mine.clear()
                    # every open item but this one is complete now
                    last = open_items.pop()
                    yield from finished()
                    open_items.append(last)
        except AudioError as exc:
            item.error, item.starts = exc, []
            for position in sorted(mine, reverse=True):  # its windows not embedded yet are dropped
                pending.pop(position)
    flush()
    yield from finished()
