"""Geometry of the embedding space during training.

Drift (SupCLAP Fig. 1): for text anchor i, ``g_i = −∂L/∂t_i`` is its update direction and
``û_i = (a_i − t_i)/‖a_i − t_i‖`` the direction towards its audio. With ``g_i∥ = (g_i·û_i) û_i``
and ``g_i⊥ = g_i − g_i∥``:

    drift_cos          = mean_i cos(g_i, û_i)           (higher = less drift)
    drift_perp_ratio   = mean_i ‖g_i⊥‖ / |g_i·û_i|
    pos_cos_mean / _std = mean / std of the positive-pair cosines a_i·t_i
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drift_diagnostics(loss: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Drift statistics of ``loss`` w.r.t. the text embeddings ``t`` [B, d] (``a`` [B, d] their audios).

    Differentiates the loss only (not the encoders): the graph is kept for the real backward.
    """
    (grad,) = torch.autograd.grad(loss, t, retain_graph=True)
    with torch.no_grad():
        g = -grad.double()
        u = F.normalize((a - t).double(), dim=-1)
        parallel = (g * u).sum(-1)
        perpendicular = (g - parallel[:, None] * u).norm(dim=-1)
        cosine = (a * t).sum(-1).double()
        return {
            "drift_cos": float(F.cosine_similarity(g, u, dim=-1).mean()),
            "drift_perp_ratio": float((perpendicular / parallel.abs().clamp(min=1e-12)).mean()),
            "pos_cos_mean": float(cosine.mean()),
            "pos_cos_std": float(cosine.std()),
        }


def plan_mass_by_pair_kind(plan: torch.Tensor, corrupted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where a [B, B] transport plan (text rows, audio columns) puts its mass, corrupted vs clean pairs.

    ``corrupted`` [B] bool marks the batch pairs whose caption was shuffled. Per row i:
    ``row_mass_i = B Σ_j π_ij`` (the share of the caption's mass the plan transports; < 1 under
    partial OT) and ``pair_mass_i = B π_ii`` (the share sent to its own, labelled audio).
    Returns the means of both over each kind present in the batch.
    """
    b = plan.shape[0]
    corrupted = corrupted.to(plan.device)
    row_mass, pair_mass = b * plan.sum(1), b * plan.diagonal()
    out = {}
    for kind, mask in (("corrupted", corrupted), ("clean", ~corrupted)):
        if bool(mask.any()):
            out[f"ot_row_mass_{kind}"] = row_mass[mask].mean()
            out[f"ot_pair_mass_{kind}"] = pair_mass[mask].mean()
    return out
