"""The log-mel front end of the ``cnn`` audio encoder: mel scale, filterbank, :class:`LogMel`."""

from __future__ import annotations

import numpy as np
import torch


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
