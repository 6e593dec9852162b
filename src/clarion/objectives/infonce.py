"""Symmetric InfoNCE (CLIP / CLAP contrastive loss), docs/methods.md §1.

With ``S_ij = a_i · t_j / τ`` and ``1/τ = exp(logit_scale)`` (init 1/0.07, clamped ≤ 100):

    L = ½ [ CE_rows(S) + CE_cols(S) ],   CE_rows = −(1/B) Σ_i log softmax_j(S_i·)_i

Off-diagonal entries of the same clip (``g(i) = g(j)``) are removed from both denominators
(masked to −inf): another caption of the same audio is never a negative. With
``multi_positive=True`` they become soft targets instead: the target of row i is uniform
over {j : g(j) = g(i)} (as WavCaps does).

With ``tile=T`` the logits are made T×T blocks at a time (``clarion.objectives.tiled``): the
same loss and gradients in O(B·d + T²) memory instead of O(B²). With ``kernel="fused"`` the
Triton kernels of ``clarion.objectives.fused`` compute them (logits only in on-chip memory, the
embeddings' own dtype with fp32 accumulation), falling back to the tiled path (``tile``, 4096
by default) with one logged message where Triton or a CUDA device is missing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fused import blockwise_settings, fused_softmax_cross_entropy, fused_symmetric_cross_entropy, fused_usable
from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio
from .tiled import tiled_softmax_cross_entropy, tiled_symmetric_cross_entropy

MAX_LOGIT_SCALE = math.log(100.0)


class LearnableTemperature(nn.Module):
    """``scale = exp(logit_scale)``, clamped to ≤ 100; ``logit_scale`` init ``log(1/τ₀)``."""

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True):
        super().__init__()
        value = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(value, requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def one_sided_cross_entropy(
    logits: torch.Tensor, audio_ids: torch.Tensor, multi_positive: bool, rows: slice = slice(None)
) -> torch.Tensor:
    """−mean_{k,i} log softmax_j(logits[k, i, ·])_i over [..., B, B] matrices whose diagonals hold the positives.

    Other entries of the anchor's clip are masked out of the denominator, or, with
    ``multi_positive``, share the target uniformly with the diagonal. Leading dims (e.g. the
    two SVR sides) are averaged. With ``rows``, ``logits`` [..., b, B] hold only those anchors
    (batch rows ``rows``, positives in columns ``rows``): the mean over them.
    """
    b = len(audio_ids)
    same = same_audio(audio_ids)[rows]
    if multi_positive:
        targets = same.to(logits.dtype) / same.sum(1, keepdim=True)
        return -(targets * logits.log_softmax(-1)).sum(-1).mean()
    positive = torch.arange(b, device=logits.device)[rows]
    eye = positive[:, None] == torch.arange(b, device=logits.device)
    anchors = logits.masked_fill(same & ~eye, float("-inf")).reshape(-1, b)
    labels = positive.repeat(len(anchors) // len(positive))
    return F.cross_entropy(anchors, labels)


def symmetric_cross_entropy(logits: torch.Tensor, audio_ids: torch.Tensor, multi_positive: bool) -> torch.Tensor:
    """½ (CE over rows + CE over columns) of a [B, B] logit matrix whose diagonal holds the positives."""
    return one_sided_cross_entropy(torch.stack([logits, logits.T]), audio_ids, multi_positive)


@register("infonce")
class InfoNCE(Objective):
    def __init__(
        self, init_temperature: float = 0.07, learn_temperature: bool = True, multi_positive: bool = False,
        tile: int | None = None, kernel: str = "pytorch",
    ):
        super().__init__()
        self.temperature = LearnableTemperature(init_temperature, learn_temperature)
        self.multi_positive = multi_positive
        self.fused, self.tile = blockwise_settings(kernel, tile)

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        if self.tile:
            scale = self.temperature()
            if self.fused and fused_usable(a):
                loss = fused_symmetric_cross_entropy(a, t.to(a.dtype), scale, audio_ids, self.multi_positive, self.tile)
            else:
                loss = tiled_symmetric_cross_entropy(at_least_fp32(a), at_least_fp32(t), scale, audio_ids, self.multi_positive, self.tile)
            return ObjectiveOutput(loss, {"logit_scale": scale.detach()})
        return self.similarity_loss(at_least_fp32(a) @ at_least_fp32(t).T, audio_ids)

    def similarity_loss(self, similarity: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        """The loss from the [B, B] cosine matrix ``a tᵀ`` (for wrappers that need it too)."""
        scale = self.temperature()
        loss = symmetric_cross_entropy(scale * similarity, audio_ids, self.multi_positive)
        return ObjectiveOutput(loss, {"logit_scale": scale.detach()})

    def anchor_loss(
        self, anchors: torch.Tensor, others: torch.Tensor, audio_ids: torch.Tensor, rows: slice = slice(None)
    ) -> torch.Tensor:
        """The one-directional term with ``anchors`` [..., b, d] (batch rows ``rows``, all by default)
        against ``others`` [..., B, d], averaged over anchors and leading dims."""
        scale = self.temperature()
        if self.fused and fused_usable(anchors):
            offset = range(len(audio_ids))[rows].start
            terms = [
                fused_softmax_cross_entropy(x, y.to(x.dtype), scale, audio_ids[rows], audio_ids, offset, self.multi_positive, self.tile)
                for x, y in zip(anchors.reshape(-1, *anchors.shape[-2:]), others.reshape(-1, *others.shape[-2:]))
            ]
            return torch.stack(terms).mean()
        anchors, others = at_least_fp32(anchors), at_least_fp32(others)
        if not self.tile:
            logits = scale * (anchors @ others.transpose(-1, -2))
            return one_sided_cross_entropy(logits, audio_ids, self.multi_positive, rows)
        positive = torch.arange(len(audio_ids), device=audio_ids.device)[rows]
        terms = [
            tiled_softmax_cross_entropy(x, y, scale, audio_ids[rows], audio_ids, positive, self.multi_positive, self.tile)
            for x, y in zip(anchors.reshape(-1, *anchors.shape[-2:]), others.reshape(-1, *others.shape[-2:]))
        ]
        return torch.stack(terms).mean()

    def local_loss(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor, rows: slice) -> ObjectiveOutput:
        """The 2b anchors ``rows`` (audio rows against all captions, captions against all audio):
        the mean of their cross-entropies (the loss is the mean over all 2B)."""
        loss = self.anchor_loss(torch.stack([a[rows], t[rows]]), torch.stack([t, a]), audio_ids, rows)
        return ObjectiveOutput(loss, {"logit_scale": self.temperature().detach()})
