"""Audio encoders: waveform [B, n_samples] → feature [B, output_dim].

The default is a PANNs-style CNN over log-mel, sized for CPU training: a strided stem and
early pooling keep the cost of the high-resolution layers low, the wide late blocks hold the
parameters. Encoders compute their own log-mel (:class:`clarion.audio.features.LogMel`) so it runs
on the model's device.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AudioConfig
from ..audio import LogMel
from ..audio.augment import SpecAugment


class ConvBlock(nn.Module):
    """Two 3×3 conv + BatchNorm + ReLU, then 2×2 average pooling (a size-1 axis is not pooled)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        pool = (2 if x.shape[2] > 1 else 1, 2 if x.shape[3] > 1 else 1)
        return nn.functional.avg_pool2d(x, pool)


class CnnAudioEncoder(nn.Module):
    """log-mel [B, M, T] → per-mel BatchNorm → stem (5×5 conv to ``channels[0]``, stride 2, then
    2×2 pool: [B, c₀, M/4, T/4]; SpecAugment masks on the normalised log-mel in training when configured) → one ConvBlock per further width → mean over frequency
    → max + mean over time → [B, channels[-1]]."""

    def __init__(self, audio: AudioConfig, channels: list[int], dropout: float = 0.1):
        super().__init__()
        if not channels:
            raise ValueError("audio_channels must list at least one block width")
        self.mel = LogMel(audio.sample_rate, audio.n_fft, audio.hop_length, audio.n_mels, audio.f_min, audio.f_max)
        self.mel_norm = nn.BatchNorm1d(audio.n_mels)
        self.spec_augment = SpecAugment(freq_axis=-2, time_axis=-1)  # training only; off unless augment.* sets masks
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels[0], 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
        )
        self.blocks = nn.Sequential(*(ConvBlock(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:])))
        self.dropout = nn.Dropout(dropout)
        self.output_dim = channels[-1]
        self.sample_rate = audio.sample_rate  # follows the config: its front end is built from audio.*
        self.front_end = f"LogMel from audio.* ({audio.sample_rate} Hz, n_fft {audio.n_fft}, hop {audio.hop_length}, {audio.n_mels} mel)"

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.spec_augment(self.mel_norm(self.mel(wave)))  # [B, M, T]
        x = self.blocks(self.stem(x[:, None]))  # [B, C, M', T']
        x = x.mean(2)  # [B, C, T']
        return self.dropout(x.amax(2) + x.mean(2))
