"""Tiled contrastive losses: memory O((b + N)·d + tile²) instead of O(b·N).

Anchors ``x`` [b, d] meet others ``y`` [N, d] through logits ``L_ij = s·x_i·y_j``, which are
made one [tile, tile] block at a time and never stored whole; the backward pass recomputes
each block (as FlashAttention does).

**Softmax cross-entropy** (one direction of InfoNCE, docs/methods.md §1), anchor i's positive in
column ``p_i``, ``M_i`` = the other columns of its clip (left out of the denominator) or, with
``multi_positive``, targets ``T_ij`` uniform over the clip's columns::

    ℓ = (1/b) Σ_i [ LSE_{j∉M_i} L_ij − Σ_j T_ij L_ij ]

Forward keeps a streaming log-sum-exp per row over the column blocks (running max ``m``, sum
``σ``): ``m' = max(m, max_J L_iJ)``, ``σ' = σ·e^{m−m'} + Σ_J e^{L_iJ−m'}``. With
``P_ij = e^{L_ij − LSE_i}`` (0 on ``M_i``) the backward pass is::

    ∂x_i = (s/b) Σ_j (P_ij − T_ij) y_j,   ∂y_j = (s/b) Σ_i (P_ij − T_ij) x_i,
    ∂s  = (1/b) Σ_ij (P_ij − T_ij) x_i·y_j

where the ``T`` parts are O(b·d) (a gather or per-clip means) and stay outside the block loop.

**Sigmoid pairs** (SigLIP, docs/methods.md §2), ``z_ij = +1`` when anchor i and column j share a
clip, else −1::

    ℓ = −(1/b) Σ_ij log σ(z_ij (L_ij + β)),   ∂ℓ/∂L_ij = −z_ij σ(−z_ij (L_ij + β)) / b

Block matrix products run in the inputs' dtype (bf16 inputs use bf16 tensor cores); logits,
log-sum-exps and gradient accumulators are fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

def blocks(n: int, tile: int) -> list[slice]:
    return [slice(i, min(i + tile, n)) for i in range(0, n, tile)]


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs, else the inputs' own (fp64 stays fp64, for gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def block_products(x: torch.Tensor, y: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """[rows, cols] block of ``x yᵀ`` in the accumulation dtype."""
    return (x[rows] @ y[cols].T).to(accumulation_dtype(x))


class StreamingLSE:
    """Log-sum-exps of n rows (or columns) of logits that arrive block by block.

    State: a running maximum ``m`` and a running sum ``s`` (accumulation dtype), with
    ``lse = m + log s`` at any time. Folding a block ``L`` [rows, cols] in along ``dim`` (1: one
    value per row, 0: one per column) rescales the sum to the new maximum, so no ``exp`` overflows::

        m' = max(m, max_dim L)        s' = s · exp(m − m') + Σ_dim exp(L − m')

    ``at`` selects the entries a block touches (a slice of the n).
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self.max = torch.full((n,), torch.finfo(dtype).min, dtype=dtype, device=device)
        self.sum = torch.zeros_like(self.max)

    def add(self, logits: torch.Tensor, dim: int, at: slice = slice(None)) -> None:
        old = self.max[at]
        new = torch.maximum(old, logits.amax(dim))
        shifted = logits - (new[:, None] if dim == 1 else new)
        self.sum[at] = self.sum[at] * (old - new).exp() + shifted.exp().sum(dim)
        self.max[at] = new

    def lse(self) -> torch.Tensor:
        return self.max + self.sum.log()


def add_block_gradients(prob: torch.Tensor, products: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rows: slice,
                        cols: slice, grad_x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """One block's share of the backward pass of a softmax over ``x yᵀ``: with ``P`` the block's
    probabilities [rows, cols], ``grad_x[rows] += P y[cols]`` and ``grad_y[cols] += Pᵀ x[rows]``
    (block products in the inputs' dtype); returns ``Σ P ⊙ (x yᵀ)`` of the block (for the scale's gradient)."""
    expected = (prob * products).sum()
    prob = prob.to(x.dtype)
    grad_x[rows] += prob @ y[cols]
    grad_y[cols] += prob.T @ x[rows]
    return expected


def check_inputs(x: torch.Tensor, y: torch.Tensor, anchor_ids: torch.Tensor, other_ids: torch.Tensor, tile: int) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"tiled loss: x [b, d] and y [N, d] expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(anchor_ids) != len(x) or len(other_ids) != len(y):
        raise ValueError("tiled loss: one clip id per row of x and of y")
    if tile < 1:
        raise ValueError(f"tile must be ≥ 1, got {tile}")


class ClipTargets:
    """The target side of the cross-entropy: ``target_i = Σ_j T_ij y_j`` [b, d] and its adjoint.

    One-hot (``multi_positive=False``): ``target_i = y[p_i]``. Multi-positive: the mean of the
    rows of ``y`` in anchor i's clip.
    """

    def __init__(self, anchor_ids: torch.Tensor, other_ids: torch.Tensor, positive: torch.Tensor, multi_positive: bool):
        self.positive, self.multi_positive = positive, multi_positive
        if multi_positive:
            clips, self.other_slot = torch.unique(other_ids, return_inverse=True)
            self.n_clips = len(clips)
            self.count = torch.bincount(self.other_slot, minlength=self.n_clips).float()
            self.anchor_slot = torch.searchsorted(clips, anchor_ids)

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        if not self.multi_positive:
            return y[self.positive].to(accumulation_dtype(y))
        sums = y.new_zeros((self.n_clips, y.shape[1]), dtype=accumulation_dtype(y))
        sums.index_add_(0, self.other_slot, y.to(sums.dtype))
        return sums[self.anchor_slot] / self.count[self.anchor_slot, None].to(sums.dtype)

    def scatter(self, grad: torch.Tensor, n_others: int) -> torch.Tensor:
        """The adjoint of :meth:`gather`: [b, d] gradient w.r.t. the targets → [N, d] w.r.t. ``y``."""
        if not self.multi_positive:
            return grad.new_zeros((n_others, grad.shape[1])).index_add_(0, self.positive, grad)
        per_clip = grad.new_zeros((self.n_clips, grad.shape[1])).index_add_(0, self.anchor_slot, grad)
        return (per_clip / self.count[:, None].to(grad.dtype))[self.other_slot]


def excluded(anchor_ids: torch.Tensor, other_ids: torch.Tensor, positive: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """[rows, cols] mask of the columns left out of each anchor's denominator: its clip's other captions."""
    column = torch.arange(cols.start, cols.stop, device=other_ids.device)
    return (anchor_ids[rows, None] == other_ids[None, cols]) & (positive[rows, None] != column)


class TiledSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, anchor_ids, other_ids, positive, multi_positive: bool, tile: int):
        masked = not multi_positive and len(torch.unique(other_ids)) < len(other_ids)
        acc = accumulation_dtype(x)
        lse = torch.empty(len(x), dtype=acc, device=x.device)
        for rows in blocks(len(x), tile):
            row = StreamingLSE(rows.stop - rows.start, acc, x.device)
            for cols in blocks(len(y), tile):
                logits = scale * block_products(x, y, rows, cols)
                if masked:
                    logits.masked_fill_(excluded(anchor_ids, other_ids, positive, rows, cols), float("-inf"))
                row.add(logits, 1)
            lse[rows] = row.lse()
        targets = ClipTargets(anchor_ids, other_ids, positive, multi_positive)
        target = targets.gather(y)
        target_logits = scale * (x.to(acc) * target).sum(1)
        ctx.save_for_backward(x, y, scale, anchor_ids, other_ids, positive, lse, target)
        ctx.targets, ctx.masked, ctx.tile = targets, masked, tile
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, scale, anchor_ids, other_ids, positive, lse, target = ctx.saved_tensors
        acc = accumulation_dtype(x)
        grad_x = torch.zeros(x.shape, dtype=acc, device=x.device)
        grad_y = torch.zeros(y.shape, dtype=acc, device=y.device)
        expected_products = torch.zeros((), dtype=acc, device=x.device)  # Σ_ij P_ij x_i·y_j
        for rows in blocks(len(x), ctx.tile):
            for cols in blocks(len(y), ctx.tile):
                products = block_products(x, y, rows, cols)
                prob = (scale * products - lse[rows, None]).exp()
                if ctx.masked:
                    prob.masked_fill_(excluded(anchor_ids, other_ids, positive, rows, cols), 0.0)
                expected_products += add_block_gradients(prob, products, x, y, rows, cols, grad_x, grad_y)
        weight = grad_loss.to(acc) / len(x)
        grad_x = weight * scale * (grad_x - target)
        grad_y = weight * scale * (grad_y - ctx.targets.scatter(x.to(acc), len(y)))
        grad_scale = weight * (expected_products - (x.to(acc) * target).sum())
        return grad_x.to(x.dtype), grad_y.to(y.dtype), grad_scale.to(scale.dtype), None, None, None, None, None


class TiledSymmetricCrossEntropy(torch.autograd.Function):
    """½ [ℓ(a → t) + ℓ(t → a)] over the batch's own pairs (positive of row i: column i) in one
    pass over the blocks: each block updates its rows' and its columns' streaming log-sum-exps,
    and the backward pass uses ``(P^row + P^col)/2`` per block: one block product forward and
    three backward, against two and six for the two directions done separately."""

    @staticmethod
    def forward(ctx, a, t, scale, audio_ids, multi_positive: bool, tile: int):
        n, acc = len(a), accumulation_dtype(a)
        positive = torch.arange(n, device=a.device)
        masked = not multi_positive and len(torch.unique(audio_ids)) < n
        column = StreamingLSE(n, acc, a.device)
        row_lse = torch.empty_like(column.max)
        for rows in blocks(n, tile):
            row = StreamingLSE(rows.stop - rows.start, acc, a.device)
            for cols in blocks(n, tile):
                logits = scale * block_products(a, t, rows, cols)
                if masked:
                    logits.masked_fill_(excluded(audio_ids, audio_ids, positive, rows, cols), float("-inf"))
                row.add(logits, 1)
                column.add(logits, 0, cols)
            row_lse[rows] = row.lse()
        col_lse = column.lse()
        targets = ClipTargets(audio_ids, audio_ids, positive, multi_positive)
        target_products = (a.to(acc) * targets.gather(t)).sum()  # Σ_i a_i·t̄_g(i) = Σ_j t_j·ā_g(j)
        ctx.save_for_backward(a, t, scale, audio_ids, row_lse, col_lse)
        ctx.targets, ctx.masked, ctx.tile = targets, masked, tile
        return (row_lse.sum() + col_lse.sum()) / (2 * n) - scale * target_products / n

    @staticmethod
    def backward(ctx, grad_loss):
        a, t, scale, audio_ids, row_lse, col_lse = ctx.saved_tensors
        n, acc = len(a), accumulation_dtype(a)
        positive = torch.arange(n, device=a.device)
        grad_a = torch.zeros(a.shape, dtype=acc, device=a.device)
        grad_t = torch.zeros(t.shape, dtype=acc, device=t.device)
        expected_products = torch.zeros((), dtype=acc, device=a.device)
        for rows in blocks(n, ctx.tile):
            for cols in blocks(n, ctx.tile):
                products = block_products(a, t, rows, cols)
                logits = scale * products
                prob = ((logits - row_lse[rows, None]).exp() + (logits - col_lse[None, cols]).exp()) / 2
                if ctx.masked:
                    prob.masked_fill_(excluded(audio_ids, audio_ids, positive, rows, cols), 0.0)
                expected_products += add_block_gradients(prob, products, a, t, rows, cols, grad_a, grad_t)
        weight = grad_loss.to(acc) / n
        target_t, target_a = ctx.targets.gather(t), ctx.targets.gather(a)
        grad_scale = weight * (expected_products - (a.to(acc) * target_t).sum())
        grad_a = weight * scale * (grad_a - target_t)
        grad_t = weight * scale * (grad_t - target_a)
        return grad_a.to(a.dtype), grad_t.to(t.dtype), grad_scale.to(scale.dtype), None, None, None


class TiledSigmoidPairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, bias, anchor_ids, other_ids, tile: int):
        total = torch.zeros((), dtype=accumulation_dtype(x), device=x.device)
        for rows in blocks(len(x), tile):
            for cols in blocks(len(y), tile):
                sign = (anchor_ids[rows, None] == other_ids[None, cols]).to(total.dtype) * 2 - 1
                total -= F.logsigmoid(sign * (scale * block_products(x, y, rows, cols) + bias)).sum()
        ctx.save_for_backward(x, y, scale, bias, anchor_ids, other_ids)
        ctx.tile = tile
        return total / len(x)

    @staticmethod
    def backward(ctx, grad_loss):
        x, y, scale, bias, anchor_ids, other_ids = ctx.saved_tensors
        acc = accumulation_dtype(x)
        grad_x = torch.zeros(x.shape, dtype=acc, device=x.device)
        grad_y = torch.zeros(y.shape, dtype=acc, device=y.device)
        grad_scale = torch.zeros((), dtype=acc, device=x.device)
        grad_bias = torch.zeros((), dtype=acc, device=x.device)
        for rows in blocks(len(x), ctx.tile):
            for cols in blocks(len(y), ctx.tile):
                sign = (anchor_ids[rows, None] == other_ids[None, cols]).to(acc) * 2 - 1
                products = block_products(x, y, rows, cols)
                grad_logits = -sign * torch.sigmoid(-sign * (scale * products + bias))  # ∂(−log σ(z(L+β)))/∂L
                grad_scale += (grad_logits * products).sum()
                grad_bias += grad_logits.sum()
                grad_logits = grad_logits.to(x.dtype)
                grad_x[rows] += grad_logits @ y[cols]
                grad_y[cols] += grad_logits.T @ x[rows]
        weight = grad_loss.to(acc) / len(x)
        return (
            (weight * scale * grad_x).to(x.dtype), (weight * scale * grad_y).to(y.dtype),
            (weight * grad_scale).to(scale.dtype), (weight * grad_bias).to(bias.dtype), None, None, None,
        )


def tiled_softmax_cross_entropy(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, anchor_ids: torch.Tensor, other_ids: torch.Tensor,
    positive: torch.Tensor, multi_positive: bool = False, tile: int = 4096,
) -> torch.Tensor:
    """ℓ (module docstring) for anchors ``x`` [b, d] against ``y`` [N, d]; ``positive`` [b]: column of each
    anchor's positive; clip ids ``anchor_ids`` [b], ``other_ids`` [N]; ``scale``: 0-d tensor."""
    check_inputs(x, y, anchor_ids, other_ids, tile)
    scale = torch.as_tensor(scale, dtype=accumulation_dtype(x), device=x.device)
    return TiledSoftmaxCrossEntropy.apply(x, y, scale, anchor_ids, other_ids, positive, multi_positive, tile)


def tiled_symmetric_cross_entropy(
    a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, audio_ids: torch.Tensor, multi_positive: bool = False,
    tile: int = 4096,
) -> torch.Tensor:
    """Symmetric InfoNCE ``½ [ℓ(a → t) + ℓ(t → a)]`` of the pairs (a_i, t_i), [B, d] each, fused in one block pass."""
    check_inputs(a, t, audio_ids, audio_ids, tile)
    if len(a) != len(t):
        raise ValueError(f"tiled loss: a and t must hold the same pairs, got {len(a)} and {len(t)} rows")
    scale = torch.as_tensor(scale, dtype=accumulation_dtype(a), device=a.device)
    return TiledSymmetricCrossEntropy.apply(a, t, scale, audio_ids, multi_positive, tile)


def tiled_sigmoid_pairs(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
    anchor_ids: torch.Tensor, other_ids: torch.Tensor, tile: int = 4096,
) -> torch.Tensor:
    """The sigmoid pair loss (module docstring): the mean over anchors ``x`` [b, d] of their row sums against ``y`` [N, d]."""
    check_inputs(x, y, anchor_ids, other_ids, tile)
    scale = torch.as_tensor(scale, dtype=accumulation_dtype(x), device=x.device)
    bias = torch.as_tensor(bias, dtype=accumulation_dtype(x), device=x.device)
    return TiledSigmoidPairs.apply(x, y, scale, bias, anchor_ids, other_ids, tile)
