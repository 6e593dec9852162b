"""Helpers shared by the data tests: synthetic audio files and manifests in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf


def sine(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """float32 [round(seconds * sample_rate)] of ``amplitude * sin(2 pi freq t)``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_sine(
    path: Path, freq: float = 440.0, seconds: float = 1.0, sample_rate: int = 16000, subtype: str | None = None
) -> np.ndarray:
    """Write a mono sine to ``path`` (format from the extension) and return the samples written."""
    wave = sine(freq, seconds, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype=subtype)
    return wave


def write_noise(path: Path, seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Write distinct, non-periodic content (so crops at different offsets differ)."""
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * sample_rate)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype="FLOAT")
    return wave


def write_nan_wav(path: Path, sample_rate: int = 16000) -> None:
    """A float wav whose header is fine but which holds a NaN sample."""
    wave = sine(440.0, 0.5, sample_rate)
    wave[100] = np.nan
    sf.write(path, wave, sample_rate, subtype="FLOAT")


def write_empty_wav(path: Path, sample_rate: int = 16000) -> None:
    sf.write(path, np.zeros(0, dtype=np.float32), sample_rate)


def write_junk(path: Path, n_bytes: int = 2000) -> None:
    """Random bytes under an audio extension."""
    path.write_bytes(os.urandom(n_bytes))
