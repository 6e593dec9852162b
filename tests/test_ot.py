"""clarion.ot against POT (float64 numpy references), finite differences and an unrolled autograd loop.

Plans are compared as ``n·m·π`` (the uniform plan has entries 1/(nm), so this is the error relative
to a typical entry) with tolerance 1e-5.
"""

import importlib

import numpy as np
import pytest
import torch

ot = pytest.importorskip("ot")

from clarion.ot import OTResult, partial_sinkhorn, sinkhorn  # noqa: E402
from clarion.ot.implicit import _GibbsPlan  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The problems are tiny: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(n, m, seed, dtype=F64, uniform=False, nu_mass=1.0, batch=()):
    """Cost uniform in [0, 1] [*batch, n, m]; μ [*batch, n] of mass 1, ν [*batch, m] of mass ``nu_mass``."""
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(*batch, n, m, generator=g, dtype=F64)
    if uniform:
        mu, nu = torch.full((*batch, n), 1 / n, dtype=F64), torch.full((*batch, m), 1 / m, dtype=F64)
    else:
        mu, nu = torch.rand(*batch, n, generator=g, dtype=F64) + 0.2, torch.rand(*batch, m, generator=g, dtype=F64) + 0.2
        mu, nu = mu / mu.sum(-1, keepdim=True), nu / nu.sum(-1, keepdim=True)
    return cost.to(dtype), mu.to(dtype), (nu * nu_mass).to(dtype)


def entropic_objective(plan, cost, eps):
    """⟨π, C⟩ + ε Σ π (log π − 1), numpy."""
    return float((plan * cost).sum() + eps * (plan * (np.log(plan) - 1)).sum())


def plan_error(plan, reference):
    n, m = reference.shape
    return float(np.abs(plan.detach().numpy() - reference).max() * n * m)


# --------------------------------------------------------------------------------------------- POT


@pytest.mark.parametrize("method", ["stabilized", "log"])
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("n, m, uniform", [(5, 5, True), (16, 12, False), (64, 64, False)])
def test_sinkhorn_matches_pot(n, m, uniform, eps, method):
    cost, mu, nu = problem(n, m, seed=n + m, uniform=uniform)
    result = sinkhorn(cost, eps, mu, nu, max_iter=20000, tol=1e-12, method=method)
    ref = ot.sinkhorn(mu.numpy(), nu.numpy(), cost.numpy(), eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    assert result.converged and result.marginal_error < 1e-12
    assert plan_error(result.plan, ref) < 1e-5
    assert abs(result.objective.item() - entropic_objective(ref, cost.numpy(), eps)) < 1e-9
    assert abs(result.cost.item() - float((ref * cost.numpy()).sum())) < 1e-9


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("mass", [0.6, 0.95])
@pytest.mark.parametrize("n, m, nu_mass", [(5, 5, 1.0), (16, 12, 1.3), (40, 48, 1.0)])
def test_partial_matches_pot(n, m, nu_mass, mass, eps):
    cost, mu, nu = problem(n, m, seed=3 * n + m, nu_mass=nu_mass)
    result = partial_sinkhorn(cost, eps, mass, mu, nu, max_iter=50000, tol=1e-12)
    # At ε = 0.01 POT's multiplicative-domain solver breaks down even in float64 (its Dykstra ratios
    # divide underflowed entries; the plan it returns violates π1 ≤ μ by ~0.1), so the reference
    # there is its log-domain solver, the same problem and iteration.
    # (Its stopping error is a log-domain change, which stalls at ~1e-13 from rounding: stop at 1e-12.)
    method, stop = ("sinkhorn_log", 1e-12) if eps < 0.05 else ("sinkhorn", 1e-13)
    ref = ot.partial.entropic_partial_wasserstein(mu.numpy(), nu.numpy(), cost.numpy(), eps, m=mass, method=method,
                                                  numItermax=50000, stopThr=stop)
    assert result.converged
    assert plan_error(result.plan, ref) < 1e-5
    assert abs(result.objective.item() - entropic_objective(ref, cost.numpy(), eps)) < 1e-9
    plan = result.plan
    assert (plan.sum(-1) <= mu + 1e-12).all() and (plan.sum(-2) <= nu + 1e-12).all()
    assert abs(plan.sum().item() - mass) < 1e-12
    assert (plan >= 0).all()


def test_partial_at_full_mass_is_balanced_sinkhorn():
    cost, mu, nu = problem(9, 7, seed=4)
    c1, c2 = cost.clone().requires_grad_(), cost.clone().requires_grad_()
    balanced = sinkhorn(c1, 0.05, mu, nu, max_iter=20000, tol=1e-13)
    partial = partial_sinkhorn(c2, 0.05, 1.0, mu, nu, max_iter=20000, tol=1e-13)
    assert torch.allclose(balanced.plan, partial.plan, atol=1e-12, rtol=0)
    weights = torch.randn(9, 7, dtype=F64, generator=torch.Generator().manual_seed(0))
    (weights * balanced.plan).sum().backward()
    (weights * partial.plan).sum().backward()
    assert torch.allclose(c1.grad, c2.grad, atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("solver", ["balanced", "partial"])
def test_batched_equals_separate(solver):
    cost, mu, nu = problem(7, 6, seed=11, batch=(2, 3), nu_mass=1.0 if solver == "balanced" else 1.2)
    mass = torch.tensor([[0.5, 0.7, 0.9], [1.0, 0.3, 0.8]], dtype=F64)
    weights = torch.randn(2, 3, 7, 6, dtype=F64, generator=torch.Generator().manual_seed(1))

    def solve(c, a, b, s):
        if solver == "balanced":
            return sinkhorn(c, 0.05, a, b, max_iter=20000, tol=1e-13)
        return partial_sinkhorn(c, 0.05, s, a, b, max_iter=20000, tol=1e-13)

    batched_cost = cost.clone().requires_grad_()
    batched = solve(batched_cost, mu, nu, mass)
    (weights * batched.plan).sum().backward()
    assert batched.plan.shape == (2, 3, 7, 6) and batched.f.shape == (2, 3, 7) and batched.g.shape == (2, 3, 6)
    for i in range(2):
        for j in range(3):
            single_cost = cost[i, j].clone().requires_grad_()
            single = solve(single_cost, mu[i, j], nu[i, j], mass[i, j])
            (weights[i, j] * single.plan).sum().backward()
            assert torch.allclose(batched.plan[i, j], single.plan, atol=1e-12, rtol=0)
            assert torch.allclose(batched_cost.grad[i, j], single_cost.grad, atol=1e-8, rtol=0)


def test_default_marginals_are_uniform_and_broadcast():
    cost, _, _ = problem(6, 4, seed=2, batch=(3,))
    result = sinkhorn(cost, 0.1, max_iter=5000, tol=1e-12)
    assert torch.allclose(result.plan.sum(-1), torch.full((3, 6), 1 / 6, dtype=F64), atol=1e-12)
    assert torch.allclose(result.plan.sum(-2), torch.full((3, 4), 1 / 4, dtype=F64), atol=1e-12)
    shared_mu = torch.full((6,), 1 / 6, dtype=F64)  # [n] broadcast over the batch
    assert torch.allclose(sinkhorn(cost, 0.1, shared_mu, max_iter=5000, tol=1e-12).plan, result.plan, atol=1e-14)


# ------------------------------------------------------------------------------------------ float32


@pytest.mark.parametrize("solver", ["balanced", "balanced-log", "partial"])
def test_float32_stable_at_small_eps(solver):
    cost, mu, nu = problem(64, 48, seed=5, dtype=torch.float32)
    cost = cost.requires_grad_()
    if solver.startswith("balanced"):
        method = "log" if solver == "balanced-log" else "stabilized"
        result = sinkhorn(cost, 0.01, mu, nu, max_iter=5000, tol=1e-5, method=method)
    else:
        result = partial_sinkhorn(cost, 0.01, 0.8, mu, nu, max_iter=5000, tol=1e-5)
    plan = result.plan
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert result.converged and result.marginal_error < 1e-5
    if solver.startswith("balanced"):
        assert (plan.sum(-1) - mu).abs().sum() < 1e-5 and (plan.sum(-2) - nu).abs().sum() < 1e-5
    else:
        assert (plan.sum(-1) <= mu + 1e-6).all() and (plan.sum(-2) <= nu + 1e-6).all()
        assert abs(plan.sum().item() - 0.8) < 1e-5
    # POT's multiplicative-domain kernel exp(−C/ε) already underflows here in float32; this does not
    (-plan.diagonal().clamp_min(1e-30).log().sum()).backward()
    assert torch.isfinite(cost.grad).all()


# ---------------------------------------------------------------------------------------- gradients


def solvers(eps=0.05):
    """name → (solver taking the cost, active-set description) on problems with mixed active sets."""
    _, mu, nu = problem(6, 6, seed=0)
    return {
        "balanced": lambda c: sinkhorn(c, eps, mu, nu, max_iter=50000, tol=1e-14),
        "partial": lambda c: partial_sinkhorn(c, eps, 0.7, mu, nu * 1.2, max_iter=50000, tol=1e-14),
        "partial-all-rows": lambda c: partial_sinkhorn(c, eps, 1.0, mu, nu * 1.2, max_iter=50000, tol=1e-14),
    }


def losses():
    weights = torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(7))
    return {
        "linear": lambda plan: (weights * plan).sum(),
        "neg-log-diagonal": lambda plan: -plan.diagonal(dim1=-2, dim2=-1).log().sum(),
        "quadratic": lambda plan: 50 * (plan * plan).sum(),
    }


def implicit_grad(solve, loss, cost):
    cost = cost.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(solve(cost).plan), cost)
    return grad


def finite_differences(solve, loss_fns, cost, step=1e-5):
    """Central differences of each loss in ``loss_fns`` (one solve per perturbation serves them all)."""
    grads = [torch.zeros_like(cost) for _ in loss_fns]
    for index in np.ndindex(*cost.shape):
        delta = torch.zeros_like(cost)
        delta[index] = step
        plus, minus = solve(cost + delta).plan, solve(cost - delta).plan
        for grad, loss in zip(grads, loss_fns):
            grad[index] = (loss(plus) - loss(minus)) / (2 * step)
    return grads


@pytest.mark.parametrize("solver_name", ["balanced", "partial", "partial-all-rows"])
def test_gradient_matches_finite_differences(solver_name):
    """For a linear functional ⟨W, π⟩, −Σ log π_ii and a quadratic 50‖π‖²."""
    cost, _, _ = problem(6, 6, seed=9)
    solve = solvers()[solver_name]
    names, loss_fns = zip(*losses().items())
    references = finite_differences(solve, loss_fns, cost)
    for name, loss, reference in zip(names, loss_fns, references):
        grad = implicit_grad(solve, loss, cost)
        assert (grad - reference).abs().max() < 1e-6 * max(1.0, reference.abs().max().item()), name


def test_partial_gradient_problems_have_mixed_active_sets():
    """The partial cases above exercise slack rows and columns, and the all-rows-tight gauge."""
    cost, mu, nu = problem(6, 6, seed=9)
    result = partial_sinkhorn(cost, 0.05, 0.7, mu, nu * 1.2, max_iter=50000, tol=1e-14)
    tight_rows, tight_cols = (result.f < 0).sum().item(), (result.g < 0).sum().item()
    assert 0 < tight_rows < 6 and 0 < tight_cols < 6
    result = partial_sinkhorn(cost, 0.05, 1.0, mu, nu * 1.2, max_iter=50000, tol=1e-14)
    assert torch.allclose(result.plan.sum(-1), mu, atol=1e-12) and 0 < (result.g < 0).sum().item() < 6


def test_partial_gradient_when_tight_rows_have_zero_multiplier():
    """s = Σμ with a symmetric cost: every row is tight but the solver ends with f = 0 (h carries the
    multiplier); the rows must still be treated as active."""
    cost = torch.full((5, 4), 0.5, dtype=F64)
    mu, nu = torch.full((5,), 0.2, dtype=F64), torch.full((4,), 1.5 / 4, dtype=F64)
    solve = lambda c: partial_sinkhorn(c, 0.1, 1.0, mu, nu, max_iter=10000, tol=1e-14)  # noqa: E731
    assert (solve(cost).f == 0).all()
    weights = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    loss = lambda plan: (weights * plan).sum()  # noqa: E731
    (reference,) = finite_differences(solve, [loss], cost)
    assert (implicit_grad(solve, loss, cost) - reference).abs().max() < 1e-7


def unrolled_plan(cost, eps, mu, nu, mass=None, n_iter=3000):
    """Reference: plain differentiable log-domain iterations (balanced if ``mass`` is None), autograd through all."""
    neg = -cost / eps
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)
    w = torch.zeros(()) if mass is None else np.log(mass) - torch.logsumexp(neg, (-2, -1))
    for _ in range(n_iter):
        if mass is None:
            u = mu.log() - torch.logsumexp(neg + v[None, :], -1)
            v = nu.log() - torch.logsumexp(neg + u[:, None], -2)
        else:
            u = (mu.log() - w - torch.logsumexp(neg + v[None, :], -1)).clamp_max(0)
            v = (nu.log() - w - torch.logsumexp(neg + u[:, None], -2)).clamp_max(0)
            w = np.log(mass) - torch.logsumexp(neg + u[:, None] + v[None, :], (-2, -1))
    return torch.exp(neg + u[:, None] + v[None, :] + w)


@pytest.mark.parametrize("n, m", [(7, 5), (4, 8)])
@pytest.mark.parametrize("mass", [None, 0.75])
def test_gradient_matches_unrolled_autograd(n, m, mass):
    cost, mu, nu = problem(n, m, seed=n * m, nu_mass=1.0 if mass is None else 1.3)
    eps = 0.1
    weights = torch.randn(n, m, dtype=F64, generator=torch.Generator().manual_seed(3))
    loss = lambda plan: (weights * plan).sum() - plan.log().mean()  # noqa: E731
    unrolled_cost = cost.clone().requires_grad_()
    (reference,) = torch.autograd.grad(loss(unrolled_plan(unrolled_cost, eps, mu, nu, mass)), unrolled_cost)
    if mass is None:
        grad = implicit_grad(lambda c: sinkhorn(c, eps, mu, nu, max_iter=20000, tol=1e-14), loss, cost)
    else:
        grad = implicit_grad(lambda c: partial_sinkhorn(c, eps, mass, mu, nu, max_iter=20000, tol=1e-14), loss, cost)
    assert (grad - reference).abs().max() < 1e-6 * reference.abs().max()


def test_transport_cost_gradient_includes_plan_sensitivity():
    """d⟨π, C⟩/dC = π + (dπ/dC)ᵀ C, and d(objective)/dC = π (envelope theorem)."""
    cost, mu, nu = problem(5, 6, seed=12)
    solve = lambda c: partial_sinkhorn(c, 0.1, 0.8, mu, nu * 1.5, max_iter=20000, tol=1e-14)  # noqa: E731
    c = cost.clone().requires_grad_()
    result = solve(c)
    (grad_cost,) = torch.autograd.grad(result.cost, c)
    (grad_objective,) = torch.autograd.grad(solve(c).objective, c)
    assert torch.allclose(grad_objective, result.plan.detach(), atol=1e-12)
    (fd,) = finite_differences(lambda x: _TransportCost(solve(x), x), [lambda value: value], cost)
    assert (grad_cost - fd).abs().max() < 1e-7


class _TransportCost:
    """Adapter so :func:`finite_differences` can differentiate ⟨π, C⟩: it reads ``.plan``."""

    def __init__(self, result: OTResult, cost):
        self.plan = (result.plan * cost).sum()


# ------------------------------------------------------------------------------------ no unrolling


@pytest.mark.parametrize("solver", ["balanced", "partial"])
def test_graph_is_one_node_and_saved_tensors_do_not_grow(solver):
    cost, mu, nu = problem(8, 8, seed=6)

    def run(max_iter):
        saved = []
        c = cost.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            if solver == "balanced":
                result = sinkhorn(c, 0.05, mu, nu, max_iter=max_iter, tol=1e-300)
            else:
                result = partial_sinkhorn(c, 0.05, 0.6, mu, nu, max_iter=max_iter, tol=1e-300)
        return c, result, saved

    _, short, saved_short = run(20)
    c, long, saved_long = run(500)
    assert short.n_iter == 20 and long.n_iter == 500 and not long.converged
    # The plan (reported at its creation and as the Function's output) and the two masks.
    assert saved_short == saved_long and sum(saved_long) <= 2 * 8 * 8 + 2 * 8
    node = long.plan.grad_fn
    assert node._forward_cls is _GibbsPlan
    assert [type(n).__name__ for n, _ in node.next_functions if n is not None] == ["AccumulateGrad"]
    assert node.next_functions[0][0].variable is c
    assert not long.f.requires_grad and not long.g.requires_grad


@pytest.mark.parametrize("solver", ["balanced", "partial"])
def test_gradient_does_not_depend_on_iteration_count_once_converged(solver):
    """Runs of 1000 and 3000 iterations both sit at the fixed point (tol = 0 never stops them early)."""
    cost, mu, nu = problem(10, 9, seed=8)
    weights = torch.randn(10, 9, dtype=F64, generator=torch.Generator().manual_seed(2))
    grads = []
    for max_iter in (1000, 3000):
        c = cost.clone().requires_grad_()
        if solver == "balanced":
            result = sinkhorn(c, 0.05, mu, nu, max_iter=max_iter, tol=1e-300)
        else:
            result = partial_sinkhorn(c, 0.05, 0.6, mu, nu, max_iter=max_iter, tol=1e-300)
        assert result.n_iter == max_iter and result.marginal_error < 1e-13
        (weights * result.plan).sum().backward()
        grads.append(c.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)


# -------------------------------------------------------------------------------------------- errors


def test_clear_errors():
    cost, mu, nu = problem(4, 3, seed=1)
    with pytest.raises(ValueError, match=r"mu must have shape \[\.\.\., 4\]"):
        sinkhorn(cost, 0.1, nu, nu)
    with pytest.raises(ValueError, match="does not broadcast"):
        sinkhorn(cost, 0.1, mu.expand(2, 4), nu.expand(3, 3))
    with pytest.raises(ValueError, match="non-empty"):
        sinkhorn(cost[0], 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        sinkhorn(cost - 0.5, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        sinkhorn(torch.where(cost > 0.5, float("nan"), cost), 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        partial_sinkhorn(torch.where(cost > 0.5, float("inf"), cost), 0.1, 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        sinkhorn(torch.ones(3, 3, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match="eps must be"):
        sinkhorn(cost, 0.0)
    with pytest.raises(ValueError, match="equal mass"):
        sinkhorn(cost, 0.1, mu, 2 * nu)
    with pytest.raises(ValueError, match="positive"):
        sinkhorn(cost, 0.1, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="mass must be positive"):
        partial_sinkhorn(cost, 0.1, 0.0)
    with pytest.raises(ValueError, match="mass must be positive"):
        partial_sinkhorn(cost, 0.1, -0.2)
    with pytest.raises(ValueError, match=r"at most min\(sum\(mu\), sum\(nu\)\) = 0\.5"):
        partial_sinkhorn(cost, 0.1, 0.7, mu, nu / 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        partial_sinkhorn(cost, 0.1, torch.tensor([0.5, 0.5]))


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    cost, mu, nu = problem(32, 24, seed=13, dtype=dtype, batch=(2,))
    weights = torch.randn(2, 32, 24, dtype=dtype)
    for solve in (lambda c, a, b: sinkhorn(c, 0.05, a, b, max_iter=5000, tol=1e-5),
                  lambda c, a, b: partial_sinkhorn(c, 0.05, 0.7, a, b, max_iter=5000, tol=1e-5)):
        results, grads = [], []
        for device in ("cpu", "cuda"):
            c = cost.to(device).requires_grad_()
            result = solve(c, mu.to(device), nu.to(device))
            (weights.to(device) * result.plan).sum().backward()
            results.append(result.plan.detach().cpu())
            grads.append(c.grad.cpu())
        assert torch.allclose(results[0], results[1], atol=1e-5 / (32 * 24))
        assert torch.allclose(grads[0], grads[1], atol=1e-3 * grads[0].abs().max().item())


def test_stabilized_sinkhorn_redoes_an_overflowing_block_in_the_log_domain(monkeypatch):
    """A scaling block whose potentials come back non-finite (an under/overflowed scaling) is
    discarded and redone with logsumexp updates; the answer is the log-domain solver's."""
    solver_module = importlib.import_module("clarion.ot.sinkhorn")
    real_block, calls = solver_module._scaling_block, []

    def overflow_twice(*args):
        calls.append(1)
        u, v = real_block(*args)
        return (u + float("inf"), v) if len(calls) <= 2 else (u, v)

    monkeypatch.setattr(solver_module, "_scaling_block", overflow_twice)
    cost, mu, nu = problem(32, 24, seed=9, dtype=torch.float32)
    result = sinkhorn(cost, 0.01, mu, nu, max_iter=5000, tol=1e-5)
    reference = sinkhorn(cost, 0.01, mu, nu, max_iter=5000, tol=1e-5, method="log")
    assert len(calls) > 2 and result.converged and torch.isfinite(result.plan).all()
    assert torch.allclose(result.plan, reference.plan, atol=1e-6)


def test_sinkhorn_rejects_unknown_method():
    cost, mu, nu = problem(4, 4, seed=1)
    with pytest.raises(ValueError, match="method must be"):
        sinkhorn(cost, 0.1, method="exp")
