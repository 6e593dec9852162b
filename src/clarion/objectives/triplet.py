"""Triplet (hinge) loss with negative sampling, docs/methods.md §5 (Xie, Räsänen, Virtanen 2023).

With ``S_ij = a_i · t_j`` (cosine, no temperature) and margin ``m``, anchor pair i with an audio
negative ``j_a`` and a text negative ``j_t`` costs

    ℓ_i = [m − S_ii + S_{j_a, i}]₊  +  [m − S_ii + S_{i, j_t}]₊

(first term: the caption t_i ranks its audio above a_{j_a}; second: the audio a_i ranks its
caption above t_{j_t}). Candidates are the batch pairs of another clip (``g(j) ≠ g(i)``).
Strategies (``sampling``), each picking per anchor and side from the candidates:

=============== ==============================================================================
random          one uniformly random negative per side (independent sides; seeded)
full            mean of the hinge over all negatives (Xie's "full-batch")
hard            argmax_j S_{j,i} and argmax_j S_{i,j}
semihard        argmin_j |S_neg − S_ii| per side (closest to the positive, above or below)
easy_text       j* = argmin_j t_i·t_j; pair (a_j*, t_j*) supplies both negatives
hard_text       j* = argmax_j t_i·t_j
easy_audio      j* = argmin_j a_i·a_j
hard_audio      j* = argmax_j a_i·a_j
semihard_band   FaceNet band ``S_ii − m < S_neg < S_ii``: the hardest negative inside it;
                a side with no negative in the band contributes 0 **(choice)**
hardest         VSE++ max violation: Σ_i max_j hinge, summed over anchors (VSE++ reduction)
sum             VSE0 / bidirectional ranking: Σ_i Σ_j hinge, summed over anchors and negatives
=============== ==============================================================================

All strategies except ``hardest`` and ``sum`` average ``ℓ_i`` over anchors (Xie's code).
``hardest`` picks the same negatives as ``hard``; it differs only by the sum reduction (B× the
loss and gradient, which matters through gradient clipping, hardly through Adam). Selection is
on detached scores; the loss is differentiated through the selected entries. An anchor with no
candidate (its whole batch is one clip) contributes 0.

``random`` draws from a generator seeded by ``(seed, draws)``, where the ``draws`` counter is a
buffer saved with the objective: a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import torch

from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio

SAMPLINGS = (
    "random", "full", "hard", "semihard", "easy_text", "hard_text", "easy_audio", "hard_audio",
    "semihard_band", "hardest", "sum",
)
_WITHIN_MODALITY = {"easy_text": ("text", -1.0), "hard_text": ("text", 1.0), "easy_audio": ("audio", -1.0), "hard_audio": ("audio", 1.0)}


def cross_modal_negative_scores(similarity: torch.Tensor) -> torch.Tensor:
    """[2, B, B] candidate scores per anchor from ``S = a tᵀ`` [B, B].

    Side 0 (text anchors, audio negatives): entry (i, j) = S_{j,i}. Side 1 (audio anchors,
    text negatives): entry (i, j) = S_{i,j}.
    """
    return torch.stack([similarity.T, similarity])


def select_negatives(
    sampling: str,
    negative_scores: torch.Tensor,
    positive: torch.Tensor,
    candidate: torch.Tensor,
    margin: float,
    a: torch.Tensor,
    t: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen negative per anchor and side for single-negative strategies.

    ``negative_scores`` [2, B, B] (detached), ``positive`` [B] = S_ii, ``candidate`` [B, B] bool.
    Returns ``index`` [2, B] int64 and ``found`` [2, B] bool (False: no admissible negative).
    """
    neg_inf = torch.tensor(float("-inf"), dtype=negative_scores.dtype, device=negative_scores.device)
    if sampling == "random":
        priority = torch.rand(negative_scores.shape, generator=generator, device=negative_scores.device)
        admissible = candidate.expand_as(negative_scores)
    elif sampling in ("hard", "hardest"):
        priority, admissible = negative_scores, candidate.expand_as(negative_scores)
    elif sampling == "semihard":
        priority = -(negative_scores - positive[:, None]).abs()
        admissible = candidate.expand_as(negative_scores)
    elif sampling == "semihard_band":
        gap = positive[:, None] - negative_scores  # S_ii − S_neg, in (0, m) inside the band
        admissible = candidate & (gap > 0) & (gap < margin)
        priority = negative_scores
    elif sampling in _WITHIN_MODALITY:
        modality, sign = _WITHIN_MODALITY[sampling]
        x = t if modality == "text" else a
        within = sign * (x @ x.T)
        priority, admissible = within.expand_as(negative_scores), candidate.expand_as(negative_scores)
    else:
        raise ValueError(f"sampling {sampling!r} selects no single negative")
    index = torch.where(admissible, priority, neg_inf).argmax(-1)
    return index, admissible.any(-1)


@register("triplet")
class TripletLoss(Objective):
    def __init__(self, sampling: str = "semihard", margin: float = 0.2, seed: int = 0):
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.sampling, self.margin, self.seed = sampling, float(margin), int(seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed * 1_000_003 + int(self.draws))
        self.draws += 1
        return generator

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        a, t = at_least_fp32(a), at_least_fp32(t)
        similarity = a @ t.T
        positive = similarity.diagonal()
        negative_scores = cross_modal_negative_scores(similarity)  # [2, B, B]
        candidate = ~same_audio(audio_ids)
        hinge = (self.margin - positive[:, None] + negative_scores).clamp(min=0)  # [2, B, B]
        has_candidate = candidate.any(-1)

        if self.sampling in ("full", "sum"):
            weights = candidate.to(hinge.dtype)
            per_side = (hinge * weights).sum(-1)  # [2, B]
            if self.sampling == "full":
                per_side = per_side / weights.sum(-1).clamp(min=1)
            active = (hinge > 0) & candidate
            active_share = active.sum() / (2 * candidate.sum()).clamp(min=1)
            chosen_score = (negative_scores * weights).sum(-1) / weights.sum(-1).clamp(min=1)
        else:
            generator = self._generator(a.device) if self.sampling == "random" else None
            index, found = select_negatives(
                self.sampling, negative_scores.detach(), positive.detach(), candidate, self.margin,
                a.detach(), t.detach(), generator,
            )
            per_side = hinge.gather(-1, index[..., None]).squeeze(-1) * found
            chosen_score = negative_scores.gather(-1, index[..., None]).squeeze(-1)
            active_share = ((per_side > 0) & found).sum() / (2 * has_candidate.sum()).clamp(min=1)
            found_share = found.float().mean()

        per_anchor = per_side.sum(0) * has_candidate  # [B]
        loss = per_anchor.sum() if self.sampling in ("hardest", "sum") else per_anchor.mean()
        diagnostics = {
            "triplet_active_share": active_share.detach(),
            "triplet_pos_sim": positive.detach().mean(),
            "triplet_neg_sim": chosen_score.detach().mean(),
            "triplet_loss_per_anchor": per_anchor.detach().mean() / (2 * self.margin),  # 1.0 = pinned at 2m
        }
        if self.sampling not in ("full", "sum"):
            diagnostics["triplet_found_share"] = found_share.detach()
        return ObjectiveOutput(loss, diagnostics)

