"""Support Vector Regularization (SupCLAP), docs/methods.md §3, over an InfoNCE or SigLIP base.

For pair i, with ``û_i = (a_i − t_i)/‖a_i − t_i‖`` the pull direction of the text anchor, the
text-side support vector is ``t_i^sup = t_i + R_i û_i`` (not re-normalised) and the audio-side
one ``a_i^sup = a_i − R'_i û_i``. The SVR term is the base loss with the support vectors as
anchors (gradients flow through û), so

    ∂t^sup/∂t = I − (R/‖a−t‖)(I − ûûᵀ):

the component of the anchor's gradient parallel to û is kept and the perpendicular one (the
negatives' sideways push that makes training drift) is scaled by ``1 − R/‖a−t‖``.

    L = L_base + α L_svr + β L_cons,   L_cons = mean_i [ReLU(R_i − ‖a_i − t_i‖) + ReLU(−R_i)]

``sides="uni"``: text side only; ``"bi"`` (default): both, L_svr and L_cons averaged over the
two sides **(choice)**. The radius is a learnable scalar per side (``radius="static"``, init 0.1)
or predicted per sample (``"dynamic"``) by a 3-layer MLP from the anchor's detached cosine row
(positive first, the other clips' entries sorted descending, padded with −1 to the batch width).

With a tiled base (``tile=T``) the base and SVR terms run blockwise in O(B·d + T²) memory; the
dynamic radius reads whole similarity rows (O(B²)), so tiling takes the static radius.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .infonce import InfoNCE
from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio
from .siglip import SigLIP


def support_vectors(anchors: torch.Tensor, targets: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``anchors + radius · (targets − anchors)/‖targets − anchors‖``; [B, d], radius [B]."""
    direction = F.normalize(targets - anchors, dim=-1, eps=1e-12)
    return anchors + radius[:, None] * direction


def radius_constraint(radius: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """mean [ReLU(R − ‖a − t‖) + ReLU(−R)] over radius [..., B] and distance [B]: zero exactly when 0 ≤ R_i ≤ ‖a_i − t_i‖."""
    return (F.relu(radius - distance) + F.relu(-radius)).mean()


def similarity_features(cosine: torch.Tensor, audio_ids: torch.Tensor, width: int) -> torch.Tensor:
    """[..., B, width] radius-predictor input from anchor-major cosine matrices [..., B, B].

    Row i: the positive ``cosine[i, i]``, then the entries of other clips sorted descending,
    then −1 padding (same-clip entries and missing columns of a short batch). The result does
    not depend on the order of the batch's negatives.
    """
    b = len(audio_ids)
    if b > width:
        raise ValueError(f"batch of {b} is wider than the radius predictor's input ({width}); set batch_size")
    negatives = cosine.masked_fill(same_audio(audio_ids), -1.0).sort(dim=-1, descending=True).values[..., : b - 1]
    features = torch.full((*cosine.shape[:-1], width), -1.0, dtype=cosine.dtype, device=cosine.device)
    features[..., 0] = cosine.diagonal(dim1=-2, dim2=-1)
    features[..., 1:b] = negatives
    return features


class StaticRadius(nn.Module):
    """One learnable radius shared by all anchors of a side."""

    def __init__(self, init: float = 0.1):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self, batch: int) -> torch.Tensor:
        return self.value.expand(batch)


class DynamicRadius(nn.Module):
    """Per-anchor radius from its similarity row: Linear(width, h) → ReLU → Linear(h, h) → ReLU → Linear(h, 1).

    The last layer starts at zero weight and bias ``init`` so every radius begins at ``init``.
    """

    def __init__(self, width: int, hidden: int = 256, init: float = 0.1):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


class SupportVectorRegularized(Objective):
    """``base`` loss + α SVR term + β radius constraint (module docstring).

    One cosine matrix ``a tᵀ`` feeds the base loss and the radius predictor, and the two sides'
    SVR terms are one batched ``[2, B, B]`` loss: the cost over the base is the support vectors'
    own similarity matrices (one more ``B×B×d`` product per side, forward and backward).
    """

    def __init__(
        self,
        base: Objective,
        radius: str = "dynamic",
        sides: str = "bi",
        alpha: float = 1.0,
        beta: float = 0.01,
        init_radius: float = 0.1,
        hidden: int = 256,
        batch_size: int | None = None,
    ):
        super().__init__()
        if sides not in ("uni", "bi"):
            raise ValueError(f"sides must be 'uni' or 'bi', got {sides!r}")
        if radius not in ("static", "dynamic"):
            raise ValueError(f"radius must be 'static' or 'dynamic', got {radius!r}")
        if radius == "dynamic" and getattr(base, "tile", None):
            raise ValueError("the dynamic radius reads whole [B, B] similarity rows; with tile= use radius=static")
        if radius == "dynamic" and not batch_size:
            raise ValueError("the dynamic radius needs batch_size (the width of its similarity-row input)")
        self.base = base
        self.radius_kind, self.sides, self.alpha, self.beta = radius, sides, alpha, beta
        self.width = batch_size or 0

        def make() -> nn.Module:
            return StaticRadius(init_radius) if radius == "static" else DynamicRadius(batch_size, hidden, init_radius)

        self.text_radius = make()
        self.audio_radius = make() if sides == "bi" else None

    def radii(self, similarity: torch.Tensor | None, audio_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per-side radius [B]: text side first (rows of ``similarity.T``), then audio (rows of ``similarity``;
        the static radius does not read it)."""
        modules = [self.text_radius] + ([self.audio_radius] if self.audio_radius is not None else [])
        if self.radius_kind == "static":
            return [m(len(audio_ids)) for m in modules]
        rows = [similarity.T, similarity][: len(modules)]
        features = similarity_features(torch.stack(rows).detach(), audio_ids, self.width)
        return [m(f) for m, f in zip(modules, features.to(similarity.dtype))]

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        a, t = at_least_fp32(a), at_least_fp32(t)
        if getattr(self.base, "tile", None):
            out, radius = self.base(a, t, audio_ids), self.radii(None, audio_ids)
        else:
            similarity = a @ t.T
            out, radius = self.base.similarity_loss(similarity, audio_ids), self.radii(similarity, audio_ids)
        anchors, others = [support_vectors(t, a, radius[0])], [a]
        if len(radius) == 2:
            anchors.append(support_vectors(a, t, radius[1]))
            others.append(t)
        svr = self.base.anchor_loss(torch.stack(anchors), torch.stack(others), audio_ids)
        stacked = torch.stack(radius)
        cons = radius_constraint(stacked, (a - t).norm(dim=-1))
        loss = out.loss + self.alpha * svr + self.beta * cons
        detached = stacked.detach()
        diagnostics = dict(out.diagnostics, loss_base=out.loss.detach(), loss_svr=svr.detach(), loss_constraint=cons.detach())
        for side, r in zip(("text", "audio"), detached):
            diagnostics[f"radius_{side}_mean"], diagnostics[f"radius_{side}_std"] = r.mean(), r.std()
        return ObjectiveOutput(loss, diagnostics)


def _with_base(base_cls: type[Objective]):
    def build(radius="dynamic", sides="bi", alpha=1.0, beta=0.01, init_radius=0.1, hidden=256, batch_size=None, **base_options):
        return SupportVectorRegularized(base_cls(**base_options), radius, sides, alpha, beta, init_radius, hidden, batch_size)

    return build


register("infonce+svr")(_with_base(InfoNCE))
register("siglip+svr")(_with_base(SigLIP))
