"""OT retrieval (m-LTM, docs/methods.md §4): rank by a transport plan over the whole test set.

With Nt captions and Na clips, cost C [Nt, Na] in (0, 1] (the run's learned ground cost for
an ``mltm`` run, else ``‖t − a‖ / max``), uniform marginals 1/Nt over captions and 1/Na over
clips, the entropic plan ``π = argmin ⟨π, C⟩ − ε H(π)`` replaces the cosine as the score:
caption i ranks clips by ``π_i·`` and clip j ranks captions by ``π_·j``. Because every clip
must receive its share of mass, a "hub" clip close to many captions cannot win them all.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ot import sinkhorn

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euclidean_cost(text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """[Nt, Na] ``‖t_i − a_j‖ / max`` (the m-LTM cost with M = I)."""
    cost = torch.cdist(text, audio)
    return cost / cost.max().clamp(min=1e-12)


def ot_scores(
    text: torch.Tensor,
    audio: torch.Tensor,
    cost_fn: CostFn = euclidean_cost,
    eps: float = 0.03,
    max_iter: int = 200,
    tol: float = 1e-5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Plan [Nt, Na] (float64, higher = better match) and solver info for texts [Nt, d], audios [Na, d]."""
    with torch.no_grad():
        cost = cost_fn(text, audio).double()
        result = sinkhorn(cost, eps, max_iter=max_iter, tol=tol)
    info = {"eps": eps, "iterations": int(result.n_iter), "marginal_error": float(result.marginal_error)}
    return result.plan, info
