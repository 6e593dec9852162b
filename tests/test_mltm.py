import json
import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from clarion.cli import main
from clarion.objectives import build_objective
from clarion.objectives.mltm import GroundMetric, ground_cost, matching_target
from clarion.rundir import load_objective

from conftest import TINY


def unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)


def perturbed_metric(kind, dim, seed=0):
    metric = GroundMetric(kind, dim).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in metric.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        if kind == "projected":
            metric.metric.copy_(metric.metric @ metric.metric.T)  # some PSD, non-diagonal M
    return metric


@pytest.mark.parametrize("kind", ["euclidean", "diagonal", "full", "projected"])
def test_squared_distance_matches_the_mahalanobis_form(kind):
    metric = perturbed_metric(kind, 5)
    x, y = unit(4, 5, 1), unit(3, 5, 2)
    m = metric.matrix().detach() if metric.matrix() is not None else torch.eye(5, dtype=torch.float64)
    expected = torch.tensor([[float((x[i] - y[j]) @ m @ (x[i] - y[j])) for j in range(3)] for i in range(4)],
                            dtype=torch.float64)
    assert torch.allclose(metric.squared_distance(x, y), expected, atol=1e-12)
    assert torch.linalg.eigvalsh(0.5 * (m + m.T)).min() >= -1e-12  # every parameterisation is PSD here


def test_projection_clamps_negative_eigenvalues_and_keeps_psd_matrices():
    metric = GroundMetric("projected", 4).double()
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    eigenvalues = torch.tensor([2.0, 0.5, -0.3, -1.0], dtype=torch.float64)
    with torch.no_grad():
        metric.metric.copy_((q * eigenvalues) @ q.T)
    metric.project()
    projected = metric.metric.detach()
    assert torch.allclose(projected, (q * eigenvalues.clamp(min=0)) @ q.T, atol=1e-12)  # Frobenius-nearest PSD
    before = projected.clone()
    metric.project()
    assert torch.allclose(metric.metric.detach(), before, atol=1e-12)  # PSD input: unchanged


def test_matching_target_spreads_mass_over_same_clip_pairs():
    target = matching_target(torch.tensor([0, 1, 1, 2]), torch.float64)
    assert torch.allclose(target.sum(1), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(target.sum(0), torch.full((4,), 0.25, dtype=torch.float64))
    assert target[1, 2] == target[1, 1] == 0.125 and target[0, 1] == 0


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_balanced_loss_matches_pot_plan(eps):
    a, t = unit(8, 6, 3), unit(8, 6, 4)
    obj = build_objective("mltm", {"eps": eps, "tol": 1e-10, "max_iter": 5000}).double()
    loss = obj(a, t, torch.arange(8)).loss
    cost = ground_cost(obj.metric, t, a, obj.delta).numpy()
    plan = ot.sinkhorn(np.full(8, 1 / 8), np.full(8, 1 / 8), cost, eps, method="sinkhorn_log", stopThr=1e-12,
                       numItermax=100000)
    expected = -np.log(np.diag(plan)).mean() - np.log(8)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_partial_mass_one_equals_balanced_and_partial_spares_a_corrupted_pair():
    a, t = unit(8, 6, 5), unit(8, 6, 6)
    t = t.clone()
    t[3] = -a.mean(0) / a.mean(0).norm()  # a caption that fits none of the clips, its own least of all
    ids = torch.arange(8)
    balanced = build_objective("mltm", {"eps": 0.05}).double()
    full_mass = build_objective("mltm", {"eps": 0.05, "partial_mass": 1.0}).double()
    assert full_mass(a, t, ids).loss.item() == pytest.approx(balanced(a, t, ids).loss.item(), rel=1e-9)

    def corrupted_grad_share(objective):
        tt = t.clone().requires_grad_(True)
        out = objective(a, tt, ids)
        out.loss.backward()
        return (tt.grad[3].norm() / tt.grad.norm()).item(), out.plan

    share_balanced, _ = corrupted_grad_share(balanced)
    shares = {}
    for kind in ("uniform", "row_mass", "diagonal"):
        options = {"eps": 0.05, "partial_mass": 0.8, "partial_target": kind}
        shares[kind], plan = corrupted_grad_share(build_objective("mltm", options).double())
        assert plan.sum().item() == pytest.approx(0.8, abs=1e-4)
        assert 8 * plan[3].sum() < 0.5  # the plan leaves most of the corrupted caption untransported
    # weighted targets stop pulling the dropped caption; the uniform target (the paper's) still asks for it
    assert shares["row_mass"] < 0.5 * share_balanced and shares["diagonal"] < 0.5 * share_balanced
    assert shares["uniform"] > 0.5 * share_balanced


def partial_target_loss(plan, ids, kind):
    """Explicit reference: KL(π̂ ‖ π) with π̂_ij = w_i / (B n_i) on the n_i entries of row i's clip,
    w_i = 1 (uniform), B Σ_j π_ij (row_mass) or B Σ_{j same clip} π_ij (diagonal), capped at 1."""
    b = len(ids)
    total = 0.0
    for i in range(b):
        same = [j for j in range(b) if ids[j] == ids[i]]
        if kind == "uniform":
            w = 1.0
        elif kind == "row_mass":
            w = min(1.0, b * sum(float(plan[i, j]) for j in range(b)))
        else:
            w = min(1.0, b * sum(float(plan[i, j]) for j in same))
        for j in same:
            target = w / (b * len(same))
            total += target * (math.log(target) - math.log(float(plan[i, j])))
    return total


@pytest.mark.parametrize("kind", ["uniform", "row_mass", "diagonal"])
@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 1, 2, 3, 3, 3, 4]])
def test_partial_targets_match_explicit_loops_over_the_plan(kind, ids):
    a, t = unit(8, 6, 30), unit(8, 6, 31)
    ids = torch.tensor(ids)
    obj = build_objective("mltm", {"eps": 0.05, "partial_mass": 0.7, "partial_target": kind}).double()
    out = obj(a, t, ids)
    assert out.loss.item() == pytest.approx(partial_target_loss(out.plan, ids.tolist(), kind), rel=1e-10)
    if kind == "uniform" and len(set(ids.tolist())) == 8:  # the paper's form: −(1/B) Σ log π_ii − log B
        assert out.loss.item() == pytest.approx(float(-out.plan.diagonal().log().mean() - math.log(8)), rel=1e-10)


def test_partial_targets_weight_rows_by_detached_masses():
    """The weights are constants of the loss: its gradient w.r.t. the plan is −π̂/π, π̂ scaled by w."""
    a, t = unit(8, 6, 32), unit(8, 6, 33)
    ids = torch.arange(8)
    grads = {}
    for kind in ("uniform", "row_mass", "diagonal"):
        tt = t.clone().requires_grad_(True)
        obj = build_objective("mltm", {"eps": 0.05, "partial_mass": 0.7, "partial_target": kind}).double()
        result = obj.plan(obj.ground_cost(tt, a))
        plan = result.plan.detach().requires_grad_(True)
        target = matching_target(ids, torch.float64)
        if kind == "row_mass":
            target = target * (8 * plan.detach().sum(1, keepdim=True)).clamp(max=1)
        elif kind == "diagonal":
            target = target * (8 * plan.detach().diagonal()[:, None]).clamp(max=1)
        support = target > 0
        loss = (target[support] * (target[support].log() - plan[support].log())).sum()
        (grads[kind],) = torch.autograd.grad(loss, plan)
        assert torch.allclose(grads[kind], -target / plan.detach(), atol=1e-12)
    assert not torch.allclose(grads["diagonal"], grads["uniform"])


def test_balanced_plan_ignores_the_partial_target():
    a, t = unit(8, 6, 34), unit(8, 6, 35)
    ids = torch.arange(8)
    losses = [build_objective("mltm", {"eps": 0.05, "partial_target": kind}).double()(a, t, ids).loss.item()
              for kind in ("uniform", "row_mass", "diagonal")]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-12)


@pytest.mark.parametrize("kind", ["diagonal", "full", "projected"])
def test_metric_receives_gradients_and_projected_stays_psd_after_steps(kind):
    obj = build_objective("mltm", {"metric": kind, "eps": 0.1}, embed_dim=6).double()
    optimizer = torch.optim.SGD(obj.parameters(), lr=5.0)
    for step in range(5):
        a, t = unit(8, 6, 10 + step), unit(8, 6, 20 + step)
        optimizer.zero_grad()
        obj(a, t, torch.arange(8)).loss.backward()
        grads = [p.grad for p in obj.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        optimizer.step()
        obj.after_optimizer_step()
    m = obj.metric.matrix().detach()
    assert torch.linalg.eigvalsh(0.5 * (m + m.T)).min() >= -1e-9


def test_metric_options_are_validated():
    with pytest.raises(ValueError, match="metric must be one of"):
        build_objective("mltm", {"metric": "cosine"})
    with pytest.raises(ValueError, match="needs embed_dim"):
        build_objective("mltm", {"metric": "full"})
    with pytest.raises(ValueError, match="partial_mass"):
        build_objective("mltm", {"partial_mass": 1.5})
    with pytest.raises(ValueError, match="partial_target"):
        build_objective("mltm", {"partial_target": "row"})


def test_mltm_trains_saves_its_metric_and_ot_scoring_evaluates(tone_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--train", str(tone_data["train"]), "--val", str(tone_data["val"]), "--objective", "mltm",
            "--out", str(run), "--epochs", "6", "--batch-size", "16", "-q", *TINY,
            "objective.options.metric=full", "objective.options.eps=0.05"]
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert all(np.isfinite(r["loss"]) and r["ot_marginal_error"] < 1e-3 for r in steps)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]

    objective = load_objective(run)
    factor = objective.metric.factor.detach()
    assert factor.shape == (32, 32) and not torch.allclose(factor, torch.eye(32))  # learned, saved, restored

    capsys.readouterr()
    out = tmp_path / "ot.json"
    assert main(["evaluate", str(run), "--data", str(tone_data["val"]), "--scoring", "ot", "--json", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["scoring"]["method"] == "ot" and metrics["scoring"]["marginal_error"] < 1e-3
    assert metrics["t2a"]["R@1"] >= 0.4  # 8 clips: chance is 1/8
