"""The dual encoder: audio and text towers, each followed by a projection head into the
shared space, outputs L2-normalised. Temperatures live in the objectives, not here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Module):
    """``x ↦ W₂ GELU(W₁ x) + W₀ x``: a two-layer MLP with a linear skip, [B, d_in] → [B, d_out]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.skip = nn.Linear(d_in, d_out, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.mlp(x)


class DualEncoder(nn.Module):
    """``embed_audio``: [B, n_samples] → [B, d]; ``embed_text``: list of B captions → [B, d]; unit norm."""

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.audio_projection = Projection(audio_encoder.output_dim, embed_dim)
        self.text_projection = Projection(text_encoder.output_dim, embed_dim)
        self.embed_dim = embed_dim

    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_projection(self.audio_encoder(wave)).float(), dim=-1)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(captions)).float(), dim=-1)
