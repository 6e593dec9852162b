"""Triplet loss and negative sampling (docs/methods.md §5) against an explicit per-anchor loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from clarion.objectives import build_objective
from clarion.objectives.registry import same_audio
from clarion.objectives.triplet import SAMPLINGS, cross_modal_negative_scores, select_negatives

DETERMINISTIC = [s for s in SAMPLINGS if s != "random"]
SINGLE = ["hard", "hardest", "semihard", "semihard_band", "easy_text", "hard_text", "easy_audio", "hard_audio"]


def loop_choice(sampling, a, t, ids, i, margin):
    """(audio negative j_a, text negative j_t) for anchor i by the definitions, one anchor at a time; None = none."""
    s = (a @ t.T).detach()
    a, t = a.detach(), t.detach()
    negs = [j for j in range(len(ids)) if ids[j] != ids[i]]
    if not negs:
        return None, None
    pos = float(s[i, i])
    side_a = {j: float(s[j, i]) for j in negs}  # audio negatives of caption i
    side_t = {j: float(s[i, j]) for j in negs}  # text negatives of audio i
    if sampling in ("hard", "hardest"):
        return max(side_a, key=side_a.get), max(side_t, key=side_t.get)
    if sampling == "semihard":
        return min(side_a, key=lambda j: abs(side_a[j] - pos)), min(side_t, key=lambda j: abs(side_t[j] - pos))
    if sampling == "semihard_band":
        picks = []
        for side in (side_a, side_t):
            band = [j for j in negs if pos - margin < side[j] < pos]
            picks.append(max(band, key=side.get) if band else None)
        return tuple(picks)
    x = t if sampling.endswith("text") else a
    within = {j: float(x[i] @ x[j]) for j in negs}
    pick = min(within, key=within.get) if sampling.startswith("easy") else max(within, key=within.get)
    return pick, pick


def loop_loss(sampling, a, t, ids, margin, choices=None):
    """The triplet loss by an explicit loop over anchors (differentiable; ``choices`` fixes random picks)."""
    s = a @ t.T
    total = []
    for i in range(len(ids)):
        negs = [j for j in range(len(ids)) if ids[j] != ids[i]]
        if not negs:
            total.append(s.new_zeros(()))
            continue
        hinge_a = [torch.clamp(margin - s[i, i] + s[j, i], min=0) for j in negs]
        hinge_t = [torch.clamp(margin - s[i, i] + s[i, j], min=0) for j in negs]
        if sampling == "sum":
            total.append(torch.stack(hinge_a).sum() + torch.stack(hinge_t).sum())
            continue
        if sampling == "full":
            total.append(torch.stack(hinge_a).mean() + torch.stack(hinge_t).mean())
            continue
        j_a, j_t = choices[i] if choices is not None else loop_choice(sampling, a, t, ids, i, margin)
        term = s.new_zeros(())
        if j_a is not None:
            term = term + torch.clamp(margin - s[i, i] + s[j_a, i], min=0)
        if j_t is not None:
            term = term + torch.clamp(margin - s[i, i] + s[i, j_t], min=0)
        total.append(term)
    stacked = torch.stack(total)
    return stacked.sum() if sampling in ("hardest", "sum") else stacked.mean()


def embeddings(b=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(0.6 * a + 0.8 * F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1), dim=-1)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 4][:b])  # pairs 1/2 and 4/5 are captions of one clip
    return a, t, ids


def chosen(sampling, a, t, ids, margin):
    s = a @ t.T
    index, found = select_negatives(
        sampling, cross_modal_negative_scores(s), s.diagonal(), ~same_audio(ids), margin, a, t
    )
    return [
        tuple(int(index[k, i]) if bool(found[k, i]) else None for k in range(2)) for i in range(len(ids))
    ]


def angles(degrees):
    r = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([r.cos(), r.sin()], -1)


def test_hand_built_example_picks_the_defined_negatives():
    # audios at 0°, 60°, 150°, 250°; captions at 10°, 80°, 130°, 310°; S_ij = cos(θa_i − θt_j).
    # Caption 0 (10°): audio negatives score cos50 = .64, cos140 = −.77, cos240 = −.5 → hard audio 1.
    # Audio 0 (0°): text negatives score cos80 = .17, cos130 = −.64, cos310 = .64 → hard text 3.
    # Text-text from caption 0: .34, −.5, .5 → hard_text 3, easy_text 2.
    # Audio-audio from audio 0: .5, −.87, −.34 → hard_audio 1, easy_audio 2.
    # S_00 = cos10 = .985: band (.785, .985) is empty for m = .2; for m = .4, (.585, .985) holds audio 1, text 3.
    a, t, ids = angles([0, 60, 150, 250]), angles([10, 80, 130, 310]), torch.arange(4)
    expected = {
        ("hard", 0.2): (1, 3), ("semihard", 0.2): (1, 3), ("hard_text", 0.2): (3, 3), ("easy_text", 0.2): (2, 2),
        ("hard_audio", 0.2): (1, 1), ("easy_audio", 0.2): (2, 2), ("semihard_band", 0.2): (None, None),
        ("semihard_band", 0.4): (1, 3),
    }
    for (sampling, margin), pick in expected.items():
        assert chosen(sampling, a, t, ids, margin)[0] == pick, sampling


@pytest.mark.parametrize("sampling", SINGLE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_matches_the_loop(sampling, seed):
    a, t, ids = embeddings(seed=seed)
    margin = 0.5  # wide enough that the band strategy finds negatives for some anchors
    assert chosen(sampling, a, t, ids, margin) == [loop_choice(sampling, a, t, ids, i, margin) for i in range(len(ids))]


@pytest.mark.parametrize("sampling", DETERMINISTIC)
@pytest.mark.parametrize("margin", [0.2, 0.5, 1.5])
def test_loss_and_gradient_match_the_loop(sampling, margin):
    a, t, ids = embeddings(seed=3)
    a.requires_grad_(True)
    t.requires_grad_(True)
    objective = build_objective("triplet", {"sampling": sampling, "margin": margin})
    loss = objective(a, t, ids).loss
    reference = loop_loss(sampling, a, t, ids, margin)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)
    grads = torch.autograd.grad(loss, (a, t))
    ref_grads = torch.autograd.grad(reference, (a, t))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_same_clip_captions_are_never_negatives():
    a, t, ids = embeddings(seed=4)
    for sampling in SINGLE:
        for i, (j_a, j_t) in enumerate(chosen(sampling, a, t, ids, 2.0)):
            for j in (j_a, j_t):
                assert j is None or int(ids[j]) != int(ids[i]), (sampling, i, j)


def test_random_is_seeded_uniform_over_candidates_and_matches_the_loop():
    a, t, ids = embeddings(seed=5)
    s = a @ t.T
    candidate = ~same_audio(ids)
    counts = torch.zeros(2, len(ids), len(ids))
    for draw in range(3000):
        g = torch.Generator().manual_seed(draw)
        index, found = select_negatives("random", cross_modal_negative_scores(s), s.diagonal(), candidate, 0.2, a, t, g)
        assert bool(found.all())
        counts[0, torch.arange(len(ids)), index[0]] += 1
        counts[1, torch.arange(len(ids)), index[1]] += 1
    assert bool((counts[:, ~candidate] == 0).all())  # only candidates
    share = counts / counts.sum(-1, keepdim=True)
    expected = candidate / candidate.sum(-1, keepdim=True)
    assert (share - expected).abs().max() < 0.04  # uniform over each anchor's candidates
    assert not torch.equal(counts[0], counts[1])  # the two sides draw independently

    objective = build_objective("triplet", {"sampling": "random", "margin": 0.4}, seed=11)
    twin = build_objective("triplet", {"sampling": "random", "margin": 0.4}, seed=11)
    other = build_objective("triplet", {"sampling": "random", "margin": 0.4}, seed=12)
    losses = [objective(a, t, ids).loss.item() for _ in range(4)]
    assert losses == [twin(a, t, ids).loss.item() for _ in range(4)]
    assert losses != [other(a, t, ids).loss.item() for _ in range(4)]
    assert len(set(losses)) > 1  # each call draws anew

    # the loss equals the loop with the picks the objective's generator makes
    fresh = build_objective("triplet", {"sampling": "random", "margin": 0.4}, seed=11)
    g = torch.Generator().manual_seed(11 * 1_000_003)
    index, _ = select_negatives("random", cross_modal_negative_scores(s), s.diagonal(), candidate, 0.4, a, t, g)
    choices = [(int(index[0, i]), int(index[1, i])) for i in range(len(ids))]
    assert fresh(a, t, ids).loss.item() == pytest.approx(loop_loss("random", a, t, ids, 0.4, choices).item(), rel=1e-12)


def test_random_draws_resume_from_the_saved_counter():
    a, t, ids = embeddings(seed=6)
    run = build_objective("triplet", {"sampling": "random"}, seed=3)
    for _ in range(5):
        run(a, t, ids)
    state = run.state_dict()
    assert int(state["draws"]) == 5
    resumed = build_objective("triplet", {"sampling": "random"}, seed=3)
    resumed.load_state_dict(state)
    assert resumed(a, t, ids).loss.item() == run(a, t, ids).loss.item()


def test_hardest_is_hard_with_sum_reduction_and_sum_is_full_times_candidates():
    a, t, _ = embeddings(seed=7)
    b = len(a)
    ids = torch.arange(b)  # every anchor has b − 1 candidates
    value = {s: build_objective("triplet", {"sampling": s, "margin": 0.6})(a, t, ids).loss.item() for s in DETERMINISTIC}
    assert value["hardest"] == pytest.approx(b * value["hard"], rel=1e-12)
    assert value["sum"] == pytest.approx(b * (b - 1) * value["full"], rel=1e-12)
    # hard negatives violate at least as much as any other single pick
    for s in ("semihard", "easy_text", "hard_text", "easy_audio", "hard_audio", "semihard_band"):
        assert value["hard"] >= value[s] - 1e-12


def test_batch_of_one_clip_has_zero_loss_and_no_nan():
    a, t, _ = embeddings(b=4, seed=8)
    ids = torch.zeros(4, dtype=torch.int64)
    for sampling in SAMPLINGS:
        out = build_objective("triplet", {"sampling": sampling})(a, t, ids)
        assert out.loss.item() == 0.0
        assert all(math.isfinite(float(v)) for v in out.diagnostics.values())


def test_collapsed_embeddings_pin_the_loss_at_two_margins():
    b, d = 6, 4
    a = F.normalize(torch.ones(b, d, dtype=torch.float64), dim=-1)
    out = build_objective("triplet", {"sampling": "hard", "margin": 0.2})(a, a.clone(), torch.arange(b))
    assert out.loss.item() == pytest.approx(0.4)
    assert float(out.diagnostics["triplet_loss_per_anchor"]) == pytest.approx(1.0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown sampling"):
        build_objective("triplet", {"sampling": "hardish"})
    with pytest.raises(ValueError, match="margin"):
        build_objective("triplet", {"margin": 0})


def test_cli_trains_triplet_end_to_end_with_bare_options(tone_data, tmp_path):
    from safetensors.torch import load_file

    from clarion.cli import main
    from conftest import TINY

    run = tmp_path / "run"
    # overrides before and after options, as a script that appends "$@" would pass them
    args = ["train", "--train", str(tone_data["train"]), *TINY, "train.collapse_every=1", "--objective", "triplet",
            "--out", str(run), "--epochs", "2", "--batch-size", "16", "-q", "sampling=random", "margin=0.3"]
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert steps and all(math.isfinite(r["loss"]) and "collapse_text_rank" in r and "triplet_active_share" in r for r in steps)
    weights = load_file(str(run / "model.safetensors"))
    assert int(weights["objective.draws"]) == len(steps)  # one seeded draw per step, saved for resume
