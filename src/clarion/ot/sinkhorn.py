"""Balanced entropic optimal transport: log-domain Sinkhorn with implicit-differentiation gradients.

    π* = argmin_π ⟨π, C⟩ − ε H(π)   s.t.  π1 = μ,  πᵀ1 = ν,     H(π) = −Σ_ij π_ij (log π_ij − 1),

the problem ``ot.sinkhorn(mu, nu, C, eps)`` solves. The dual potentials f [..., n], g [..., m] give
``π_ij = exp((f_i + g_j − C_ij)/ε)``, and Sinkhorn alternates the exact block maximisations

    f_i = ε log μ_i − ε logsumexp_j((g_j − C_ij)/ε),     g_j = ε log ν_j − ε logsumexp_i((f_i − C_ij)/ε),

kept in the log domain so that small ε (0.01 with costs in [0, 1]) neither under- nor overflows in
float32. The iterations run without autograd; the plan's gradient w.r.t. C comes from
:mod:`.implicit`, so memory does not grow with the iteration count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .implicit import gibbs_plan


@dataclass(frozen=True)
class OTResult:
    """Solution of an entropic OT problem with cost C [..., n, m].

    ``plan`` [..., n, m] is differentiable w.r.t. C (implicit differentiation); the potentials
    ``f`` [..., n], ``g`` [..., m] and, for partial OT, ``h`` [...] (total-mass multiplier; None for
    balanced OT) are detached, with ``plan = exp((f_i + g_j + h − C_ij)/ε)``. ``marginal_error`` is
    the stopping criterion's value at the end (max over the batch), ``n_iter`` the iterations run and
    ``converged`` whether the criterion fell below ``tol`` before ``max_iter``.
    """

    plan: Tensor
    f: Tensor
    g: Tensor
    h: Tensor | None
    n_iter: int
    marginal_error: float
    converged: bool
    eps: float
    cost_matrix: Tensor = field(repr=False)

    @property
    def cost(self) -> Tensor:
        """Transport cost ⟨π, C⟩ [...], differentiable w.r.t. C."""
        return (self.plan * self.cost_matrix).sum((-2, -1))

    @property
    def objective(self) -> Tensor:
        """Regularised objective ⟨π, C⟩ + ε Σ π (log π − 1) [...], differentiable w.r.t. C.

        log π is taken from the potentials (finite where π underflows to 0). It enters detached:
        the term's derivative in π is ε log π, and the −1 adds nothing because every admissible
        variation keeps the total mass.
        """
        h = 0.0 if self.h is None else self.h[..., None, None]
        log_plan = (self.f[..., :, None] + self.g[..., None, :] + h - self.cost_matrix.detach()) / self.eps
        return self.cost + self.eps * (self.plan * (log_plan - 1)).sum((-2, -1))


def sinkhorn(
    cost: Tensor,
    eps: float,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    method: str = "stabilized",
) -> OTResult:
    """Entropic OT plan between μ [..., n] and ν [..., m] (default uniform) for cost [..., n, m].

    Stops when ‖π1 − μ‖₁ + ‖πᵀ1 − ν‖₁ (max over the batch) is below ``tol``, checked every
    ``check_every`` iterations, or after ``max_iter``. Marginals must be positive with equal
    masses; they broadcast over the cost's leading dims and get no gradient.

    ``method="log"`` runs every update as a logsumexp. ``"stabilized"`` (default, Schmitzer's
    log-stabilised scaling) keeps the potentials in the log domain but, between two checks, runs
    the updates as matrix-vector products with the kernel ``K = exp(u_i + v_j − C_ij/ε)`` (the
    current plan, entries ≤ 1) and scalings a, b: ``a = μ / K b``, ``b = ν / Kᵀ a``; at each check
    the scalings are absorbed into the potentials (u += log a, v += log b) and K is recomputed.
    Same fixed point, about one exp per entry per ``check_every`` iterations instead of one per
    iteration. A block whose scalings under- or overflow (possible only far from the solution at
    tiny ε) is redone with logsumexp updates.
    """
    if method not in ("stabilized", "log"):
        raise ValueError(f"method must be 'stabilized' or 'log', got {method!r}")
    eps = check_problem(cost, eps, max_iter, tol, check_every)
    mu, nu = marginals(cost, mu, nu)
    _check_equal_mass(mu, nu)
    neg_cost = -cost.detach() / eps
    log_mu, log_nu = mu.log(), nu.log()
    with torch.no_grad():
        u = torch.zeros_like(log_mu)
        v = torch.zeros_like(log_nu)
        error, n_iter, plan = math.inf, 0, None
        while n_iter < max_iter:
            stabilized = method == "stabilized" and plan is not None
            # the stabilised method's first block is one logsumexp iteration, which sets the kernel's scale
            block = min(check_every if stabilized or method == "log" else 1, max_iter - n_iter)
            if stabilized:
                u_next, v_next = _scaling_block(plan, u, v, mu, nu, block)
                stabilized = bool(torch.isfinite(u_next).all() and torch.isfinite(v_next).all())
            if not stabilized:
                u_next, v_next = _log_block(neg_cost, u, v, log_mu, log_nu, block)
            u, v, n_iter = u_next, v_next, n_iter + block
            error, plan = _balanced_error(neg_cost, u, v, mu, nu)
            if not error >= tol:  # converged, or NaN
                break
    w = torch.zeros_like(u[..., 0])
    everything_rows, everything_cols = torch.ones_like(u, dtype=torch.bool), torch.ones_like(v, dtype=torch.bool)
    plan = gibbs_plan(cost, eps, u, v, w, everything_rows, everything_cols)
    return OTResult(plan, eps * u, eps * v, None, n_iter, error, error < tol, eps, cost)


def _log_block(neg_cost: Tensor, u: Tensor, v: Tensor, log_mu: Tensor, log_nu: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` Sinkhorn iterations with logsumexp updates; potentials in units of ε."""
    for _ in range(steps):
        u = log_mu - torch.logsumexp(neg_cost + v[..., None, :], -1)
        v = log_nu - torch.logsumexp(neg_cost + u[..., :, None], -2)
    return u, v


def _scaling_block(kernel: Tensor, u: Tensor, v: Tensor, mu: Tensor, nu: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` Sinkhorn iterations as scalings of ``kernel`` = exp(u_i + v_j − C_ij/ε), absorbed at the end.

    Non-finite potentials come back when a scaling under- or overflowed.
    """
    if kernel.ndim == 2:  # matrix-vector products proper: twice as fast as [n, m] @ [m, 1] on CPU
        rows, cols = (lambda x: torch.mv(kernel, x)), (lambda y: torch.mv(kernel.T, y))
    else:
        rows, cols = (lambda x: (kernel @ x[..., :, None]).squeeze(-1)), (lambda y: (y[..., None, :] @ kernel).squeeze(-2))
    b = torch.ones_like(v)
    for _ in range(steps):
        a = mu / rows(b)
        b = nu / cols(a)
    return u + a.log(), v + b.log()


def _balanced_error(neg_cost: Tensor, u: Tensor, v: Tensor, mu: Tensor, nu: Tensor) -> tuple[float, Tensor]:
    """(max over the batch of ‖π1 − μ‖₁ + ‖πᵀ1 − ν‖₁, π) for π = exp(u_i + v_j − C_ij/ε).

    Called after a column update, so every entry is at most ν_j: the exp cannot overflow.
    """
    plan = torch.exp(neg_cost + u[..., :, None] + v[..., None, :])
    rows = (plan.sum(-1) - mu).abs().sum(-1)
    cols = (plan.sum(-2) - nu).abs().sum(-1)
    return (rows + cols).max().item(), plan


def check_problem(cost: Tensor, eps: float, max_iter: int, tol: float, check_every: int) -> float:
    """ValueError unless cost is a finite non-negative float tensor [..., n, m] and the settings are sane; returns ε."""
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if cost.ndim < 2 or cost.shape[-1] == 0 or cost.shape[-2] == 0 or cost.numel() == 0:
        raise ValueError(f"cost must be a non-empty [..., n, m] tensor; got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating-point tensor; got {cost.dtype}")
    if not torch.isfinite(cost).all():
        raise ValueError("cost has non-finite entries (NaN or inf)")
    if (cost < 0).any():
        raise ValueError(f"cost must be non-negative; its minimum is {cost.min().item():.3g}")
    try:
        eps_value = float(eps)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}") from None
    if not (math.isfinite(eps_value) and eps_value > 0):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    if int(max_iter) < 1 or int(check_every) < 1:
        raise ValueError(f"max_iter and check_every must be >= 1; got {max_iter} and {check_every}")
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol!r}")
    return eps_value


def marginals(cost: Tensor, mu: Tensor | None, nu: Tensor | None) -> tuple[Tensor, Tensor]:
    """μ [..., n] and ν [..., m] broadcast to the cost's batch shape, in its dtype; uniform when None."""
    *batch, n, m = cost.shape
    return _marginal(cost, mu, "mu", batch, n), _marginal(cost, nu, "nu", batch, m)


def _marginal(cost: Tensor, weights: Tensor | None, name: str, batch: list[int], size: int) -> Tensor:
    if weights is None:
        return torch.full((*batch, size), 1.0 / size, dtype=cost.dtype, device=cost.device)
    weights = torch.as_tensor(weights)
    if weights.device != cost.device:
        raise ValueError(f"{name} is on {weights.device} but cost is on {cost.device}")
    if weights.ndim == 0 or weights.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}] to match cost {tuple(cost.shape)}; got {tuple(weights.shape)}")
    try:
        weights = weights.detach().to(cost.dtype).broadcast_to((*batch, size))
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(weights.shape)} does not broadcast to cost's batch shape {tuple(batch)}") from None
    if not torch.isfinite(weights).all() or not (weights > 0).all():
        raise ValueError(f"{name} must be positive and finite")
    return weights


def _check_equal_mass(mu: Tensor, nu: Tensor) -> None:
    a, b = mu.sum(-1), nu.sum(-1)
    gap = ((a - b).abs() / torch.maximum(a, b)).max().item()
    if gap > math.sqrt(torch.finfo(mu.dtype).eps):
        raise ValueError(f"balanced OT needs mu and nu of equal mass; their sums differ by {gap:.3g} (relative)."
                         " Use partial_sinkhorn for unequal masses")
