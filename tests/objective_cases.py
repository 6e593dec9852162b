"""The objectives that blockwise paths (tiled, fused) must reproduce, and their loss and gradients."""

from __future__ import annotations

import torch

BLOCKWISE_OBJECTIVES = [
    ("infonce", {}),
    ("infonce", {"multi_positive": True}),
    ("siglip", {}),
    ("infonce+svr", {"radius": "static"}),
    ("siglip+svr", {"radius": "static", "sides": "uni"}),
]


def loss_and_grads(objective, a: torch.Tensor, t: torch.Tensor, ids: torch.Tensor):
    """(detached loss, gradients w.r.t. a, t and every trainable parameter of ``objective``)."""
    a, t = a.clone().requires_grad_(), t.clone().requires_grad_()
    out = objective(a, t, ids)
    params = [p for p in objective.parameters() if p.requires_grad]
    return out.loss.detach(), torch.autograd.grad(out.loss, [a, t, *params])
