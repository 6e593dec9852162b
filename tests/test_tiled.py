"""Tiled losses (clarion.objectives.tiled) against explicit loops, finite differences and the untiled objectives."""

import math

import pytest
import torch
import torch.nn.functional as F

from clarion.objectives import build_objective
from clarion.objectives.tiled import tiled_sigmoid_pairs, tiled_softmax_cross_entropy, tiled_symmetric_cross_entropy

from objective_cases import BLOCKWISE_OBJECTIVES, loss_and_grads


def unit(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def loop_cross_entropy(x, y, scale, anchor_ids, other_ids, positive, multi_positive):
    """−log softmax by an explicit loop over anchors and columns (the definition, no matrix ops)."""
    total = 0.0
    for i in range(len(x)):
        logits = [scale * float(x[i] @ y[j]) for j in range(len(y))]
        clip = [j for j in range(len(y)) if other_ids[j] == anchor_ids[i]]
        if multi_positive:
            denominator = sum(math.exp(v) for v in logits)
            total -= sum(logits[j] for j in clip) / len(clip) - math.log(denominator)
        else:
            kept = [j for j in range(len(y)) if j not in clip or j == positive[i]]
            total -= logits[positive[i]] - math.log(sum(math.exp(logits[j]) for j in kept))
    return total / len(x)


def loop_sigmoid(x, y, scale, bias, anchor_ids, other_ids):
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if anchor_ids[i] == other_ids[j] else -1.0
            total -= math.log(1.0 / (1.0 + math.exp(-z * (scale * float(x[i] @ y[j]) + bias))))
    return total / len(x)


CASES = [  # (b, N, tile, clip ids of the N columns)
    (12, 12, 5, list(range(12))),
    (12, 12, 4, [0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7]),
    (7, 19, 6, [0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12, 12]),
]


@pytest.mark.parametrize("b, n, tile, ids", CASES)
@pytest.mark.parametrize("multi_positive", [False, True])
def test_softmax_cross_entropy_equals_the_loop(b, n, tile, ids, multi_positive):
    other_ids = torch.tensor(ids)
    positive = torch.arange(3, 3 + b) % n
    x, y = unit(b, 16, 0), unit(n, 16, 1)
    loss = tiled_softmax_cross_entropy(x, y, torch.tensor(14.0), other_ids[positive], other_ids, positive, multi_positive, tile)
    expected = loop_cross_entropy(x, y, 14.0, other_ids[positive].tolist(), ids, positive.tolist(), multi_positive)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("b, n, tile, ids", CASES)
def test_sigmoid_pairs_equal_the_loop(b, n, tile, ids):
    other_ids = torch.tensor(ids)
    anchor_ids = other_ids[torch.arange(b) * 2 % n]
    x, y = unit(b, 16, 2), unit(n, 16, 3)
    loss = tiled_sigmoid_pairs(x, y, torch.tensor(8.0), torch.tensor(-3.0), anchor_ids, other_ids, tile)
    assert float(loss) == pytest.approx(loop_sigmoid(x, y, 8.0, -3.0, anchor_ids.tolist(), ids), rel=1e-5)


@pytest.mark.parametrize("multi_positive", [False, True])
def test_softmax_cross_entropy_gradients_match_finite_differences(multi_positive):
    ids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 5])
    positive = torch.tensor([1, 2, 4, 6, 8])
    x = unit(5, 6, 4, torch.float64).requires_grad_()
    y = unit(9, 6, 5, torch.float64).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, s: tiled_softmax_cross_entropy(x, y, s, ids[positive], ids, positive, multi_positive, 4), (x, y, scale)
    )


def test_sigmoid_pairs_gradients_match_finite_differences():
    ids = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    x = unit(5, 6, 6, torch.float64).requires_grad_()
    y = unit(7, 6, 7, torch.float64).requires_grad_()
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, s, c: tiled_sigmoid_pairs(x, y, s, c, ids[:5], ids, 3), (x, y, scale, bias)
    )


@pytest.mark.parametrize("name, options", BLOCKWISE_OBJECTIVES)
def test_tiled_objective_equals_untiled(name, options):
    """Loss and gradients (embeddings and learnable state) of ``tile=T`` equal the dense objective's to 1e-5."""
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15, 16, 17])
    a, t = unit(len(ids), 32, 8), unit(len(ids), 32, 9)
    dense = build_objective(name, options)
    tiled = build_objective(name, {**options, "tile": 7})
    tiled.load_state_dict(dense.state_dict())
    loss, grads = loss_and_grads(dense, a, t, ids)
    tiled_loss, tiled_grads = loss_and_grads(tiled, a, t, ids)
    assert float(tiled_loss) == pytest.approx(float(loss), rel=1e-5)
    for g, h in zip(grads, tiled_grads):
        torch.testing.assert_close(h, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_tiled_local_loss_equals_untiled(name):
    """The distributed per-rank loss (a block of anchor rows against the whole batch) tiles too."""
    ids = torch.tensor([0, 1, 1, 2, 3, 4, 5, 5, 6, 7])
    a, t = unit(10, 16, 10), unit(10, 16, 11)
    rows = slice(4, 9)
    dense, tiled = build_objective(name), build_objective(name, {"tile": 3})
    expected = dense.local_loss(a, t, ids, rows).loss.detach()
    assert float(tiled.local_loss(a, t, ids, rows).loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_dynamic_radius_refuses_tiling():
    with pytest.raises(ValueError, match="radius=static"):
        build_objective("infonce+svr", {"tile": 64}, batch_size=64)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()``."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_tiled_graph_keeps_no_batch_squared_tensor(name):
    b, d = 512, 8
    ids = torch.arange(b)
    a, t = unit(b, d, 12).requires_grad_(), unit(b, d, 13).requires_grad_()
    dense = saved_bytes(lambda: build_objective(name)(a, t, ids).loss)
    tiled = saved_bytes(lambda: build_objective(name, {"tile": 64})(a, t, ids).loss)
    assert dense >= b * b * 4
    assert tiled < 16 * b * d * 4


def test_bad_shapes_and_tile_are_refused():
    x, ids = unit(4, 8, 0), torch.arange(4)
    with pytest.raises(ValueError, match="x \\[b, d\\]"):
        tiled_softmax_cross_entropy(x, unit(4, 6, 1), torch.tensor(1.0), ids, ids, ids)
    with pytest.raises(ValueError, match="tile"):
        tiled_sigmoid_pairs(x, x, torch.tensor(1.0), torch.tensor(0.0), ids, ids, tile=0)


@pytest.mark.parametrize("ids", [list(range(11)), [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6]])
@pytest.mark.parametrize("multi_positive", [False, True])
def test_fused_symmetric_equals_the_two_directions(ids, multi_positive):
    """The one-pass symmetric loss equals the mean of the two one-sided losses, with gradients to finite differences."""
    ids = torch.tensor(ids)
    a = unit(11, 6, 14, torch.float64).requires_grad_()
    t = unit(11, 6, 15, torch.float64).requires_grad_()
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    fused = tiled_symmetric_cross_entropy(a, t, scale, ids, multi_positive, 4)
    both = sum(tiled_softmax_cross_entropy(x, y, scale, ids, ids, torch.arange(11), multi_positive, 4) for x, y in ((a, t), (t, a))) / 2
    assert float(fused.detach()) == pytest.approx(float(both.detach()), rel=1e-10)
    assert torch.autograd.gradcheck(lambda a, t, s: tiled_symmetric_cross_entropy(a, t, s, ids, multi_positive, 4), (a, t, scale))
