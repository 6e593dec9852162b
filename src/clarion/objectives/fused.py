"""Fused contrastive losses: Triton kernels whose logits never leave on-chip memory.

The same losses as :mod:`clarion.objectives.tiled` (its docstring has the maths), computed
FlashAttention-style: a program owns ``BLOCK_M`` rows of ``x`` [M, d] and walks over ``y``
[N, d] in ``BLOCK_N`` columns; each logit tile ``L = s·x_I y_Jᵀ`` [BLOCK_M, BLOCK_N] is made in
registers (a ``tl.dot`` in the inputs' dtype with fp32 accumulation) and reduced there.

Kernels (all one program per row block, no atomics, so results are deterministic):

- ``_lse_kernel``: ``LSE_i = log Σ_{j∉M_i} e^{L_ij}`` with the online update
  ``m' = max(m, max_J L_iJ)``, ``σ' = σ·e^{m−m'} + Σ_J e^{L_iJ−m'}``. ``M_i`` (same-clip masks):
  columns j with ``id_j = id_i`` and ``j − i ≠ offset`` (the positive of row i is column
  ``i + offset``). Symmetric InfoNCE calls it twice, ``(a, t)`` for the row and ``(t, a)`` for
  the column log-sum-exps.
- ``_sigmoid_kernel``: per-row sums ``Σ_j softplus(−z_ij (L_ij + β))`` (SigLIP).
- ``_grad_kernel``: recomputes each tile and accumulates ``G_I = Σ_J W_IJ y_J`` [BLOCK_M, d] in
  fp32, with ``W`` = ``e^{L−LSE_row}``, ``e^{L−LSE_col}``, their mean (symmetric InfoNCE), or
  ``−z σ(−z(L+β))`` (SigLIP), masked like the forward; optionally the row sums ``Σ_j W_ij x_i·y_j``
  and ``Σ_j W_ij`` for the scale and bias gradients. ``∂y`` is the same kernel with ``x`` and
  ``y`` swapped (``Wᵀ`` has the same form), so no ``[N, d]`` atomics are needed.

Matrix work per step (B pairs, symmetric InfoNCE): two products forward (row and column
log-sum-exps), four backward (each gradient kernel recomputes its tile, then one product),
12·B²·d FLOPs; SigLIP: one forward, four backward. ``W`` is rounded to the inputs' dtype before
its product, as the tiled path does. Memory beyond the inputs and their gradients: O(B) floats
and one fp32 [B, d] buffer per gradient.

Triton is optional: without it (or on a CPU without ``TRITON_INTERPRET=1``, or for fp64 inputs)
the public functions fall back to the tiled PyTorch losses and log why, once per reason. Under
Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported) the kernels run
on CPU tensors; there ``tl.dot`` on bf16/fp16 operands is wrong in Triton ≤ 3.9 (it multiplies
the raw 16-bit patterns), so the kernels upcast operands to fp32 first (bf16·bf16 products are
exact in fp32, so only the summation order differs from the tensor-core path).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .tiled import (
    ClipTargets, check_inputs, tiled_sigmoid_pairs, tiled_softmax_cross_entropy, tiled_symmetric_cross_entropy,
)

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # Triton is an optional dependency: the fused path then falls back to tiled
    triton = tl = None
    TRITON_IMPORT_ERROR: str | None = str(exc)
else:
    TRITON_IMPORT_ERROR = None

log = logging.getLogger("clarion.objectives")

#: Whether the kernels below were built for Triton's CPU interpreter (read once, at import, as Triton does).
INTERPRET = triton is not None and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KERNELS = ("pytorch", "fused")  # the objectives' ``kernel`` option
FUSED_FALLBACK_TILE = 4096
_warned: set[str] = set()


def blockwise_settings(kernel: str, tile: int | None) -> tuple[bool, int | None]:
    """(fused, tile) from an objective's ``kernel`` and ``tile`` options. ``fused`` is blockwise
    too: it sets a tile (its fallback's) when none is given, so wrappers (SVR) see a tiled base."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    fused = kernel == "fused"
    return fused, (tile or FUSED_FALLBACK_TILE) if fused else tile


@dataclass(frozen=True)
class Blocks:
    """Tile sizes: forward kernels ``m × n`` logits with a ``k``-wide loop over d; gradient
    kernel ``grad_m × grad_n`` logits with the whole (padded) d held per tile."""

    m: int = 128
    n: int = 64
    k: int = 64
    grad_m: int = 64
    grad_n: int = 64
    warps: int = 8
    stages: int = 2


def default_blocks(dim: int) -> Blocks:
    """Tiles by embedding width: the gradient kernel keeps an fp32 [grad_m, d] accumulator and a
    [grad_n, d] tile of ``y``, so wide embeddings take narrower tiles. Untuned leads for Hopper;
    ``CLARION_FUSED_BLOCKS=m,n,k,grad_m,grad_n,warps,stages`` overrides them."""
    override = os.environ.get("CLARION_FUSED_BLOCKS")
    if override:
        return Blocks(*(int(v) for v in override.split(",")))
    if INTERPRET:
        return Blocks(64, 64, 64, 64, 64, 4, 1)
    padded = triton.next_power_of_2(dim)
    if padded <= 128:
        return Blocks(128, 64, 64, 128, 64, 8, 2)
    if padded <= 256:
        return Blocks(128, 64, 64, 64, 64, 8, 2)
    return Blocks(128, 64, 64, 64, 32, 8, 2)


def unavailable_reason(x: torch.Tensor) -> str | None:
    """Why the kernels cannot run on ``x`` here, or None when they can."""
    if triton is None:
        return f"Triton is not importable ({TRITON_IMPORT_ERROR})"
    if x.dtype not in KERNEL_DTYPES:
        return f"{x.dtype} inputs (the kernels take float32, bfloat16 and float16)"
    if x.device.type == "cuda" or INTERPRET:
        return None
    return (f"the inputs are on the {x.device.type} and TRITON_INTERPRET=1 was not set before import "
            "(the kernels run on CUDA devices, or on CPU tensors under Triton's interpreter)")


def fused_usable(x: torch.Tensor) -> bool:
    """True when the kernels run on ``x``; else logs once per reason that the tiled path is used."""
    reason = unavailable_reason(x)
    if reason is None:
        return True
    if reason not in _warned:
        _warned.add(reason)
        log.warning("kernel=fused: using the tiled PyTorch loss instead, because of %s", reason)
    return False


def dot_precision(x: torch.Tensor) -> str:
    """fp32 operands: exact ("ieee") unless torch's own fp32 matmuls may use tf32; ignored for bf16/fp16."""
    if x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


# ------------------------------------------------------------------------------------------- kernels

if triton is not None:

    @triton.jit
    def _operand(tile, UPCAST: tl.constexpr):
        """A tile as a ``tl.dot`` operand: as loaded, or fp32 under the interpreter (see module docstring)."""
        if UPCAST:
            return tile.to(tl.float32)
        return tile

    @triton.jit
    def _products(P, Q, rows, cols, row_ok, col_ok, D, stride_p, stride_q,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """``P[rows] · Q[cols]ᵀ`` [BLOCK_M, BLOCK_N] in fp32, looping over d in BLOCK_K slices."""
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, D, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            p = tl.load(P + rows[:, None] * stride_p + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            q = tl.load(Q + cols[:, None] * stride_q + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(_operand(p, UPCAST), tl.trans(_operand(q, UPCAST)), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _excluded(id_p, id_q, rows, cols, offset):
        """[BLOCK_M, BLOCK_N] same-clip mask: same id, not the positive pair (column = row + offset)."""
        return (id_p[:, None] == id_q[None, :]) & ((cols[None, :] - rows[:, None]) != offset)

    @triton.jit
    def _lse_kernel(P, Q, IDP, IDQ, LSE, SCALE, M, N, D, stride_p, stride_q, offset,
                    MASKED: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """``LSE[i] = log Σ_{j ∉ M_i} exp(s · P_i·Q_j)`` for the BLOCK_M rows of this program."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        scale = tl.load(SCALE).to(tl.float32)
        id_p = tl.load(IDP + rows, mask=row_ok, other=-1)
        running_max = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
        running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            logits = scale * _products(P, Q, rows, cols, row_ok, col_ok, D, stride_p, stride_q,
                                       UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
            dropped = ~col_ok[None, :]
            if MASKED:
                id_q = tl.load(IDQ + cols, mask=col_ok, other=-2)
                dropped = dropped | _excluded(id_p, id_q, rows, cols, offset)
            logits = tl.where(dropped, float("-inf"), logits)
            new_max = tl.maximum(running_max, tl.max(logits, 1))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
            running_max = new_max
        tl.store(LSE + rows, running_max + tl.log(running_sum), mask=row_ok)

    @triton.jit
    def _sigmoid_kernel(P, Q, IDP, IDQ, OUT, SCALE, BIAS, M, N, D, stride_p, stride_q,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """``OUT[i] = Σ_j −log σ(z_ij (s·P_i·Q_j + β))``, ``z = +1`` on the same clip, else −1."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        scale = tl.load(SCALE).to(tl.float32)
        bias = tl.load(BIAS).to(tl.float32)
        id_p = tl.load(IDP + rows, mask=row_ok, other=-1)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            logits = scale * _products(P, Q, rows, cols, row_ok, col_ok, D, stride_p, stride_q,
                                       UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K) + bias
            id_q = tl.load(IDQ + cols, mask=col_ok, other=-2)
            signed = tl.where(id_p[:, None] == id_q[None, :], logits, -logits)
            # −log σ(x) = max(−x, 0) + log(1 + e^{−|x|}), stable for either sign
            loss = tl.maximum(-signed, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(signed)))
            total += tl.sum(tl.where(col_ok[None, :], loss, 0.0), 1)
        tl.store(OUT + rows, total, mask=row_ok)

    @triton.jit
    def _grad_kernel(P, Q, IDP, IDQ, LSEP, LSEQ, SCALE, BIAS, GRAD, SUM_WP, SUM_W,
                     M, N, D, stride_p, stride_q, offset,
                     SIGMOID: tl.constexpr, USE_LSEP: tl.constexpr, USE_LSEQ: tl.constexpr,
                     MASKED: tl.constexpr, WITH_SUMS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``GRAD[i] = Σ_j W_ij Q_j`` (fp32) for this program's rows, with the logit tile recomputed.

        Softmax: ``W = e^{L−LSEP_i}`` and/or ``e^{L−LSEQ_j}`` (their mean when both), 0 on the
        mask. Sigmoid: ``W = −z σ(−z(L+β))``. ``WITH_SUMS``: ``SUM_WP[i] = Σ_j W_ij P_i·Q_j``,
        ``SUM_W[i] = Σ_j W_ij`` (the scale and bias gradients before their factors).
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        ds = tl.arange(0, BLOCK_D)
        d_ok = ds < D
        scale = tl.load(SCALE).to(tl.float32)
        p = tl.load(P + rows[:, None] * stride_p + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        p_op = _operand(p, UPCAST)
        id_p = tl.load(IDP + rows, mask=row_ok, other=-1)
        if USE_LSEP:
            lse_p = tl.load(LSEP + rows, mask=row_ok, other=0.0)
        if SIGMOID:
            bias = tl.load(BIAS).to(tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        sum_wp = tl.zeros([BLOCK_M], dtype=tl.float32)
        sum_w = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            q = tl.load(Q + cols[:, None] * stride_q + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            q_op = _operand(q, UPCAST)
            products = tl.dot(p_op, tl.trans(q_op), input_precision=PRECISION)
            logits = scale * products
            id_q = tl.load(IDQ + cols, mask=col_ok, other=-2)
            same = id_p[:, None] == id_q[None, :]
            if SIGMOID:
                z = tl.where(same, 1.0, -1.0)
                w = -z * tl.sigmoid(-z * (logits + bias))
            else:
                if USE_LSEQ:
                    lse_q = tl.load(LSEQ + cols, mask=col_ok, other=0.0)
                if USE_LSEP and USE_LSEQ:
                    w = 0.5 * (tl.exp(logits - lse_p[:, None]) + tl.exp(logits - lse_q[None, :]))
                elif USE_LSEP:
                    w = tl.exp(logits - lse_p[:, None])
                else:
                    w = tl.exp(logits - lse_q[None, :])
                if MASKED:
                    w = tl.where(_excluded(id_p, id_q, rows, cols, offset), 0.0, w)
            w = tl.where(col_ok[None, :], w, 0.0)
            if WITH_SUMS:
                sum_wp += tl.sum(w * products, 1)
                sum_w += tl.sum(w, 1)
            acc = tl.dot(_operand(w.to(q.dtype), UPCAST), q_op, acc, input_precision=PRECISION)
        tl.store(GRAD + rows[:, None] * D + ds[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
        if WITH_SUMS:
            tl.store(SUM_WP + rows, sum_wp, mask=row_ok)
            tl.store(SUM_W + rows, sum_w, mask=row_ok)


# ----------------------------------------------------------------------------------------- launchers

def _grid(rows: int, block: int) -> tuple[int]:
    return (triton.cdiv(rows, block),)


def row_lse(p: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, id_p: torch.Tensor, id_q: torch.Tensor,
            offset: int, masked: bool, blocks: Blocks) -> torch.Tensor:
    """[M] fp32: ``log Σ_{j∉M_i} exp(s·p_i·q_j)`` for ``p`` [M, d], ``q`` [N, d] (mask: module docstring)."""
    out = torch.empty(len(p), dtype=torch.float32, device=p.device)
    _lse_kernel[_grid(len(p), blocks.m)](
        p, q, id_p, id_q, out, scale, len(p), len(q), p.shape[1], p.stride(0), q.stride(0), offset,
        MASKED=masked, UPCAST=INTERPRET, PRECISION=dot_precision(p),
        BLOCK_M=blocks.m, BLOCK_N=blocks.n, BLOCK_K=blocks.k, num_warps=blocks.warps, num_stages=blocks.stages,
    )
    return out


def sigmoid_row_sums(p: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     id_p: torch.Tensor, id_q: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """[M] fp32: ``Σ_j −log σ(z_ij (s·p_i·q_j + β))``."""
    out = torch.empty(len(p), dtype=torch.float32, device=p.device)
    _sigmoid_kernel[_grid(len(p), blocks.m)](
        p, q, id_p, id_q, out, scale, bias, len(p), len(q), p.shape[1], p.stride(0), q.stride(0),
        UPCAST=INTERPRET, PRECISION=dot_precision(p),
        BLOCK_M=blocks.m, BLOCK_N=blocks.n, BLOCK_K=blocks.k, num_warps=blocks.warps, num_stages=blocks.stages,
    )
    return out


def weighted_sums(p: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, id_p: torch.Tensor, id_q: torch.Tensor,
                  blocks: Blocks, *, lse_p: torch.Tensor | None = None, lse_q: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, offset: int = 0, masked: bool = False,
                  with_sums: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``Σ_j W_ij q_j`` [M, d] fp32 and, with ``with_sums``, the row sums ``Σ_j W_ij p_i·q_j`` and
    ``Σ_j W_ij`` [M]. ``W`` is the sigmoid weight when ``bias`` is given, else the softmax weight
    from ``lse_p`` (rows), ``lse_q`` (columns) or their mean."""
    m, d = p.shape
    grad = torch.empty((m, d), dtype=torch.float32, device=p.device)
    sum_wp = torch.empty(m if with_sums else 1, dtype=torch.float32, device=p.device)
    sum_w = torch.empty_like(sum_wp)
    dummy = sum_wp
    _grad_kernel[_grid(m, blocks.grad_m)](
        p, q, id_p, id_q, dummy if lse_p is None else lse_p, dummy if lse_q is None else lse_q, scale,
        dummy if bias is None else bias, grad, sum_wp, sum_w, m, len(q), d, p.stride(0), q.stride(0), offset,
        SIGMOID=bias is not None, USE_LSEP=lse_p is not None, USE_LSEQ=lse_q is not None, MASKED=masked,
        WITH_SUMS=with_sums, UPCAST=INTERPRET, PRECISION=dot_precision(p),
        BLOCK_M=blocks.grad_m, BLOCK_N=blocks.grad_n, BLOCK_D=triton.next_power_of_2(d),
        num_warps=blocks.warps, num_stages=blocks.stages,
    )
    return grad, (sum_wp if with_sums else None), (sum_w if with_sums else None)


# ---------------------------------------------------------------------------------- autograd functions

def _as_fp32_scalar(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=like.device).reshape(())


class FusedSymmetricCrossEntropy(torch.autograd.Function):
    """½ [ℓ(a → t) + ℓ(t → a)], positive of row i in column i; ``row_lse`` from (a, t), ``col_lse``
    from (t, a); backward ``W = (P^row + P^col)/2``:

        ∂a = (s/B)(W t − t̄),  ∂t = (s/B)(Wᵀ a − ā),  ∂s = (1/B)(Σ_ij W_ij a_i·t_j − Σ_i a_i·t̄_i)

    with ``t̄``, ``ā`` the targets (the positive, or the clip mean with ``multi_positive``)."""

    @staticmethod
    def forward(ctx, a, t, scale, audio_ids, multi_positive: bool, blocks: Blocks):
        masked = not multi_positive
        lse_rows = row_lse(a, t, scale, audio_ids, audio_ids, 0, masked, blocks)
        lse_cols = row_lse(t, a, scale, audio_ids, audio_ids, 0, masked, blocks)
        targets = ClipTargets(audio_ids, audio_ids, torch.arange(len(a), device=a.device), multi_positive)
        target_products = (a.float() * targets.gather(t)).sum()
        ctx.save_for_backward(a, t, scale, audio_ids, lse_rows, lse_cols)
        ctx.targets, ctx.masked, ctx.blocks = targets, masked, blocks
        return (lse_rows.sum() + lse_cols.sum()) / (2 * len(a)) - scale * target_products / len(a)

    @staticmethod
    def backward(ctx, grad_loss):
        a, t, scale, ids, lse_rows, lse_cols = ctx.saved_tensors
        common = dict(offset=0, masked=ctx.masked)
        grad_a, sum_wp, _ = weighted_sums(a, t, scale, ids, ids, ctx.blocks, lse_p=lse_rows, lse_q=lse_cols,
                                          with_sums=True, **common)
        grad_t, _, _ = weighted_sums(t, a, scale, ids, ids, ctx.blocks, lse_p=lse_cols, lse_q=lse_rows, **common)
        weight = grad_loss.float() / len(a)
        target_t, target_a = ctx.targets.gather(t), ctx.targets.gather(a)
        grad_scale = weight * (sum_wp.sum() - (a.float() * target_t).sum())
        grad_a = weight * scale * (grad_a - target_t)
        grad_t = weight * scale * (grad_t - target_a)
        return grad_a.to(a.dtype), grad_t.to(t.dtype), grad_scale.to(scale.dtype), None, None, None


class FusedSoftmaxCrossEntropy(torch.autograd.Function):
    """One direction: anchors ``x`` [b, d] against ``y`` [N, d], positive of anchor i in column
    ``i + offset``; ``∂x = (s/b)(P y − ȳ)``, ``∂y = (s/b)(Pᵀ x − scatter(x))``."""

    @staticmethod
    def forward(ctx, x, y, scale, anchor_ids, other_ids, offset: int, multi_positive: bool, blocks: Blocks):
        masked = not multi_positive
        lse = row_lse(x, y, scale, anchor_ids, other_ids, offset, masked, blocks)
        positive = torch.arange(len(x), device=x.device) + offset
        targets = ClipTargets(anchor_ids, other_ids, positive, multi_positive)
        target = targets.gather(y)
        ctx.save_for_backward(x, y, scale, anchor_ids, other_ids, lse, target)
        ctx.targets, ctx.masked, ctx.offset, ctx.blocks = targets, masked, offset, blocks
        return (lse - scale * (x.float() * target).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, scale, anchor_ids, other_ids, lse, target = ctx.saved_tensors
        grad_x, sum_wp, _ = weighted_sums(x, y, scale, anchor_ids, other_ids, ctx.blocks, lse_p=lse,
                                          offset=ctx.offset, masked=ctx.masked, with_sums=True)
        grad_y, _, _ = weighted_sums(y, x, scale, other_ids, anchor_ids, ctx.blocks, lse_q=lse,
                                     offset=-ctx.offset, masked=ctx.masked)
        weight = grad_loss.float() / len(x)
        grad_scale = weight * (sum_wp.sum() - (x.float() * target).sum())
        grad_x = weight * scale * (grad_x - target)
        grad_y = weight * scale * (grad_y - ctx.targets.scatter(x.float(), len(y)))
        return grad_x.to(x.dtype), grad_y.to(y.dtype), grad_scale.to(scale.dtype), None, None, None, None, None


class FusedSigmoidPairs(torch.autograd.Function):
    """SigLIP rows: ``ℓ = (1/b) Σ_ij −log σ(z_ij (L_ij + β))``; with ``G_ij = −z σ(−z(L+β))``:
    ``∂x = (s/b) G y``, ``∂y = (s/b) Gᵀ x``, ``∂s = (1/b) Σ G_ij x_i·y_j``, ``∂β = (1/b) Σ G_ij``."""

    @staticmethod
    def forward(ctx, x, y, scale, bias, anchor_ids, other_ids, blocks: Blocks):
        rows = sigmoid_row_sums(x, y, scale, bias, anchor_ids, other_ids, blocks)
        ctx.save_for_backward(x, y, scale, bias, anchor_ids, other_ids)
        ctx.blocks = blocks
        return rows.sum() / len(x)

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, scale, bias, anchor_ids, other_ids = ctx.saved_tensors
        grad_x, sum_wp, sum_w = weighted_sums(x, y, scale, anchor_ids, other_ids, ctx.blocks, bias=bias, with_sums=True)
        grad_y, _, _ = weighted_sums(y, x, scale, other_ids, anchor_ids, ctx.blocks, bias=bias)
        weight = grad_loss.float() / len(x)
        return (
            (weight * scale * grad_x).to(x.dtype), (weight * scale * grad_y).to(y.dtype),
            (weight * sum_wp.sum()).to(scale.dtype), (weight * sum_w.sum()).to(bias.dtype), None, None, None,
        )


# --------------------------------------------------------------------------------------- public API

def _prepared(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Row-contiguous embeddings and int64 ids, as the kernels index them."""
    return [t.contiguous() if t.is_floating_point() else t.long().contiguous() for t in tensors]


def fused_symmetric_cross_entropy(
    a: torch.Tensor, t: torch.Tensor, scale, audio_ids: torch.Tensor, multi_positive: bool = False,
    tile: int = 4096, blocks: Blocks | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of the pairs (a_i, t_i), [B, d] each (``tiled_symmetric_cross_entropy``'s
    loss), by the kernels; by the tiled path with tile ``tile`` where they cannot run."""
    if not fused_usable(a):
        return tiled_symmetric_cross_entropy(a, t, scale, audio_ids, multi_positive, tile)
    check_inputs(a, t, audio_ids, audio_ids, tile)
    if len(a) != len(t) or a.dtype != t.dtype:
        raise ValueError(f"fused loss: a and t must hold the same pairs in one dtype, got {tuple(a.shape)} "
                         f"{a.dtype} and {tuple(t.shape)} {t.dtype}")
    a, t, audio_ids = _prepared(a, t, audio_ids)
    blocks = blocks or default_blocks(a.shape[1])
    return FusedSymmetricCrossEntropy.apply(a, t, _as_fp32_scalar(scale, a), audio_ids, multi_positive, blocks)


def fused_softmax_cross_entropy(
    x: torch.Tensor, y: torch.Tensor, scale, anchor_ids: torch.Tensor, other_ids: torch.Tensor, offset: int = 0,
    multi_positive: bool = False, tile: int = 4096, blocks: Blocks | None = None,
) -> torch.Tensor:
    """One-sided cross-entropy of anchors ``x`` [b, d] against ``y`` [N, d], the positive of anchor i
    in column ``i + offset`` (``tiled_softmax_cross_entropy`` with ``positive = arange(b) + offset``)."""
    positive = torch.arange(len(x), device=x.device) + offset
    if not fused_usable(x):
        return tiled_softmax_cross_entropy(x, y, scale, anchor_ids, other_ids, positive, multi_positive, tile)
    check_inputs(x, y, anchor_ids, other_ids, tile)
    if offset < 0 or offset + len(x) > len(y) or x.dtype != y.dtype:
        raise ValueError(f"fused loss: anchors' positives (columns {offset}..{offset + len(x) - 1}) must lie in y "
                         f"[{len(y)}, d], in one dtype")
    x, y, anchor_ids, other_ids = _prepared(x, y, anchor_ids, other_ids)
    blocks = blocks or default_blocks(x.shape[1])
    return FusedSoftmaxCrossEntropy.apply(x, y, _as_fp32_scalar(scale, x), anchor_ids, other_ids, offset,
                                          multi_positive, blocks)


def fused_sigmoid_pairs(
    x: torch.Tensor, y: torch.Tensor, scale, bias, anchor_ids: torch.Tensor, other_ids: torch.Tensor,
    tile: int = 4096, blocks: Blocks | None = None,
) -> torch.Tensor:
    """The sigmoid pair loss (``tiled_sigmoid_pairs``'s) of anchors ``x`` [b, d] against ``y`` [N, d]."""
    if not fused_usable(x):
        return tiled_sigmoid_pairs(x, y, scale, bias, anchor_ids, other_ids, tile)
    check_inputs(x, y, anchor_ids, other_ids, tile)
    if x.dtype != y.dtype:
        raise ValueError(f"fused loss: x and y in one dtype, got {x.dtype} and {y.dtype}")
    x, y, anchor_ids, other_ids = _prepared(x, y, anchor_ids, other_ids)
    blocks = blocks or default_blocks(x.shape[1])
    return FusedSigmoidPairs.apply(x, y, _as_fp32_scalar(scale, x), _as_fp32_scalar(bias, x), anchor_ids, other_ids, blocks)
