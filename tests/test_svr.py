import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clarion.objectives import build_objective
from clarion.objectives.svr import radius_constraint, similarity_features, support_vectors


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
def test_zero_radius_svr_term_equals_base_loss(name, sides):
    a, t = unit(6, 8, 2), unit(6, 8, 3)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    obj = build_objective(name, {"radius": "static", "sides": sides, "init_radius": 0.0}).double()
    out = obj(a, t, ids)
    if sides == "bi" or name == "siglip+svr":  # uni InfoNCE keeps only the text-anchor half
        assert float(out.diagnostics["loss_svr"]) == pytest.approx(float(out.diagnostics["loss_base"]), rel=1e-12)
    else:
        text_half = obj.base.anchor_loss(t, a, ids).item()
        assert float(out.diagnostics["loss_svr"]) == pytest.approx(text_half, rel=1e-12)
    assert out.loss.item() == pytest.approx(float(out.diagnostics["loss_base"]) + float(out.diagnostics["loss_svr"]), rel=1e-12)


def test_constraint_is_zero_inside_the_interval_and_grows_outside():
    dist = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    radius = torch.tensor([0.0, 0.25, 0.5, 0.7, -0.2])
    per_item = [float(radius_constraint(radius[i : i + 1], dist[i : i + 1])) for i in range(5)]
    assert per_item == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.2])
    assert float(radius_constraint(torch.tensor([0.9]), torch.tensor([0.5]))) > per_item[3]


def svr_loop(a, t, ids, r_text, r_audio, scale):
    """Explicit reference of bi-SVR over InfoNCE: each side's CE with support-vector anchors,
    same-clip entries left out of the denominators."""
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

    return 0.5 * (side(t, a, r_text) + side(a, t, r_audio))


def test_svr_matches_explicit_loop_and_never_uses_same_clip_captions_as_negatives():
    a, t = unit(6, 5, 4), unit(6, 5, 5)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    obj = build_objective("infonce+svr", {"radius": "static"}).double()
    with torch.no_grad():
        obj.text_radius.value.fill_(0.3)
        obj.audio_radius.value.fill_(0.2)
    out = obj(a, t, ids)
    expected = svr_loop(a, t, ids.tolist(), 0.3, 0.2, obj.base.temperature().item())
    assert float(out.diagnostics["loss_svr"]) == pytest.approx(expected.item(), rel=1e-10)


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


def test_radius_state_is_saved_with_the_model_and_trained(tone_data, tmp_path):
    from clarion.config import load_config
    from clarion.train.loop import train

    from conftest import TINY

    cfg = load_config(None, [*TINY, f"data.train={tone_data['train']}", f"data.val={tone_data['val']}",
                             "train.batch_size=16", "train.epochs=2", "objective.name=infonce+svr",
                             "objective.options.radius=dynamic"])
    train(cfg, tmp_path / "run")
    state = load_file(str(tmp_path / "run" / "model.safetensors"))
    radius_keys = [k for k in state if k.startswith("objective.text_radius.") or k.startswith("objective.audio_radius.")]
    assert len(radius_keys) == 12  # two 3-layer MLPs, weight + bias each
    assert not math.isclose(float(state["objective.text_radius.mlp.4.weight"].abs().sum()), 0.0)  # it learned
