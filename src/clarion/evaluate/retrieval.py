"""Cross-modal retrieval metrics on a similarity matrix (docs/methods.md §6).

Input: ``sim`` [n_captions, n_clips] (any score, higher = more similar) and ``caption_clip``
[n_captions], the index of each caption's clip. Output fractions in [0, 1] and ranks ≥ 1.

Ties are broken **pessimistically**: at equal score every irrelevant candidate ranks before
the relevant one, so a collapsed model (all scores equal) gets the worst ranks, never R@1 = 1.

- T2A: each caption queries all clips; one relevant clip at rank r.
  R@k = mean[r ≤ k], mAP@10 = mean(1/r if r ≤ 10 else 0), medR / meanR = median / mean of r.
- A2T: each clip queries all captions; its captions are relevant. With the relevant captions
  sorted by score, the m-th (0-based) sits at rank r_m = 1 + m + #{irrelevant with score ≥ s_m}.
  R@k = share of clips with r_0 ≤ k; mAP@10 = mean over clips of
  (1/n_rel) Σ_{m: r_m ≤ 10} (m + 1)/r_m; medR / meanR over r_0 (the best-ranked relevant caption).
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10)


def _summary(first_rank: torch.Tensor, ap10: torch.Tensor) -> dict[str, float]:
    ranks = first_rank.double()
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in KS}
    out["mAP@10"] = float(ap10.double().mean())
    out["medR"] = float(np.median(ranks.numpy()))  # mean of the two middle ranks when even
    out["meanR"] = float(ranks.mean())
    return out


def t2a_ranks(sim: torch.Tensor, caption_clip: torch.Tensor) -> torch.Tensor:
    """[n_captions] rank (1-based, pessimistic ties) of each caption's clip."""
    target = sim.gather(1, caption_clip[:, None])
    return (sim >= target).sum(1)


def a2t_relevant_ranks(sim: torch.Tensor, caption_clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of every clip's relevant captions, best first.

    Returns ``ranks`` [n_clips, max_rel] (padded with 0) and ``valid`` [n_clips, max_rel] bool.
    """
    scores = sim.T  # [n_clips, n_captions]
    n_clips = scores.shape[0]
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[caption_clip, torch.arange(len(caption_clip))] = True
    n_rel = relevant.sum(1)
    if bool((n_rel == 0).any()):
        raise ValueError("every clip needs at least one caption for A2T retrieval")
    max_rel = int(n_rel.max())
    rel_scores = scores.masked_fill(~relevant, float("-inf")).topk(max_rel, dim=1).values  # best first
    valid = torch.arange(max_rel)[None, :] < n_rel[:, None]
    irrelevant_sorted = scores.masked_fill(relevant, float("-inf")).sort(1).values
    n_below = torch.searchsorted(irrelevant_sorted.contiguous(), rel_scores.contiguous(), right=False)
    irrelevant_at_or_above = scores.shape[1] - n_below
    m = torch.arange(max_rel)[None, :].expand(n_clips, -1)
    ranks = (1 + m + irrelevant_at_or_above).masked_fill(~valid, 0)
    return ranks, valid


def retrieval_metrics(sim: torch.Tensor, caption_clip: torch.Tensor) -> dict[str, dict[str, float]]:
    """``{"t2a": {...}, "a2t": {...}}`` with R@1/5/10, mAP@10, medR, meanR."""
    sim = torch.as_tensor(sim).double().cpu()
    caption_clip = torch.as_tensor(caption_clip, dtype=torch.long).cpu()
    if sim.ndim != 2 or sim.shape[0] != len(caption_clip):
        raise ValueError(f"sim must be [n_captions, n_clips]; got {tuple(sim.shape)} for {len(caption_clip)} captions")
    if not torch.isfinite(sim).all():
        raise ValueError("similarity matrix has non-finite entries")

    ranks = t2a_ranks(sim, caption_clip)
    t2a = _summary(ranks, torch.where(ranks <= 10, 1.0 / ranks.double(), 0.0))

    rel_ranks, valid = a2t_relevant_ranks(sim, caption_clip)
    m_plus_1 = torch.arange(1, rel_ranks.shape[1] + 1, dtype=torch.double)[None, :]
    hits = valid & (rel_ranks <= 10)
    precision = torch.where(hits, m_plus_1 / rel_ranks.clamp(min=1).double(), 0.0)
    ap10 = precision.sum(1) / valid.sum(1)
    a2t = _summary(rel_ranks[:, 0], ap10)
    return {"t2a": t2a, "a2t": a2t}


def mean_r1(metrics: dict[str, dict[str, float]]) -> float:
    """Model-selection score: mean of T2A and A2T R@1."""
    return 0.5 * (metrics["t2a"]["R@1"] + metrics["a2t"]["R@1"])
