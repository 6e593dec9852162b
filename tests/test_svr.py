import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.func import functional_call

from clarion.config import load_config
from clarion.objectives import build_objective
from clarion.objectives.svr import (
    bounded_radius, radius_constraint, radius_statistics, similarity_features, support_vectors,
)
from clarion.train.loop import train

from conftest import TINY


def unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)


def test_support_vector_jacobian_keeps_parallel_and_scales_perpendicular():
    """∂t^sup/∂t = I − (R/‖a−t‖)(I − ûûᵀ), checked against autograd for random embeddings."""
    a, t, v = unit(5, 7, 0), unit(5, 7, 1), torch.randn(5, 7, dtype=torch.float64)
    radius = torch.tensor([0.0, 0.05, 0.3, 0.7, 1.1], dtype=torch.float64)
    t = t.requires_grad_(True)
    (grad,) = torch.autograd.grad((support_vectors(t, a, radius) * v).sum(), t)
    with torch.no_grad():
        diff = a - t
        dist = diff.norm(dim=1, keepdim=True)
        u = diff / dist
        v_par = (v * u).sum(1, keepdim=True) * u
        expected = v_par + (1 - radius[:, None] / dist) * (v - v_par)
        assert torch.allclose(grad, expected, atol=1e-12)
        assert torch.allclose((grad * u).sum(1), (v * u).sum(1), atol=1e-12)  # parallel part unchanged
        perp = grad - (grad * u).sum(1, keepdim=True) * u
        assert torch.allclose(perp.norm(dim=1), (1 - radius / dist[:, 0]).abs() * (v - v_par).norm(dim=1), atol=1e-12)


@pytest.mark.parametrize("name", ["infonce+svr", "siglip+svr"])
@pytest.mark.parametrize("sides", ["uni", "bi"])
@pytest.mark.parametrize("bi_reduce", ["sum", "mean"])
def test_zero_radius_svr_term_equals_base_loss(name, sides, bi_reduce):
    """R = 0 (hinge, static): each side's SVR term is the base's one-sided term; ``sum`` adds the
    sides (α per side), ``mean`` averages them."""
    a, t = unit(6, 8, 2), unit(6, 8, 3)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    obj = build_objective(name, {"radius": "static", "radius_bound": "hinge", "sides": sides, "init_radius": 0.0,
                                 "bi_reduce": bi_reduce}).double()
    out = obj(a, t, ids)
    text_side, audio_side = obj.base.anchor_loss(t, a, ids).item(), obj.base.anchor_loss(a, t, ids).item()
    if sides == "uni":
        expected = text_side
    else:
        expected = text_side + audio_side if bi_reduce == "sum" else 0.5 * (text_side + audio_side)
    assert float(out.diagnostics["loss_svr"]) == pytest.approx(expected, rel=1e-12)
    if name == "infonce+svr" and sides == "bi" and bi_reduce == "mean":  # the two halves of symmetric InfoNCE
        assert float(out.diagnostics["loss_svr"]) == pytest.approx(float(out.diagnostics["loss_base"]), rel=1e-12)
    assert out.loss.item() == pytest.approx(float(out.diagnostics["loss_base"]) + float(out.diagnostics["loss_svr"]), rel=1e-12)


def test_constraint_is_zero_inside_the_interval_and_grows_outside():
    dist = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    radius = torch.tensor([0.0, 0.25, 0.5, 0.7, -0.2])
    per_item = [float(radius_constraint(radius[i : i + 1], dist[i : i + 1])) for i in range(5)]
    assert per_item == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.2])
    assert float(radius_constraint(torch.tensor([0.9]), torch.tensor([0.5]))) > per_item[3]


def svr_loop(a, t, ids, r_text, r_audio, scale):
    """Explicit reference of each side's SVR term over InfoNCE: the side's CE with support-vector
    anchors, same-clip entries left out of the denominators; returns (text side, audio side)."""
    b = len(ids)

    def side(anchors, targets, radius):
        total = 0.0
        for i in range(b):
            u = (targets[i] - anchors[i]) / (targets[i] - anchors[i]).norm()
            sup = anchors[i] + radius * u
            keep = [j for j in range(b) if j == i or ids[j] != ids[i]]
            logits = torch.stack([scale * sup @ targets[j] for j in keep])
            total += -(scale * sup @ targets[i] - torch.logsumexp(logits, 0))
        return total / b

    return side(t, a, r_text), side(a, t, r_audio)


@pytest.mark.parametrize("bi_reduce", ["sum", "mean"])
def test_svr_matches_explicit_loop_and_never_uses_same_clip_captions_as_negatives(bi_reduce):
    a, t = unit(6, 5, 4), unit(6, 5, 5)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    obj = build_objective("infonce+svr", {"radius": "static", "radius_bound": "hinge", "bi_reduce": bi_reduce,
                                          "alpha": 0.7, "beta": 0.0}).double()
    with torch.no_grad():
        obj.text_radius.value.fill_(0.3)
        obj.audio_radius.value.fill_(0.2)
    out = obj(a, t, ids)
    text_side, audio_side = svr_loop(a, t, ids.tolist(), 0.3, 0.2, obj.base.temperature().item())
    expected = text_side + audio_side if bi_reduce == "sum" else 0.5 * (text_side + audio_side)
    assert float(out.diagnostics["loss_svr"]) == pytest.approx(expected.item(), rel=1e-10)
    assert out.loss.item() == pytest.approx(float(out.diagnostics["loss_base"]) + 0.7 * expected.item(), rel=1e-10)


def test_sigmoid_radius_is_a_share_of_the_detached_distance():
    """R_i = σ(z_i)·‖a_i − t_i‖ for each side, the distance entering as a constant: the gradient
    w.r.t. the embeddings equals the one with R frozen at its value."""
    a, t = unit(6, 5, 8), unit(6, 5, 9)
    ids = torch.tensor([0, 1, 2, 2, 3, 4])
    obj = build_objective("infonce+svr", {"radius": "static", "beta": 1.0}).double()
    with torch.no_grad():
        obj.text_radius.value.fill_(0.4)
        obj.audio_radius.value.fill_(-1.3)
    aa, tt = a.clone().requires_grad_(True), t.clone().requires_grad_(True)
    out = obj(aa, tt, ids)
    out.loss.backward()
    dist = (a - t).norm(dim=1)
    r_text, r_audio = torch.sigmoid(torch.tensor(0.4, dtype=torch.float64)) * dist, torch.sigmoid(torch.tensor(-1.3, dtype=torch.float64)) * dist
    stats = radius_statistics(torch.stack([r_text, r_audio]), torch.stack([dist, dist]))
    assert float(out.drift()["radius_text_mean"]) == pytest.approx(float(r_text.mean()), rel=1e-12)
    assert float(out.drift()["radius_audio_std"]) == pytest.approx(float(stats["radius_audio_std"]), rel=1e-12)
    assert float(out.diagnostics["loss_constraint"]) == 0.0  # inactive under the bound, so β does nothing

    ra, rt = a.clone().requires_grad_(True), t.clone().requires_grad_(True)  # reference: R frozen
    reference = obj.base.similarity_loss(ra @ rt.T, ids).loss + (
        obj.base.anchor_loss(support_vectors(rt, ra, r_text), ra, ids) + obj.base.anchor_loss(support_vectors(ra, rt, r_audio), rt, ids))
    reference.backward()
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(aa.grad, ra.grad, atol=1e-12) and torch.allclose(tt.grad, rt.grad, atol=1e-12)


@pytest.mark.parametrize("name", ["infonce+svr", "siglip+svr"])
@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_sigmoid_radius_gradients_reach_z_and_match_finite_differences(name, kind):
    """gradcheck (float64) of the loss w.r.t. the radius parameters that produce z: the static
    values, or the predictor's last layer (whose output is z)."""
    a, t = unit(6, 5, 10), unit(6, 5, 11)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    obj = build_objective(name, {"radius": kind, "hidden": 8}, batch_size=6).double()
    if kind == "static":
        names = ["text_radius.value", "audio_radius.value"]
    else:
        names = ["text_radius.mlp.4.weight", "text_radius.mlp.4.bias", "audio_radius.mlp.4.weight", "audio_radius.mlp.4.bias"]
    params = dict(obj.named_parameters())
    g = torch.Generator().manual_seed(3)
    inputs = tuple((params[n].detach() + 0.5 * torch.randn(params[n].shape, generator=g, dtype=torch.float64)).requires_grad_(True)
                   for n in names)

    def loss(*values):
        return functional_call(obj, dict(zip(names, values)), (a, t, ids)).loss

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-8)
    grads = torch.autograd.grad(loss(*inputs), inputs)
    assert all(gr.abs().sum() > 0 for gr in grads)  # z is trained on both sides


def test_bounded_radius_never_exceeds_the_distance():
    dist = torch.tensor([0.0, 1e-8, 0.3, 1.9, 2.0])
    z = torch.tensor([-50.0, 0.0, 3.0, 50.0, 1e4])
    r = bounded_radius(z, dist, "sigmoid")
    assert (r >= 0).all() and (r <= dist).all()  # float32: σ(z) rounds to 1 at most, never above
    assert torch.equal(bounded_radius(z, dist, "hinge"), z)


def test_radius_statistics_match_explicit_values():
    radius = torch.tensor([[0.1, 0.6, 0.2], [0.5, 0.5, 0.0]])
    dist = torch.tensor([[0.5, 0.4, 0.2], [1.0, 0.25, 0.5]])
    stats = {k: float(v) for k, v in radius_statistics(radius, dist).items()}
    assert stats["svr_ratio_text"] == pytest.approx((0.2 + 1.5 + 1.0) / 3)
    assert stats["svr_over_share_text"] == pytest.approx(1 / 3)  # 0.6 > 0.4; 0.2 = 0.2 is not over
    assert stats["svr_damping_text"] == pytest.approx(1 - (0.2 + 1.5 + 1.0) / 3)
    assert stats["svr_ratio_audio"] == pytest.approx((0.5 + 2.0 + 0.0) / 3)
    assert stats["svr_over_share_audio"] == pytest.approx(1 / 3)
    assert stats["radius_audio_mean"] == pytest.approx(1 / 3)


def test_hinge_radius_can_leave_the_interval_and_the_constraint_moves_no_embedding():
    a, t = unit(6, 5, 12), unit(6, 5, 13)
    ids = torch.arange(6)
    obj = build_objective("infonce+svr", {"radius": "static", "radius_bound": "hinge", "init_radius": 3.0}).double()
    out = obj(a, t, ids)
    stats = out.drift()
    assert float(stats["svr_over_share_text"]) == 1.0 and float(stats["svr_damping_audio"]) < 0  # ‖a − t‖ ≤ 2 < 3
    assert float(out.diagnostics["loss_constraint"]) > 0
    aa = a.clone().requires_grad_(True)
    radius = torch.tensor([3.0, 0.1, -0.2, 0.0, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    cons = radius_constraint(radius, (aa - t).norm(dim=1))
    ga, gr = torch.autograd.grad(cons, [aa, radius], allow_unused=True)
    assert ga is None or ga.abs().max() == 0  # the distance is detached
    assert gr.abs().sum() > 0


def test_dynamic_radius_is_invariant_to_the_order_of_negatives():
    a, t = unit(8, 6, 6), unit(8, 6, 7)
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6])
    obj = build_objective("infonce+svr", {"radius": "dynamic"}, batch_size=8).double()
    with torch.no_grad():  # give the predictor non-trivial weights
        for p in obj.text_radius.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    features = similarity_features(t @ a.T, ids, 8)
    radius = obj.text_radius(features)
    perm = torch.tensor([5, 2, 7, 0, 3, 1, 6, 4])
    features_p = similarity_features(t[perm] @ a[perm].T, ids[perm], 8)
    assert torch.allclose(features_p, features[perm], atol=1e-12)
    assert torch.allclose(obj.text_radius(features_p), radius[perm], atol=1e-12)
    assert radius.std() > 0  # a real per-sample prediction, not a constant


def test_similarity_features_layout_and_short_batches():
    cos = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [0.4, 0.6, 0.7]])
    feats = similarity_features(cos, torch.tensor([0, 0, 1]), width=5)
    # row 0: positive 0.9; clip-0 caption 1 is not a negative (padded -1); then 0.5; padding to 5
    expected = torch.tensor([[0.9, 0.5, -1, -1, -1], [0.8, 0.3, -1, -1, -1], [0.7, 0.6, 0.4, -1, -1]])
    assert torch.allclose(feats, expected)
    obj = build_objective("siglip+svr", {"radius": "dynamic"}, batch_size=8)
    out = obj(F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1), torch.arange(5))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="wider"):
        similarity_features(torch.zeros(9, 9), torch.arange(9), width=8)


def test_options_are_validated():
    with pytest.raises(ValueError, match="sides"):
        build_objective("infonce+svr", {"sides": "tri", "radius": "static"})
    with pytest.raises(ValueError, match="batch_size"):
        build_objective("infonce+svr", {"radius": "dynamic"})
    with pytest.raises(ValueError, match="radius_bound"):
        build_objective("infonce+svr", {"radius": "static", "radius_bound": "clip"})
    with pytest.raises(ValueError, match="bi_reduce"):
        build_objective("infonce+svr", {"radius": "static", "bi_reduce": "max"})
    with pytest.raises(ValueError, match="init_ratio"):
        build_objective("infonce+svr", {"radius": "static", "init_ratio": 1.0})


def test_radius_state_is_saved_with_the_model_and_trained(tone_data, tmp_path):
    cfg = load_config(None, [*TINY, f"data.train={tone_data['train']}", f"data.val={tone_data['val']}",
                             "train.batch_size=16", "train.epochs=2", "objective.name=infonce+svr",
                             "objective.options.radius=dynamic"])
    train(cfg, tmp_path / "run")
    state = load_file(str(tmp_path / "run" / "model.safetensors"))
    radius_keys = [k for k in state if k.startswith("objective.text_radius.") or k.startswith("objective.audio_radius.")]
    assert len(radius_keys) == 12  # two 3-layer MLPs, weight + bias each
    assert not math.isclose(float(state["objective.text_radius.mlp.4.weight"].abs().sum()), 0.0)  # it learned


def test_default_svr_never_logs_a_radius_past_the_distance(tone_data, tmp_path):
    """Defaults (bi, dynamic, sigmoid bound): every drift step logs a share of R > ‖a − t‖ of exactly 0,
    with the ratio in (0, 1] and the damping factor its complement."""
    cfg = load_config(None, [*TINY, f"data.train={tone_data['train']}", "train.batch_size=16", "train.epochs=3",
                             "train.drift_every=1", "objective.name=infonce+svr"])
    train(cfg, tmp_path / "run")
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r["type"] == "step"]
    assert len(steps) >= 10 and all("drift_cos" in r for r in steps)
    for side in ("text", "audio"):
        assert all(r[f"svr_over_share_{side}"] == 0.0 for r in steps)
        assert all(0 < r[f"svr_ratio_{side}"] <= 1 for r in steps)  # σ(z) may round to 1 (full damping), never above
        assert all(r[f"svr_damping_{side}"] == pytest.approx(1 - r[f"svr_ratio_{side}"]) for r in steps)
    assert steps[-1]["svr_ratio_text"] != pytest.approx(steps[0]["svr_ratio_text"], abs=1e-4)  # the radius is trained
    assert all(r["loss_constraint"] == 0.0 for r in steps)
