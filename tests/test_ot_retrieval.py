import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from clarion.evaluate.ot_retrieval import euclidean_cost, ot_scores
from clarion.evaluate.retrieval import retrieval_metrics


def test_ot_scores_are_the_sinkhorn_plan_with_uniform_marginals_over_the_whole_set():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(15, 8, generator=g, dtype=torch.float64), dim=1)
    audio = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    plan, info = ot_scores(text, audio, eps=0.05, max_iter=5000, tol=1e-10)
    cost = (torch.cdist(text, audio) / torch.cdist(text, audio).max()).numpy()
    expected = ot.sinkhorn(np.full(15, 1 / 15), np.full(5, 1 / 5), cost, 0.05, method="sinkhorn_log",
                           stopThr=1e-13, numItermax=100000)
    assert np.allclose(plan.numpy(), expected, atol=1e-8)
    assert info["marginal_error"] < 1e-8 and info["eps"] == 0.05


def test_ot_ranking_defeats_a_hub_that_cosine_ranks_first_for_every_caption():
    hub = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    audio = torch.stack([hub, eye[0], eye[1], eye[2]])
    text = F.normalize(torch.stack([hub + 0.05 * eye[0], 0.5 * eye[0] + hub, 0.5 * eye[1] + hub, 0.5 * eye[2] + hub]), dim=1)
    caption_clip = torch.arange(4)
    cosine = retrieval_metrics(text @ audio.T, caption_clip)
    plan, _ = ot_scores(text, audio, euclidean_cost, eps=0.03)
    transport = retrieval_metrics(plan, caption_clip)
    assert cosine["t2a"]["R@1"] == pytest.approx(0.25)  # every caption's nearest clip is the hub
    assert transport["t2a"]["R@1"] == 1.0 and transport["a2t"]["R@1"] == 1.0
