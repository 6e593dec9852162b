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


class MsclapProjection(nn.Module):
    """msclap's head: ``e₁ = W₁ x``, ``LayerNorm(e₁ + dropout(W₂ GELU(e₁)))`` (no biases in W₁, W₂;
    dropout 0.5 in training, as msclap), [B, d_in] → [B, d_out]. Parameter names are msclap's."""

    def __init__(self, d_in: int, d_out: int, p: float = 0.5):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        return self.layer_norm(embed1 + self.drop(self.linear2(F.gelu(embed1))))


HEADS: dict[str, type[nn.Module]] = {"mlp": Projection, "msclap": MsclapProjection}


class DualEncoder(nn.Module):
    """``embed_audio``: [B, n_samples] → [B, d]; ``embed_text``: list of B captions → [B, d]; unit norm.

    ``freeze_audio`` / ``freeze_text``: that tower's parameters get no gradients
    (``requires_grad=False``, so the optimiser leaves them out), it stays in eval mode (BatchNorm
    statistics and dropout fixed) whatever ``train()`` is called with, and its forward runs under
    ``no_grad``. Its projection head still trains. :meth:`hold_in_eval` does the same for parts
    of a tower (:func:`~.freeze.freeze_layers`). ``head``: the kind of new projection heads (a
    key of ``HEADS``).

    ``audio_projection`` / ``text_projection``: a given head module ([B, output_dim] → [B,
    embed_dim], e.g. a pretrained CLAP's own) instead of a new :class:`Projection`; either way
    it is the submodule of that name, so the state-dict keys of default heads never change."""

    def __init__(
        self, audio_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int,
        freeze_audio: bool = False, freeze_text: bool = False,
        head: str = "mlp", audio_projection: nn.Module | None = None,
        text_projection: nn.Module | None = None,
    ):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.audio_projection = audio_projection or HEADS[head](audio_encoder.output_dim, embed_dim)
        self.text_projection = text_projection or HEADS[head](text_encoder.output_dim, embed_dim)
        self.embed_dim = embed_dim
        self.freeze_audio = freeze_audio
        self.freeze_text = freeze_text
        self._held_in_eval: list[nn.Module] = []  # plain list: not registered as submodules
        for tower, frozen in ((audio_encoder, freeze_audio), (text_encoder, freeze_text)):
            if frozen:
                tower.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        if self.freeze_audio:
            self.audio_encoder.eval()
        if self.freeze_text:
            self.text_encoder.eval()
        for module in self._held_in_eval:
            module.eval()
        return self

    def hold_in_eval(self, modules: list[nn.Module]) -> None:
        """Keep ``modules`` (frozen parts) in eval mode from now on: BatchNorm statistics and dropout fixed."""
        self._held_in_eval = list(modules)
        self.train(self.training)

    def forward(self, wave: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings of a batch of pairs (the call DistributedDataParallel wraps)."""
        return self.embed_audio(wave), self.embed_text(captions)

    def embed_audio(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_audio):
            feature = self.audio_encoder(wave)
        return F.normalize(self.audio_projection(feature).float(), dim=-1)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text):
            feature = self.text_encoder(captions)
        return F.normalize(self.text_projection(feature).float(), dim=-1)
