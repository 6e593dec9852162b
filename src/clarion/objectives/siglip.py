"""SigLIP pairwise sigmoid loss, docs/methods.md §2.

    L = −(1/B) Σ_ij log σ( z_ij (t' · a_i·t_j + b) ),   z_ij = +1 if g(i) = g(j) else −1

``t' = exp(t_param)`` (init 10) and ``b`` (init −10) are learnable. Captions of the same clip
are positives of each other (``z = +1``), never negatives.

With ``tile=T`` the logits are made T×T blocks at a time (``clarion.objectives.tiled``): the
same loss and gradients in O(B·d + T²) memory instead of O(B²). ``kernel="fused"``: the Triton
kernels of ``clarion.objectives.fused``, with the tiled path as fallback (see ``infonce``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fused import blockwise_settings, fused_sigmoid_pairs, fused_usable
from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio
from .tiled import tiled_sigmoid_pairs


def sigmoid_pair_loss(logits: torch.Tensor, audio_ids: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    """−(1/B) Σ_ij log σ(z_ij · logits_ij) over [..., B, B], z from clip identity; leading dims averaged.

    With ``rows``, ``logits`` [..., b, B] hold only those rows: the mean of their row sums.
    """
    z = same_audio(audio_ids)[rows].to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).sum((-2, -1)).mean() / logits.shape[-2]


@register("siglip")
class SigLIP(Objective):
    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0, tile: int | None = None, kernel: str = "pytorch"):
        super().__init__()
        self.t_param = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.fused, self.tile = blockwise_settings(kernel, tile)

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        if self.tile:
            return ObjectiveOutput(self.anchor_loss(a, t, audio_ids), self.diagnostics())
        return self.similarity_loss(at_least_fp32(a) @ at_least_fp32(t).T, audio_ids)

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return {"logit_scale": self.t_param.exp().detach(), "logit_bias": self.bias.detach()}

    def similarity_loss(self, similarity: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        """The loss from the [B, B] cosine matrix ``a tᵀ`` (for wrappers that need it too)."""
        loss = sigmoid_pair_loss(self.t_param.exp() * similarity + self.bias, audio_ids)
        return ObjectiveOutput(loss, self.diagnostics())

    def anchor_loss(
        self, anchors: torch.Tensor, others: torch.Tensor, audio_ids: torch.Tensor, rows: slice = slice(None)
    ) -> torch.Tensor:
        """The sigmoid loss with ``anchors`` [..., b, d] (batch rows ``rows``, all by default) in place of
        one modality against ``others`` [..., B, d]: the mean of the anchors' row sums, averaged over leading dims."""
        scale = self.t_param.exp()
        if self.fused and fused_usable(anchors):
            terms = [
                fused_sigmoid_pairs(x, y.to(x.dtype), scale, self.bias, audio_ids[rows], audio_ids, self.tile)
                for x, y in zip(anchors.reshape(-1, *anchors.shape[-2:]), others.reshape(-1, *others.shape[-2:]))
            ]
            return torch.stack(terms).mean()
        anchors, others = at_least_fp32(anchors), at_least_fp32(others)
        if not self.tile:
            return sigmoid_pair_loss(scale * (anchors @ others.transpose(-1, -2)) + self.bias, audio_ids, rows)
        terms = [
            tiled_sigmoid_pairs(x, y, scale, self.bias, audio_ids[rows], audio_ids, self.tile)
            for x, y in zip(anchors.reshape(-1, *anchors.shape[-2:]), others.reshape(-1, *others.shape[-2:]))
        ]
        return torch.stack(terms).mean()

    def local_loss(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor, rows: slice) -> ObjectiveOutput:
        """Audio rows ``rows`` against all captions: the mean of their row sums (the loss is the mean over all B rows)."""
        return ObjectiveOutput(self.anchor_loss(a[rows], t, audio_ids, rows), self.diagnostics())
