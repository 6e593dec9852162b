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
