"""Fused Triton losses (clarion.objectives.fused) against the dense objectives, the tiled path and autograd.

The kernels run natively on CUDA, or on CPU tensors under Triton's interpreter when Triton is
installed and ``TRITON_INTERPRET=1`` was set before clarion was imported (``make test-kernels``
does that); otherwise the kernel tests skip with the reason, and only the fallback tests run.
References are computed densely in float64 from the same inputs (bf16 inputs upcast exactly),
with explicit masks and autograd, so they share no code with the kernels.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from clarion.objectives import build_objective, fused
from clarion.objectives.fused import (
    Blocks, fused_sigmoid_pairs, fused_softmax_cross_entropy, fused_symmetric_cross_entropy, unavailable_reason,
)
from clarion.objectives.tiled import tiled_sigmoid_pairs, tiled_symmetric_cross_entropy

from objective_cases import BLOCKWISE_OBJECTIVES, loss_and_grads

CUDA = torch.cuda.is_available() and not fused.INTERPRET
DEVICE = torch.device("cuda" if CUDA else "cpu")
KERNEL_SKIP = unavailable_reason(torch.empty(0, device=DEVICE))
needs_kernels = pytest.mark.skipif(
    KERNEL_SKIP is not None, reason=f"fused kernels cannot run here: {KERNEL_SKIP} (see `make test-kernels`)"
)
pytestmark = pytest.mark.cuda  # run natively by benchmarks/gpu_suite.sh
SMALL = Blocks(m=16, n=16, k=16, grad_m=16, grad_n=16, warps=4, stages=1)  # B = 23, 37: partial blocks
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IDS = {  # clip ids of the batch's pairs
    "unique": list(range(37)),
    "duplicates": [0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15, 16, 17],
}


def unit(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(dtype).to(DEVICE)


def close(got: torch.Tensor, want: torch.Tensor, dtype: str) -> None:
    """fp32: elementwise to 1e-5 (rel) / 1e-6 (abs); bf16 / fp16: ‖got − want‖ / ‖want‖ ≤ 1e-2 (the
    gradients are returned in the inputs' dtype and ``W`` is rounded to it before its product)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert torch.isfinite(got).all()
    if dtype == "fp32":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert float((got - want).norm() / want.norm().clamp_min(1e-12)) <= 1e-2


def excluded_mask(anchor_ids, other_ids, offset):
    """[b, N] True where column j is another caption of anchor i's clip (positive: column i + offset)."""
    b, n = len(anchor_ids), len(other_ids)
    positive = torch.arange(b)[:, None] + offset == torch.arange(n)[None, :]
    return (anchor_ids[:, None].cpu() == other_ids[None, :].cpu()) & ~positive


def dense_one_sided(x, y, scale, anchor_ids, other_ids, offset, multi_positive):
    """−(1/b) Σ_i [Σ_j T_ij L_ij − LSE_{j∉M_i} L_ij] with the [b, N] logits made whole, in float64."""
    logits = scale * (x @ y.T)
    same = (anchor_ids[:, None] == other_ids[None, :]).cpu()
    if multi_positive:
        targets = same.double() / same.sum(1, keepdim=True)
        return -(targets * logits.log_softmax(1)).sum(1).mean()
    logits = logits.masked_fill(excluded_mask(anchor_ids, other_ids, offset), float("-inf"))
    return -logits.log_softmax(1)[torch.arange(len(x)), torch.arange(len(x)) + offset].mean()


def dense_sigmoid(x, y, scale, bias, anchor_ids, other_ids):
    z = (anchor_ids[:, None] == other_ids[None, :]).cpu().double() * 2 - 1
    return -F.logsigmoid(z * (scale * (x @ y.T) + bias)).sum() / len(x)


def grads_of(fn, *inputs):
    """The value of ``fn(*inputs)`` and its gradients w.r.t. every input (fresh leaves)."""
    leaves = [v.detach().clone().requires_grad_() for v in inputs]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def as_reference(*tensors):
    """float64 CPU copies: the inputs the dense references see (bf16 and fp16 upcast exactly)."""
    return [t.detach().double().cpu() for t in tensors]


# ------------------------------------------------------------------------------------------- kernels


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("ids", sorted(IDS))
@pytest.mark.parametrize("multi_positive", [False, True])
def test_symmetric_infonce_matches_dense_and_tiled(dtype, ids, multi_positive):
    ids = torch.tensor(IDS[ids], device=DEVICE)
    a, t = unit(len(ids), 24, 1, DTYPES[dtype]), unit(len(ids), 24, 2, DTYPES[dtype])
    scale = torch.tensor(17.0, device=DEVICE)
    loss, grads = grads_of(lambda a, t, s: fused_symmetric_cross_entropy(a, t, s, ids, multi_positive, blocks=SMALL), a, t, scale)
    ra, rt, rs = as_reference(a, t, scale)
    cids = ids.cpu()
    want, want_grads = grads_of(
        lambda a, t, s: (dense_one_sided(a, t, s, cids, cids, 0, multi_positive) + dense_one_sided(t, a, s, cids, cids, 0, multi_positive)) / 2,
        ra, rt, rs,
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-5 if dtype == "fp32" else 1e-4)
    for got, expected in zip(grads, want_grads):
        close(got, expected, dtype)
    tiled, tiled_grads = grads_of(lambda a, t, s: tiled_symmetric_cross_entropy(a, t, s, cids, multi_positive, 7), ra, rt, rs)
    assert float(loss) == pytest.approx(float(tiled), rel=1e-5 if dtype == "fp32" else 1e-4)
    for got, expected in zip(grads, tiled_grads):
        close(got, expected, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("multi_positive", [False, True])
@pytest.mark.parametrize("rows", [slice(0, 23), slice(5, 19)])
def test_one_sided_cross_entropy_matches_dense(dtype, multi_positive, rows):
    """Anchors ``rows`` of the batch against all of it (the distributed local loss), positives at an offset."""
    ids = torch.tensor(IDS["duplicates"], device=DEVICE)
    x, y = unit(23, 20, 3, DTYPES[dtype])[rows], unit(23, 20, 4, DTYPES[dtype])
    scale = torch.tensor(11.0, device=DEVICE)
    loss, grads = grads_of(
        lambda x, y, s: fused_softmax_cross_entropy(x, y, s, ids[rows], ids, rows.start, multi_positive, blocks=SMALL), x, y, scale
    )
    cids = ids.cpu()
    want, want_grads = grads_of(
        lambda x, y, s: dense_one_sided(x, y, s, cids[rows], cids, rows.start, multi_positive), *as_reference(x, y, scale)
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-5 if dtype == "fp32" else 1e-4)
    for got, expected in zip(grads, want_grads):
        close(got, expected, dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("ids", sorted(IDS))
def test_sigmoid_pairs_match_dense_and_tiled(dtype, ids):
    ids = torch.tensor(IDS[ids], device=DEVICE)
    x, y = unit(len(ids), 24, 5, DTYPES[dtype]), unit(len(ids), 24, 6, DTYPES[dtype])
    scale, bias = torch.tensor(9.0, device=DEVICE), torch.tensor(-4.0, device=DEVICE)
    loss, grads = grads_of(lambda x, y, s, c: fused_sigmoid_pairs(x, y, s, c, ids, ids, blocks=SMALL), x, y, scale, bias)
    reference = as_reference(x, y, scale, bias)
    cids = ids.cpu()
    want, want_grads = grads_of(lambda x, y, s, c: dense_sigmoid(x, y, s, c, cids, cids), *reference)
    tiled, tiled_grads = grads_of(lambda x, y, s, c: tiled_sigmoid_pairs(x, y, s, c, cids, cids, 5), *reference)
    for expected, expected_grads in ((want, want_grads), (tiled, tiled_grads)):
        assert float(loss) == pytest.approx(float(expected), rel=1e-5 if dtype == "fp32" else 1e-4)
        for got, g in zip(grads, expected_grads):
            close(got, g, dtype)


@needs_kernels
def test_large_logits_stay_finite_and_exact():
    """Scale 100 (the temperature's clamp) with near-duplicate rows: logits near ±100, where a naive
    exp overflows fp32; the online log-sum-exp must still give the dense value."""
    ids = torch.tensor(IDS["duplicates"], device=DEVICE)
    a = unit(23, 16, 7)
    t = F.normalize(a + 0.01 * unit(23, 16, 8), dim=-1)
    scale = torch.tensor(100.0, device=DEVICE)
    loss, grads = grads_of(lambda a, t, s: fused_symmetric_cross_entropy(a, t, s, ids, blocks=SMALL), a, t, scale)
    cids = ids.cpu()
    want, want_grads = grads_of(
        lambda a, t, s: (dense_one_sided(a, t, s, cids, cids, 0, False) + dense_one_sided(t, a, s, cids, cids, 0, False)) / 2,
        *as_reference(a, t, scale),
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-4, abs=1e-5)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_default_blocks_with_a_wide_embedding():
    """The default tiles (one block holds the whole batch here) with d = 96, not a power of two."""
    ids = torch.tensor(IDS["duplicates"], device=DEVICE)
    a, t = unit(23, 96, 9), unit(23, 96, 10)
    scale = torch.tensor(12.0, device=DEVICE)
    loss, grads = grads_of(lambda a, t, s: fused_symmetric_cross_entropy(a, t, s, ids), a, t, scale)
    want, want_grads = grads_of(lambda a, t, s: tiled_symmetric_cross_entropy(a, t, s, ids.cpu(), tile=5), *as_reference(a, t, scale))
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    for got, expected in zip(grads, want_grads):
        close(got, expected, "fp32")


# ---------------------------------------------------------------------------------------- objectives

@needs_kernels
@pytest.mark.parametrize("name, options", BLOCKWISE_OBJECTIVES)
def test_fused_objective_equals_dense(name, options):
    """``kernel=fused``: loss and gradients (embeddings and learnable state) equal the dense objective's."""
    ids = torch.tensor(IDS["duplicates"], device=DEVICE)
    a, t = unit(len(ids), 32, 11), unit(len(ids), 32, 12)
    dense = build_objective(name, options).to(DEVICE)
    fast = build_objective(name, {**options, "kernel": "fused"}).to(DEVICE)
    fast.load_state_dict(dense.state_dict())
    loss, grads = loss_and_grads(dense, a, t, ids)
    fused_loss, fused_grads = loss_and_grads(fast, a, t, ids)
    assert float(fused_loss) == pytest.approx(float(loss), rel=1e-5)
    for got, expected in zip(fused_grads, grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_fused_local_loss_equals_dense(name):
    ids = torch.tensor([0, 1, 1, 2, 3, 4, 5, 5, 6, 7], device=DEVICE)
    a, t = unit(10, 16, 13), unit(10, 16, 14)
    rows = slice(4, 9)
    dense, fast = build_objective(name).to(DEVICE), build_objective(name, {"kernel": "fused"}).to(DEVICE)
    expected = dense.local_loss(a, t, ids, rows).loss.detach()
    assert float(fast.local_loss(a, t, ids, rows).loss.detach()) == pytest.approx(float(expected), rel=1e-5)


@needs_kernels
@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_fused_graph_keeps_no_batch_squared_tensor(name):
    b, d = 256, 8
    ids = torch.arange(b, device=DEVICE)
    a, t = unit(b, d, 15).requires_grad_(), unit(b, d, 16).requires_grad_()
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        build_objective(name, {"kernel": "fused"}).to(DEVICE)(a, t, ids).loss
    assert saved < 16 * b * d * 4


# ------------------------------------------------------------------------------------------ fallback


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(fused, "_warned", set())


@pytest.mark.parametrize("cause", ["no triton", "cpu without interpreter"])
def test_fallback_uses_the_tiled_loss_and_says_why_once(cause, monkeypatch, caplog, fresh_warnings):
    """Without Triton, or on CPU tensors without the interpreter, ``kernel=fused`` gives the tiled
    loss (the same values) and logs one warning naming the reason, however often it is called."""
    if cause == "no triton":
        monkeypatch.setattr(fused, "triton", None)
        monkeypatch.setattr(fused, "TRITON_IMPORT_ERROR", "No module named 'triton'")
        expected_reason = "Triton is not importable"
    else:
        if fused.triton is None:
            pytest.skip("Triton is not installed; the 'no triton' case covers the fallback")
        monkeypatch.setattr(fused, "INTERPRET", False)
        expected_reason = "TRITON_INTERPRET=1 was not set"
    ids = torch.tensor(IDS["duplicates"])
    a, t = unit(23, 16, 17).cpu(), unit(23, 16, 18).cpu()
    dense = build_objective("infonce")
    fast = build_objective("infonce", {"kernel": "fused"})
    with caplog.at_level(logging.WARNING, logger="clarion.objectives"):
        for _ in range(3):
            loss = fast(a, t, ids).loss
        siglip = build_objective("siglip", {"kernel": "fused"})(a, t, ids).loss
    messages = [r.getMessage() for r in caplog.records if "kernel=fused" in r.getMessage()]
    assert len(messages) == 1 and expected_reason in messages[0] and "tiled" in messages[0]
    assert float(loss) == pytest.approx(float(dense(a, t, ids).loss), rel=1e-5)
    assert float(siglip) == pytest.approx(float(build_objective("siglip")(a, t, ids).loss), rel=1e-5)


def test_fp64_inputs_fall_back(fresh_warnings, caplog):
    """gradcheck-style fp64 inputs go to the tiled path (the kernels take fp32, bf16, fp16)."""
    ids = torch.arange(6)
    a = unit(6, 4, 19, torch.float64).cpu().requires_grad_()
    t = unit(6, 4, 20, torch.float64).cpu().requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="clarion.objectives"):
        assert torch.autograd.gradcheck(lambda a, t, s: fused_symmetric_cross_entropy(a, t, s, ids, tile=4), (a, t, scale))
    assert any("float64" in r.getMessage() or "Triton is not importable" in r.getMessage() for r in caplog.records)


def test_bad_kernel_option_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        build_objective("infonce", {"kernel": "cuda"})


def test_fused_option_makes_the_base_blockwise():
    """``kernel=fused`` sets a fallback tile, so SVR treats the base as tiled (static radius only)."""
    assert build_objective("siglip", {"kernel": "fused"}).tile == fused.FUSED_FALLBACK_TILE
    assert build_objective("infonce", {"kernel": "fused", "tile": 512}).tile == 512
    with pytest.raises(ValueError, match="radius=static"):
        build_objective("infonce+svr", {"kernel": "fused"}, batch_size=64)
