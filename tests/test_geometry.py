import pytest
import torch
import torch.nn.functional as F

from clarion.evaluate.geometry import drift_diagnostics
from clarion.objectives import build_objective


def pair(seed, b=6, d=5):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    return a, t


def test_pure_pull_has_no_drift():
    a, t = pair(0)
    loss = ((a - t) ** 2).sum()  # −∂L/∂t = 2(a − t): exactly along û
    d = drift_diagnostics(loss, a, t)
    assert d["drift_cos"] == pytest.approx(1.0) and d["drift_perp_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert d["pos_cos_mean"] == pytest.approx(float((a * t.detach()).sum(1).mean()))


def test_sideways_push_is_all_perpendicular_drift():
    a, t = pair(1)
    u = F.normalize(a - t, dim=1).detach()
    w = torch.randn_like(u)
    side = (w - (w * u).sum(1, keepdim=True) * u).detach()  # ⊥ û
    pull = 0.5 * u
    loss = -((side + pull) * t).sum()  # −∂L/∂t_i = side_i + pull_i
    d = drift_diagnostics(loss, a, t)
    expected_ratio = (side.norm(dim=1) / 0.5).mean()
    expected_cos = F.cosine_similarity(side + pull, u, dim=1).mean()
    assert d["drift_perp_ratio"] == pytest.approx(float(expected_ratio))
    assert d["drift_cos"] == pytest.approx(float(expected_cos))


def test_infonce_drift_matches_the_analytic_gradient():
    a, t = pair(2)
    obj = build_objective("infonce").double()
    scale = obj.temperature().item()
    d = drift_diagnostics(obj(a, t, torch.arange(6)).loss, a, t)
    with torch.no_grad():
        s = scale * a @ t.T
        p_audio = s.softmax(1)  # audio anchor j over texts i
        p_text = s.T.softmax(1)  # text anchor i over audios j
        eye = torch.eye(6, dtype=torch.float64)
        grad = scale / 12 * ((p_audio - eye).T @ a + (p_text - eye) @ a)  # ∂L/∂t
        g, u = -grad, F.normalize(a - t, dim=1)
        assert d["drift_cos"] == pytest.approx(float(F.cosine_similarity(g, u, dim=1).mean()), rel=1e-9)
