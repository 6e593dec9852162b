"""Geometry of the embedding space: drift and collapse during training, gap/alignment/uniformity in evaluation.

Drift (SupCLAP Fig. 1): for text anchor i, ``g_i = −∂L/∂t_i`` is its update direction and
``û_i = (a_i − t_i)/‖a_i − t_i‖`` the direction towards its audio. With ``g_i∥ = (g_i·û_i) û_i``
and ``g_i⊥ = g_i − g_i∥``:

    drift_cos          = mean_i cos(g_i, û_i)           (higher = less drift)
    drift_perp_ratio   = mean_i ‖g_i⊥‖ / |g_i·û_i|
    pos_cos_mean / _std = mean / std of the positive-pair cosines a_i·t_i

Collapse (docs/methods.md §5): mean pairwise cosine, per-dimension std and effective rank of a batch.
Evaluation (docs/methods.md §6): modality gap ``‖mean(a) − mean(t)‖``, alignment ``E‖a_i − t_i‖²``,
uniformity ``log E_{i≠j} exp(−2‖x_i − x_j‖²)`` (Wang & Isola 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drift_diagnostics(loss: torch.Tensor, a: torch.Tensor, t: torch.Tensor, reduce=None) -> dict[str, float]:
    """Drift statistics of ``loss`` w.r.t. the text embeddings ``t`` [B, d] (``a`` [B, d] their audios).

    Differentiates the loss only (not the encoders): the graph is kept for the real backward.
    ``reduce`` maps the gradient to the one to analyse (data-parallel training: the mean over
    the processes, whose losses average to the batch loss).
    """
    (grad,) = torch.autograd.grad(loss, t, retain_graph=True)
    if reduce is not None:
        grad = reduce(grad)
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


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of ``x`` [n, d]: ``exp(−Σ_k p_k log p_k)``, ``p_k = σ_k / Σ σ``.

    1 for identical rows, k for k orthogonal rows of equal norm; uncentred, so a batch collapsed
    onto one direction scores ≈ 1.
    """
    sigma = torch.linalg.svdvals(x.double())
    p = sigma / sigma.sum().clamp(min=1e-300)
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the n(n−1) ordered pairs of distinct rows of ``x`` [n, d] (n ≥ 2)."""
    u = F.normalize(x.double(), dim=-1)
    n = len(u)
    total = u.sum(0)
    return ((total @ total) - (u * u).sum()) / (n * (n - 1))


def collapse_diagnostics(a: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Feature-collapse statistics of a batch of audio ``a`` and text ``t`` embeddings [B, d] (B ≥ 2).

    Per modality m ∈ {audio, text}:
        ``collapse_{m}_cos``   mean pairwise cosine between distinct items (→ 1 when collapsed)
        ``collapse_{m}_std``   mean per-dimension std of the L2-normalised embeddings, times √d
                               (≈ 1 for directions spread uniformly on the sphere, → 0 when collapsed)
        ``collapse_{m}_rank``  effective rank of the batch (→ 1 when collapsed; ≤ min(B, d))
    """
    out = {}
    with torch.no_grad():
        for name, x in (("audio", a), ("text", t)):
            u = F.normalize(x.detach().double(), dim=-1)
            out[f"collapse_{name}_cos"] = float(mean_pairwise_cosine(u))
            out[f"collapse_{name}_std"] = float(u.std(0).mean() * u.shape[1] ** 0.5)
            out[f"collapse_{name}_rank"] = float(effective_rank(u))
    return out


def modality_gap(audio: torch.Tensor, text: torch.Tensor) -> float:
    """``‖mean(a) − mean(t)‖₂`` over unit-norm audio [n_a, d] and text [n_t, d] embeddings (m-LTM's Δgap)."""
    return float((audio.double().mean(0) - text.double().mean(0)).norm())


def alignment(audio: torch.Tensor, text: torch.Tensor) -> float:
    """Wang & Isola alignment ``E‖a_i − t_i‖²`` over paired rows of audio and text [n, d] (lower = better aligned)."""
    return float((audio.double() - text.double()).pow(2).sum(-1).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> float:
    """Wang & Isola uniformity ``log E_{i≠j} exp(−t ‖x_i − x_j‖²)`` over the distinct pairs of ``x`` [n, d] (n ≥ 2).

    −2t·2 = −8 (t = 2) for two antipodal points, 0 for one repeated point; lower = more uniform.
    Computed in row chunks, so memory is ``chunk × n``.
    """
    x = x.double()
    n = len(x)
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = x.pow(2).sum(-1)
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        d2 = (sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T).clamp(min=0)
        kernel = torch.exp(-t * d2)
        total += kernel.sum() - kernel.diagonal(offset=start).sum()  # drop i = j
    return float(torch.log(total / (n * (n - 1))))


def embedding_geometry(audio: torch.Tensor, text: torch.Tensor, caption_clip: torch.Tensor) -> dict[str, float]:
    """Modality gap, alignment (each caption with its clip) and per-modality uniformity of an evaluation set.

    ``audio`` [n_clips, d], ``text`` [n_captions, d] (unit norm), ``caption_clip`` [n_captions] the
    row of each caption's clip in ``audio``.
    """
    out = {"modality_gap": modality_gap(audio, text), "alignment": alignment(audio[caption_clip], text)}
    if len(audio) >= 2:
        out["uniformity_audio"] = uniformity(audio)
    if len(text) >= 2:
        out["uniformity_text"] = uniformity(text)
    return out
