import math

import pytest
import torch
import torch.nn.functional as F

from clarion.objectives import available, build_objective


def random_batch(b=6, d=8, seed=0, ids=None):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    audio_ids = torch.tensor(ids if ids is not None else list(range(b)))
    return a, t, audio_ids


def infonce_loop(a, t, ids, scale):
    """Explicit per-anchor reference of docs/methods.md §1 (same-clip captions removed from denominators)."""
    b = len(ids)
    s = scale * a @ t.T
    total = 0.0
    for i in range(b):
        keep = [j for j in range(b) if j == i or ids[j] != ids[i]]
        row = torch.stack([s[i, j] for j in keep])
        col = torch.stack([s[j, i] for j in keep])
        total += -(s[i, i] - torch.logsumexp(row, 0)) - (s[i, i] - torch.logsumexp(col, 0))
    return total / (2 * b)


def test_registry_lists_baselines_and_rejects_unknown():
    assert {"infonce", "siglip"} <= set(available())
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope")
    with pytest.raises(ValueError, match="bad options"):
        build_objective("infonce", {"no_such_option": 1})


@pytest.mark.parametrize("ids", [None, [0, 1, 0, 2, 2, 3]])
def test_infonce_matches_explicit_loop(ids):
    a, t, audio_ids = random_batch(ids=ids)
    obj = build_objective("infonce").double()
    out = obj(a, t, audio_ids)
    expected = infonce_loop(a, t, audio_ids.tolist(), obj.temperature().item())
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_infonce_never_uses_same_clip_captions_as_negatives():
    """Raising S[0,1] and S[1,0] (captions 0 and 1 share a clip) must leave the loss unchanged,
    while raising a true negative's similarity S[0,2] must increase it."""
    from clarion.objectives.infonce import symmetric_cross_entropy

    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 6, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    base = symmetric_cross_entropy(s, ids, False).item()
    same_clip = s.clone()
    same_clip[0, 1] += 5.0
    same_clip[1, 0] += 5.0
    assert symmetric_cross_entropy(same_clip, ids, False).item() == pytest.approx(base, rel=1e-12)
    negative = s.clone()
    negative[0, 2] += 5.0
    assert symmetric_cross_entropy(negative, ids, False).item() > base + 0.1


def test_infonce_multi_positive_soft_targets():
    a, t, ids = random_batch(ids=[0, 0, 1, 1, 1, 2])
    obj = build_objective("infonce", {"multi_positive": True}).double()
    s = obj.temperature().item() * a @ t.T
    b = len(ids)
    expected = 0.0
    for i in range(b):
        pos = [j for j in range(b) if ids[j] == ids[i]]
        expected += -sum(torch.log_softmax(s[i], 0)[j] for j in pos) / len(pos)
        expected += -sum(torch.log_softmax(s[:, i], 0)[j] for j in pos) / len(pos)
    assert obj(a, t, ids).loss.item() == pytest.approx(expected.item() / (2 * b), rel=1e-9)


def test_infonce_temperature_init_and_clamp():
    obj = build_objective("infonce")
    assert obj.temperature().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        obj.temperature.logit_scale.fill_(10.0)
    assert obj.temperature().item() == pytest.approx(100.0, rel=1e-6)


def test_infonce_gradients_match_finite_differences():
    a, t, ids = random_batch(b=5, d=4, ids=[0, 1, 1, 2, 3])
    a.requires_grad_(True)
    t.requires_grad_(True)
    obj = build_objective("infonce").double()
    assert torch.autograd.gradcheck(lambda x, y: obj(x, y, ids).loss, (a, t))


def siglip_loop(a, t, ids, scale, bias):
    b = len(ids)
    total = 0.0
    for i in range(b):
        for j in range(b):
            z = 1.0 if ids[i] == ids[j] else -1.0
            logit = scale * float(a[i] @ t[j]) + bias
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    return total / b


@pytest.mark.parametrize("ids", [None, [0, 1, 0, 2, 2, 3]])
def test_siglip_matches_explicit_loop(ids):
    a, t, audio_ids = random_batch(ids=ids)
    obj = build_objective("siglip").double()
    assert obj.t_param.exp().item() == pytest.approx(10.0)
    assert obj.bias.item() == pytest.approx(-10.0)
    assert obj(a, t, audio_ids).loss.item() == pytest.approx(siglip_loop(a, t, audio_ids.tolist(), obj.t_param.exp().item(), obj.bias.item()), rel=1e-9)


def test_siglip_gradients_match_finite_differences():
    a, t, ids = random_batch(b=4, d=3, ids=[0, 0, 1, 2])
    a.requires_grad_(True)
    t.requires_grad_(True)
    obj = build_objective("siglip").double()
    assert torch.autograd.gradcheck(lambda x, y: obj(x, y, ids).loss, (a, t))


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_learnable_state_receives_gradient(name):
    a, t, ids = random_batch()
    obj = build_objective(name).double()
    obj(a, t, ids).loss.backward()
    grads = [p.grad for p in obj.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_diagnostics_as_floats_converts_tensors_and_keeps_floats():
    from clarion.objectives import diagnostics_as_floats

    out = diagnostics_as_floats({"a": 1, "b": torch.tensor(2.5, dtype=torch.float64), "c": torch.tensor([3.0])})
    assert out == {"a": 1.0, "b": 2.5, "c": 3.0}
    assert all(type(v) is float for v in out.values())
