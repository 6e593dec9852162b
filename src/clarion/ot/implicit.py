"""Gradient of an entropic OT plan w.r.t. its cost by implicit differentiation at the fixed point.

Both solvers end with a plan of Gibbs form (potentials in units of ε: ``u = f/ε``, ``v = g/ε``, ``w = h/ε``)

    π_ij = exp(u_i + v_j + w − C_ij/ε),

where row i carries the equality ``Σ_j π_ij = μ_i`` when it is *active* (every row for balanced OT;
for partial OT the tight rows, see :func:`clarion.ot.partial_sinkhorn`) and has ``u_i = 0`` otherwise;
likewise columns; and ``w`` enforces the total mass ``Σ_ij π_ij = s`` (implied by the rows in the
balanced case: redundant but harmless). With the active sets held fixed (locally constant under strict
complementarity), differentiating these equalities in a direction dC, with z = (du, dv, dw) and
``dφ_ij = du_i + dv_j + dw`` (du_i = 0 off the active rows, dv_j = 0 off the active columns), gives

    dπ = π ⊙ (dφ − dC/ε),     Aᵀ(π ⊙ dφ) = Aᵀ(π ⊙ dC)/ε,

where ``Aᵀ X = (I ⊙ X1, J ⊙ Xᵀ1, 1ᵀX1)`` keeps the active equations (I [n], J [m]: the 0/1 active
masks). This is the symmetric positive semi-definite system ``M z = Aᵀ(π ⊙ dC)/ε`` of size n + m + 1
with (r = π1, c = πᵀ1, s = 1ᵀπ1)

    M = [[diag(I r),      I π J,        I r],
         [(I π J)ᵀ,       diag(J c),    J c],
         [(I r)ᵀ,         (J c)ᵀ,       s  ]]     (+ identity on the inactive coordinates).

Reverse mode, for any loss L of the plan, with G = ∂L/∂π and P = G ⊙ π: dL = ⟨P, dφ⟩ − ⟨P, dC⟩/ε
and ⟨P, dφ⟩ = ⟨AᵀP, z⟩, so solving the adjoint system ``M y = Aᵀ P`` for y = (y_r, y_c, y_s) gives

    ∂L/∂C = π ⊙ (Y − G)/ε,    Y_ij = I_i y_r,i + J_j y_c,j + y_s.

M is singular exactly when every row is active (null vector du = 1, dw = −1) and/or every column is
(dv = 1, dw = −1). Aᵀ P is orthogonal to these gauge directions and Y does not depend on y's
component along them, so a rank-one term along each makes the system regular without changing Y. The
row block is diagonal and is eliminated (Schur complement): the dense solve is over the columns and
the mass, of size min(n, m) + 1 (the problem is transposed when n < m). Memory and time do not depend
on the number of forward iterations: only π and the two masks are saved.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def gibbs_plan(cost: Tensor, eps: float, u: Tensor, v: Tensor, w: Tensor, row_active: Tensor, col_active: Tensor) -> Tensor:
    """π = exp(u_i + v_j + w − C_ij/ε) for cost [..., n, m], u [..., n], v [..., m], w [...].

    Differentiable w.r.t. ``cost`` only, by implicit differentiation (see the module docstring);
    the potentials are treated as the solver's converged fixed point and get no gradient.
    ``row_active`` [..., n] and ``col_active`` [..., m] are bool masks of the constraints that hold
    with equality.
    """
    return _GibbsPlan.apply(cost, u.detach(), v.detach(), w.detach(), float(eps), row_active, col_active)


class _GibbsPlan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, u, v, w, eps, row_active, col_active):
        plan = torch.exp(u[..., :, None] + v[..., None, :] + w[..., None, None] - cost / eps)
        ctx.eps = eps
        ctx.save_for_backward(plan, row_active, col_active)
        return plan

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_plan):
        plan, row_active, col_active = ctx.saved_tensors
        grad_cost = plan_vjp(plan, grad_plan, ctx.eps, row_active, col_active)
        return grad_cost, None, None, None, None, None, None


def plan_vjp(plan: Tensor, grad_plan: Tensor, eps: float, row_active: Tensor, col_active: Tensor) -> Tensor:
    """∂L/∂C [..., n, m] from G = ∂L/∂π [..., n, m] at a converged plan π [..., n, m].

    Solves the adjoint KKT system of the module docstring with the masks ``row_active`` [..., n]
    and ``col_active`` [..., m] (bool) marking the equality constraints.
    """
    if plan.shape[-2] < plan.shape[-1]:
        return plan_vjp(plan.mT, grad_plan.mT, eps, col_active, row_active).mT
    weighted = grad_plan * plan
    y_rows, y_cols, y_mass = _solve_adjoint(plan, weighted, row_active, col_active)
    potential = y_rows[..., :, None] + y_cols[..., None, :] + y_mass[..., None, None]
    return (plan * potential - weighted) / eps


def _solve_adjoint(plan: Tensor, weighted: Tensor, row_active: Tensor, col_active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Solve M y = Aᵀ P for P = ``weighted`` [..., n, m]; returns (y_rows [..., n], y_cols [..., m], y_mass [...]).

    The diagonal row block is eliminated: with D = diag(I r + 1 − I), B = I π J, b = I r,

        S = [[diag(J c + 1 − J) − Bᵀ D⁻¹ B,   J c − Bᵀ D⁻¹ b],
             [(J c − Bᵀ D⁻¹ b)ᵀ,               s − bᵀ D⁻¹ b ]],

    then y_rows = D⁻¹(I P1 − B y_cols − b y_mass). Inactive coordinates come out as zero. The gauge
    directions of M become (0, 1) (all rows active) and (J, −1) (all columns active) in S; each gets a
    rank-one term with eigenvalue s/m, the size of S's typical diagonal entry c_j.
    """
    m = plan.shape[-1]
    rows = row_active.to(plan.dtype)
    cols = col_active.to(plan.dtype)
    r, c = plan.sum(-1), plan.sum(-2)
    s = r.sum(-1)
    d = rows * r + (1 - rows)
    B = rows[..., :, None] * plan * cols[..., None, :]
    b = rows * r
    a_rows, a_cols, a_mass = rows * weighted.sum(-1), cols * weighted.sum(-2), weighted.sum((-2, -1))

    DinvB = B / d[..., :, None]
    S_cc = torch.diag_embed(cols * c + (1 - cols)) - B.mT @ DinvB
    S_cm = cols * c - (DinvB.mT @ b[..., None]).squeeze(-1)
    scale = s / m
    S_mm = s - (b * b / d).sum(-1) + row_active.all(-1).to(plan.dtype) * scale
    rhs_cols = a_cols - (DinvB.mT @ a_rows[..., None]).squeeze(-1)
    rhs_mass = a_mass - (b * a_rows / d).sum(-1)

    S = torch.cat([torch.cat([S_cc, S_cm[..., :, None]], -1), torch.cat([S_cm, S_mm[..., None]], -1)[..., None, :]], -2)
    v = torch.cat([cols, -torch.ones_like(cols[..., :1])], -1)
    col_gauge = col_active.all(-1).to(plan.dtype) * scale / (m + 1)
    S = S + col_gauge[..., None, None] * v[..., :, None] * v[..., None, :]
    y = torch.linalg.solve(S, torch.cat([rhs_cols, rhs_mass[..., None]], -1))
    y_cols, y_mass = y[..., :m], y[..., m]
    y_rows = (a_rows - (B @ y_cols[..., None]).squeeze(-1) - b * y_mass[..., None]) / d
    return rows * y_rows, cols * y_cols, y_mass

