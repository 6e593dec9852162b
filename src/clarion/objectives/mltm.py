"""m-LTM: mini-batch learning-to-match with entropic OT, docs/methods.md §4.

Ground cost between text i and audio j under a learned PSD metric M (d × d):

    C_ij = sqrt((t_i − a_j)ᵀ M (t_i − a_j) + δ) / max_kl C_kl          (C ∈ (0, 1])

Plan ``π = argmin_{π ∈ Π(μ, ν)} ⟨π, C⟩ − ε H(π)`` with μ = ν = 1/B (log-domain Sinkhorn,
gradients by implicit differentiation, :mod:`clarion.ot`), and the loss

    L = KL(π̂ ‖ π) = Σ_ij π̂_ij (log π̂_ij − log π_ij)

with π̂ the ground-truth matching: row i's mass 1/B spread uniformly over the columns of its
own clip (``π̂ = I/B`` when every clip appears once, then ``L = −(1/B) Σ_i log π_ii − log B``).

**Partial OT** (``partial_mass = s < 1``): π is the entropic partial plan of total mass s
(π1 ≤ μ, πᵀ1 ≤ ν). A pair whose caption does not fit its audio costs much against every
column, so the plan leaves its row (partly) untransported. The target against it
(``partial_target``; every weight w_i detached and in [0, 1], row i of π̂ scaled by w_i):

- ``"uniform"`` (default): w_i = 1, π̂ = I/B as above, the m-LTM paper's loss and its authors'
  code: the partial plan decides which pairs are cheap to match, the target still asks for all.
- ``"row_mass"``: ``w_i = B (π1)_i``, the share of row i's mass the plan transports, so π̂ has
  mass s and rows the plan drops stop pulling their (possibly wrong) pair together **(choice)**.
- ``"diagonal"``: ``w_i = B Σ_{j: g(j)=g(i)} π_ij`` (= ``B π_ii`` when every clip appears once),
  the share the plan sends to the pair's own clip. On shuffled captions it separates corrupted
  from clean pairs where the row mass does not (README noise study: B·π_ii 0.017 vs 0.18, row
  mass 0.80 vs 0.80) **(choice)**.

With s = 1 the plan is balanced and the target is I/B whatever ``partial_target`` says.

The solver stops when the plan's marginals are off by less than ``tol`` = 1e-4 in L1 (of total
mass 1) **(choice)**: near-permutation plans, common once training has aligned the batch, reach
1e-4 within tens of iterations but crawl towards 1e-5 for thousands.

Metrics (``metric=``): ``euclidean`` (M = I), ``diagonal`` (M = diag(exp w)), ``full``
(M = L Lᵀ, PSD by construction), ``projected`` (a symmetric M, projected onto the PSD cone by
eigendecomposition after every optimiser step, the paper's projected gradient descent). All
start at M = I. M is a parameter of the objective, so it is optimised and saved with the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ot import partial_sinkhorn, sinkhorn
from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio

METRICS = ("euclidean", "diagonal", "full", "projected")
PARTIAL_TARGETS = ("uniform", "row_mass", "diagonal")


class GroundMetric(nn.Module):
    """A Mahalanobis metric ``M`` (d × d, PSD) and the squared distances it induces."""

    def __init__(self, kind: str, dim: int | None):
        super().__init__()
        if kind not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {kind!r}")
        if kind != "euclidean" and not dim:
            raise ValueError(f"metric {kind!r} needs embed_dim (the embedding width)")
        self.kind = kind
        if kind == "diagonal":
            self.log_diagonal = nn.Parameter(torch.zeros(dim))
        elif kind == "full":
            self.factor = nn.Parameter(torch.eye(dim))
        elif kind == "projected":
            self.metric = nn.Parameter(torch.eye(dim))

    def matrix(self) -> torch.Tensor | None:
        """M [d, d] (None for the identity)."""
        if self.kind == "diagonal":
            return torch.diag(self.log_diagonal.exp())
        if self.kind == "full":
            return self.factor @ self.factor.T
        if self.kind == "projected":
            return self.metric
        return None

    def squared_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[n, m] ``(x_i − y_j)ᵀ M (x_i − y_j)`` for x [n, d], y [m, d], clamped at 0."""
        if self.kind == "diagonal":
            scale = self.log_diagonal.exp().sqrt()
            x, y = x * scale, y * scale
        elif self.kind == "full":
            x, y = x @ self.factor, y @ self.factor
        if self.kind == "projected":
            m = 0.5 * (self.metric + self.metric.T)
            xm, ym = x @ m, y @ m
            sq = (xm * x).sum(-1)[:, None] + (ym * y).sum(-1)[None, :] - 2 * xm @ y.T
        else:
            sq = x.pow(2).sum(-1)[:, None] + y.pow(2).sum(-1)[None, :] - 2 * x @ y.T
        return sq.clamp(min=0.0)

    @torch.no_grad()
    def project(self) -> None:
        """``projected`` only: M ← V max(Λ, 0) Vᵀ for the symmetric part ``(M + Mᵀ)/2 = V Λ Vᵀ``."""
        if self.kind != "projected":
            return
        symmetric = 0.5 * (self.metric + self.metric.T)
        values, vectors = torch.linalg.eigh(symmetric.double())
        self.metric.copy_((vectors * values.clamp(min=0.0)) @ vectors.T)


def ground_cost(metric: GroundMetric, t: torch.Tensor, a: torch.Tensor, delta: float) -> torch.Tensor:
    """[Nt, Na] cost ``sqrt(d_M(t_i, a_j)² + δ) / max`` in (0, 1]."""
    cost = (metric.squared_distance(at_least_fp32(t), at_least_fp32(a)) + delta).sqrt()
    return cost / cost.max()


def matching_target(audio_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """π̂ [B, B]: row i's mass 1/B spread uniformly over the batch entries of its clip."""
    same = same_audio(audio_ids).to(dtype)
    return same / (same.sum(1, keepdim=True) * len(audio_ids))


def target_weights(plan: torch.Tensor, audio_ids: torch.Tensor, kind: str) -> torch.Tensor | None:
    """Row weights w [B, 1] of the partial-OT target (module docstring), from the detached plan
    [B, B]; None for ``"uniform"`` (w = 1)."""
    if kind == "uniform":
        return None
    plan = plan.detach()
    if kind == "row_mass":
        mass = plan.sum(1, keepdim=True)
    else:  # diagonal: the mass on the pair's own clip
        mass = (plan * same_audio(audio_ids)).sum(1, keepdim=True)
    return (len(audio_ids) * mass).clamp(max=1.0)


def kl_to_target(target: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """``Σ_ij π̂_ij (log π̂_ij − log π_ij)`` over the support of π̂ (both [B, B])."""
    support = target > 0
    tiny = torch.finfo(plan.dtype).tiny
    target, matched = target[support], plan[support]
    return (target * (target.clamp(min=tiny).log() - matched.clamp(min=tiny).log())).sum()


@register("mltm")
class MiniBatchLearningToMatch(Objective):
    def __init__(
        self,
        metric: str = "euclidean",
        eps: float = 0.05,
        partial_mass: float | None = None,
        delta: float = 1e-6,
        max_iter: int = 1000,
        tol: float = 1e-4,
        embed_dim: int | None = None,
        partial_target: str = "uniform",
    ):
        super().__init__()
        if partial_target not in PARTIAL_TARGETS:
            raise ValueError(f"partial_target must be one of {', '.join(PARTIAL_TARGETS)}, got {partial_target!r}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if partial_mass is not None and not 0.0 < partial_mass <= 1.0:
            raise ValueError(f"partial_mass must be in (0, 1], got {partial_mass}")
        self.metric = GroundMetric(metric, embed_dim)
        self.eps, self.partial_mass, self.delta = eps, partial_mass, delta
        self.max_iter, self.tol = max_iter, tol
        self.partial_target = partial_target

    @property
    def partial(self) -> bool:
        return self.partial_mass is not None and self.partial_mass < 1.0

    def plan(self, cost: torch.Tensor):
        """The balanced or partial entropic plan of a [B, B] cost (an ``OTResult``)."""
        if self.partial:
            return partial_sinkhorn(cost, self.eps, self.partial_mass, max_iter=self.max_iter, tol=self.tol)
        return sinkhorn(cost, self.eps, max_iter=self.max_iter, tol=self.tol)

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        result = self.plan(ground_cost(self.metric, t, a, self.delta))
        plan, detached = result.plan, result.plan.detach()
        target = matching_target(audio_ids, plan.dtype)
        weights = target_weights(detached, audio_ids, self.partial_target) if self.partial else None
        if weights is not None:
            target = target * weights
        loss = kl_to_target(target, plan)
        diagnostics = {
            "ot_iterations": float(result.n_iter),
            "ot_marginal_error": float(result.marginal_error),
            "ot_matched_mass": (detached * same_audio(audio_ids)).sum() / detached.sum(),
        }
        return ObjectiveOutput(loss, diagnostics, plan=detached)

    def after_optimizer_step(self) -> None:
        self.metric.project()

    def ground_cost(self, t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The learned cost between texts [Nt, d] and audios [Na, d], for OT retrieval."""
        return ground_cost(self.metric, t, a, self.delta)
