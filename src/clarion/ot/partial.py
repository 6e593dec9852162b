"""Entropic partial optimal transport in the log domain, with implicit-differentiation gradients.

    π* = argmin_π ⟨π, C⟩ − ε H(π)   over  Π_s = {π ≥ 0, π1 ≤ μ, πᵀ1 ≤ ν, 1ᵀπ1 = s},

the problem ``ot.partial.entropic_partial_wasserstein(mu, nu, C, eps, m=s)`` solves (its Ω = Σ π log π
differs from −H by the constant s on Π_s). Iterated KL projections onto the three sets with Dykstra's
correction (Benamou et al. 2015, prop. 5) reduce to exact block maximisation of the dual: every
projection rescales rows, columns or the whole plan, so the Dykstra corrections are the previous
scalings and the iterates keep the Gibbs form

    π_ij = exp((f_i + g_j + h − C_ij)/ε),   f ≤ 0,  g ≤ 0,  h free

(f = −α, g = −β, h = −γ for the multipliers α, β ≥ 0 of the row and column constraints and γ of the
total mass), with the updates

    f_i = min(0, ε log μ_i − ε logsumexp_j((g_j + h − C_ij)/ε))
    g_j = min(0, ε log ν_j − ε logsumexp_i((f_i + h − C_ij)/ε))
    h   = ε log s − ε logsumexp_ij((f_i + g_j − C_ij)/ε).

At the fixed point a row is *active* (π1 = μ on it) when f_i < 0 and slack with f_i = 0 otherwise
(complementary slackness); the same holds for columns. The gradient w.r.t. C differentiates the KKT
system restricted to the active constraints (:mod:`.implicit`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .implicit import gibbs_plan
from .sinkhorn import OTResult, check_problem, marginals


def partial_sinkhorn(
    cost: Tensor,
    eps: float,
    mass: float | Tensor,
    mu: Tensor | None = None,
    nu: Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
) -> OTResult:
    """Entropic partial OT plan moving total mass s = ``mass`` (float or [...]) for cost [..., n, m].

    μ [..., n] and ν [..., m] (default uniform) bound the row and column sums; 0 < s ≤ min(Σμ, Σν).
    The stopping criterion (max over the batch, every ``check_every`` iterations) is how far the
    next row and column projections would move the plan, plus the mass error,

        Σ_i |min(μ_i, r_i e^{−f_i/ε}) − r_i| + Σ_j |min(ν_j, c_j e^{−g_j/ε}) − c_j| + |1ᵀπ1 − s|

    with r = π1, c = πᵀ1: it bounds the excess of the row (column) sums over μ (ν) and vanishes only
    when slack rows (columns) have a zero multiplier, i.e. at the KKT point.

    Rows (columns) are treated as active in the gradient when f_i < 0 (g_j < 0), and all of them
    when s equals Σμ (Σν) to relative precision √(dtype eps), since then every one is tight.
    """
    eps = check_problem(cost, eps, max_iter, tol, check_every)
    mu, nu = marginals(cost, mu, nu)
    mass = _check_mass(mass, mu, nu)
    neg_cost = -cost.detach() / eps
    log_mu, log_nu, log_mass = mu.log(), nu.log(), mass.log()
    with torch.no_grad():
        u = torch.zeros_like(log_mu)
        v = torch.zeros_like(log_nu)
        w = log_mass - torch.logsumexp(neg_cost, (-2, -1))
        error, n_iter = math.inf, 0
        for n_iter in range(1, max_iter + 1):
            u = (log_mu - w[..., None] - torch.logsumexp(neg_cost + v[..., None, :], -1)).clamp_max(0)
            v = (log_nu - w[..., None] - torch.logsumexp(neg_cost + u[..., :, None], -2)).clamp_max(0)
            w = log_mass - torch.logsumexp(neg_cost + u[..., :, None] + v[..., None, :], (-2, -1))
            if n_iter % check_every == 0 or n_iter == max_iter:
                error = _kkt_error(neg_cost, u, v, w, log_mu, log_nu, mass)
                if not error >= tol:  # converged, or NaN
                    break
    rows, cols = _active(u, mu, mass), _active(v, nu, mass)
    plan = gibbs_plan(cost, eps, u, v, w, rows, cols)
    return OTResult(plan, eps * u, eps * v, eps * w, n_iter, error, error < tol, eps, cost)


def _kkt_error(neg_cost: Tensor, u: Tensor, v: Tensor, w: Tensor, log_mu: Tensor, log_nu: Tensor, mass: Tensor) -> float:
    """The stopping criterion of :func:`partial_sinkhorn` (max over the batch), in units of ε for u, v, w."""
    log_plan = neg_cost + u[..., :, None] + v[..., None, :] + w[..., None, None]
    log_r, log_c = torch.logsumexp(log_plan, -1), torch.logsumexp(log_plan, -2)
    rows = (torch.minimum(log_mu, log_r - u).exp() - log_r.exp()).abs().sum(-1)
    cols = (torch.minimum(log_nu, log_c - v).exp() - log_c.exp()).abs().sum(-1)
    total = (torch.logsumexp(log_plan, (-2, -1)).exp() - mass).abs()
    return (rows + cols + total).max().item()


def _active(potential: Tensor, marginal: Tensor, mass: Tensor) -> Tensor:
    """Bool mask [..., k] of tight constraints: a negative multiplier, or all of them when s = Σ marginal."""
    full = mass >= marginal.sum(-1) * (1 - math.sqrt(torch.finfo(marginal.dtype).eps))
    return (potential < 0) | full[..., None]


def _check_mass(mass: float | Tensor, mu: Tensor, nu: Tensor) -> Tensor:
    """s as a tensor [...] of the batch shape; ValueError unless 0 < s ≤ min(Σμ, Σν) (up to rounding)."""
    batch = mu.shape[:-1]
    if isinstance(mass, Tensor):
        if mass.device != mu.device and mass.ndim > 0:
            raise ValueError(f"mass is on {mass.device} but cost is on {mu.device}")
        mass = mass.detach()
    else:
        mass = torch.as_tensor(mass, dtype=mu.dtype)  # not via float32: 0.95 must stay 0.95 in float64
    try:
        mass = mass.to(device=mu.device, dtype=mu.dtype).broadcast_to(batch)
    except RuntimeError:
        raise ValueError(f"mass of shape {tuple(mass.shape)} does not broadcast to cost's batch shape {tuple(batch)}") from None
    limit = torch.minimum(mu.sum(-1), nu.sum(-1))
    if not (torch.isfinite(mass).all() and (mass > 0).all()):
        raise ValueError(f"mass must be positive and finite; got {_describe(mass)}")
    if (mass > limit * (1 + math.sqrt(torch.finfo(mu.dtype).eps))).any():
        raise ValueError(f"mass must be at most min(sum(mu), sum(nu)) = {_describe(limit)}; got {_describe(mass)}")
    return torch.minimum(mass, limit)


def _describe(values: Tensor) -> str:
    return f"{values.item():.6g}" if values.numel() == 1 else f"values in [{values.min().item():.6g}, {values.max().item():.6g}]"
