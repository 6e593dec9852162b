import numpy as np
import pytest
import torch

from clarion.evaluate.retrieval import mean_r1, retrieval_metrics


def test_one_caption_per_clip_hand_computed():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.2, 0.3], [0.1, 0.7, 0.6]])
    m = retrieval_metrics(sim, torch.tensor([0, 1, 2]))
    # T2A ranks 1, 3, 2; A2T best ranks 1, 2, 1
    assert m["t2a"] == pytest.approx(
        {"R@1": 1 / 3, "R@5": 1.0, "R@10": 1.0, "mAP@10": (1 + 1 / 3 + 1 / 2) / 3, "medR": 2.0, "meanR": 2.0}
    )
    assert m["a2t"] == pytest.approx(
        {"R@1": 2 / 3, "R@5": 1.0, "R@10": 1.0, "mAP@10": (1 + 0.5 + 1) / 3, "medR": 1.0, "meanR": 4 / 3}
    )
    assert mean_r1(m) == pytest.approx(0.5)


def test_five_captions_per_clip_hand_computed():
    col0 = [0.9, 0.5, 0.4, 0.2, 0.1, 0.95, 0.6, 0.3, 0.0, -0.1]
    col1 = [0.0, 0.0, 0.0, 0.0, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4]
    sim = torch.tensor([col0, col1]).T
    caption_clip = torch.tensor([0] * 5 + [1] * 5)
    m = retrieval_metrics(sim, caption_clip)
    # clip 0: relevant captions at ranks 2, 4, 5, 7, 8; clip 1: at ranks 2, 3, 4, 5, 6
    ap0 = (1 / 2 + 2 / 4 + 3 / 5 + 4 / 7 + 5 / 8) / 5
    ap1 = (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 6) / 5
    assert m["a2t"] == pytest.approx(
        {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": (ap0 + ap1) / 2, "medR": 2.0, "meanR": 2.0}
    )
    t2a_ranks = np.array([1, 1, 1, 1, 2, 2, 2, 2, 1, 1])
    assert m["t2a"]["R@1"] == pytest.approx(0.6)
    assert m["t2a"]["mAP@10"] == pytest.approx(np.mean(1 / t2a_ranks))
    assert m["t2a"]["medR"] == 1.0 and m["t2a"]["meanR"] == pytest.approx(1.4)


def test_map10_ignores_relevant_items_beyond_rank_10():
    n_clips = 12
    sim = torch.zeros(n_clips, n_clips)
    sim[0, 1:] = torch.linspace(1.0, 0.5, n_clips - 1)  # caption 0's clip (0) is ranked last: rank 12
    sim[0, 0] = 0.1
    sim[1:, :] = torch.eye(n_clips)[1:]
    m = retrieval_metrics(sim, torch.arange(n_clips))
    t2a_ranks = np.array([12] + [1] * (n_clips - 1))
    assert m["t2a"]["mAP@10"] == pytest.approx(np.mean(np.where(t2a_ranks <= 10, 1 / t2a_ranks, 0)))
    assert m["t2a"]["R@10"] == pytest.approx(11 / 12)
    assert m["t2a"]["meanR"] == pytest.approx(np.mean(t2a_ranks))


def test_ties_are_broken_against_the_relevant_item():
    """A collapsed model (all scores equal) must get the worst ranks, not R@1 = 1."""
    caption_clip = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    m = retrieval_metrics(torch.zeros(15, 3), caption_clip)
    assert m["t2a"]["R@1"] == 0.0 and m["t2a"]["medR"] == 3.0
    # each clip: 10 irrelevant captions tie with its 5 relevant ones: best relevant rank = 11
    assert m["a2t"]["R@10"] == 0.0 and m["a2t"]["medR"] == 11.0
    assert m["a2t"]["mAP@10"] == 0.0


def explicit_ranks(scores, relevant):
    """Reference by sorting: descending score, irrelevant first among equal scores."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], relevant[j]))
    return [pos + 1 for pos, j in enumerate(order) if relevant[j]]


@pytest.mark.parametrize("seed", range(5))
def test_matches_explicit_sorting_reference_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n_clips = 7
    caption_clip = np.concatenate([np.arange(n_clips), rng.integers(0, n_clips, 13)])
    sim = rng.integers(0, 4, size=(len(caption_clip), n_clips)).astype(float)  # small ints: many ties
    m = retrieval_metrics(torch.tensor(sim), torch.tensor(caption_clip))

    t2a = [explicit_ranks(sim[q], [c == caption_clip[q] for c in range(n_clips)])[0] for q in range(len(sim))]
    aps, best = [], []
    for c in range(n_clips):
        relevant = [int(k) == c for k in caption_clip]
        ranks = explicit_ranks(sim[:, c], relevant)
        best.append(ranks[0])
        aps.append(sum((m_ + 1) / r for m_, r in enumerate(ranks) if r <= 10) / len(ranks))
    t2a, best = np.array(t2a), np.array(best)
    for k in (1, 5, 10):
        assert m["t2a"][f"R@{k}"] == pytest.approx(np.mean(t2a <= k))
        assert m["a2t"][f"R@{k}"] == pytest.approx(np.mean(best <= k))
    assert m["t2a"]["mAP@10"] == pytest.approx(np.mean(np.where(t2a <= 10, 1 / t2a, 0)))
    assert m["a2t"]["mAP@10"] == pytest.approx(np.mean(aps))
    assert m["t2a"]["medR"] == pytest.approx(np.median(t2a)) and m["a2t"]["medR"] == pytest.approx(np.median(best))
    assert m["t2a"]["meanR"] == pytest.approx(t2a.mean()) and m["a2t"]["meanR"] == pytest.approx(best.mean())


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="n_captions"):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
