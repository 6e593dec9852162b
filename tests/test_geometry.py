import math

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


def test_modality_gap_alignment_uniformity_hand_computed():
    from clarion.evaluate.geometry import alignment, embedding_geometry, modality_gap, uniformity

    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # means (.5, .5) and (−.5, .5): gap 1
    assert modality_gap(audio, text) == pytest.approx(1.0)
    # ‖(1,−1)‖² = 2 and ‖(1,1)‖² = 2
    assert alignment(audio, text) == pytest.approx(2.0)
    # two orthogonal unit vectors: ‖x−y‖² = 2 → log e^{−4} = −4; antipodal: −8; repeated: 0
    assert uniformity(audio) == pytest.approx(-4.0)
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    assert uniformity(torch.tensor([[0.6, 0.8]] * 3)) == pytest.approx(0.0, abs=1e-12)
    # three points: pairs with ‖·‖² 2, 2, 4 → log((2e^{−4} + e^{−8}) / 3)
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert uniformity(three) == pytest.approx(math.log((2 * math.exp(-4) + math.exp(-8)) / 3))
    geometry = embedding_geometry(audio, torch.cat([text, text[:1]]), torch.tensor([0, 1, 1]))
    assert geometry["alignment"] == pytest.approx((2 + 2 + 0) / 3)


def test_uniformity_chunks_match_an_explicit_pair_loop():
    from clarion.evaluate.geometry import uniformity

    x = F.normalize(torch.randn(37, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=-1)
    pairs = [math.exp(-2 * float((x[i] - x[j]).pow(2).sum())) for i in range(37) for j in range(37) if i != j]
    assert uniformity(x, chunk=5) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-10)


def test_language_subsets_reindex_clips_and_average():
    from clarion.evaluate.embed import EmbeddedSet, mean_over_languages, score_retrieval

    audio = torch.eye(3)
    # clip 0: en + de caption, clip 1: en, clip 2: de
    text = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0.6, 0.8]])
    data = EmbeddedSet(audio, text, torch.tensor([0, 1, 0, 2]), ["en", "en", "de", "de"], 0)
    de = data.language("de")
    assert de.caption_clip.tolist() == [0, 1] and torch.equal(de.audio, audio[[0, 2]])
    per = {lang: score_retrieval(data.language(lang)) for lang in ("en", "de")}
    assert per["en"]["t2a"]["R@1"] == 1.0 and per["de"]["t2a"]["R@1"] == 1.0
    mean = mean_over_languages({"en": {"t2a": {"R@1": 1.0}, "a2t": {"R@1": 0.5}}, "de": {"t2a": {"R@1": 0.5}, "a2t": {"R@1": 0.0}}})
    assert mean == {"t2a": {"R@1": 0.75}, "a2t": {"R@1": 0.25}}
