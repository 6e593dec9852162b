"""Support Vector Regularization (SupCLAP), docs/methods.md §3, over an InfoNCE or SigLIP base.

For pair i, with ``û_i = (a_i − t_i)/‖a_i − t_i‖`` the pull direction of the text anchor, the
text-side support vector is ``t_i^sup = t_i + R_i û_i`` (not re-normalised) and the audio-side
one ``a_i^sup = a_i − R'_i û_i``. The SVR term is the base loss with the support vectors as
anchors (gradients flow through û), so

    ∂t^sup/∂t = I − (R/‖a−t‖)(I − ûûᵀ):

the component of the anchor's gradient parallel to û is kept and the perpendicular one (the
negatives' sideways push that makes training drift) is scaled by the *damping factor*
``1 − R/‖a−t‖``, which lies in [0, 1] exactly when ``0 ≤ R ≤ ‖a−t‖`` (above, the perpendicular
part is flipped; below 0, amplified).

    L = L_base + α Σ_sides L_svr^side + β Σ_sides L_cons^side          (bi_reduce="sum")
    L_cons^side = mean_i [ReLU(R_i − sg‖a_i − t_i‖) + ReLU(−R_i)]      (sg: stop-gradient)

**Radius bound** (``radius_bound``):

- ``"sigmoid"`` (default): ``R_i = σ(z_i) · sg‖a_i − t_i‖``, z_i the radius module's output (one
  learnable scalar per side for ``radius="static"``, the predictor's output per anchor for
  ``"dynamic"``). The ratio ``R/‖a−t‖ = σ(z)`` lies in (0, 1), so the damping factor is in (0, 1)
  by construction and the constraint term is identically 0 (both hinges inactive, zero gradient):
  **β has no effect under ``sigmoid``**. The distance is detached, so R reads the geometry without
  moving it. Why a bound at all: ∂L_svr/∂R < 0 for almost every anchor (a larger radius always
  lowers the support vectors' loss), so an unbounded radius runs past ‖a−t‖ (docs/methods.md §3,
  "Bounding"); under ``sigmoid`` that pressure drives σ(z) towards 1 (full damping) but never past.
  ``init_ratio`` is the starting σ(z).
- ``"hinge"``: ``R_i = z_i`` (the radius itself is learned; ``init_radius`` its start), held in
  [0, ‖a−t‖] only by the β-weighted constraint term: the parameterisation before the bound,
  kept for the ablation. The constraint's distance is detached here too: it trains the radius
  and never pushes a positive pair apart.

**Sides** (``sides``): ``"uni"``: text side only; ``"bi"`` (default): both. ``bi_reduce``
combines the two sides' SVR and constraint terms: ``"sum"`` (default) adds them, so α (and β) is
the weight of *each* side's term, the same meaning as in one-sided SVR, and bi-SVR is uni-SVR
plus the audio-side term; ``"mean"`` averages them (weight α/2 per side; clarion's behaviour
before the option existed).

**Radius modules**: a learnable scalar per side (``radius="static"``) or a per-anchor prediction
(``"dynamic"``) by a 3-layer MLP from the anchor's detached cosine row (positive first, the other
clips' entries sorted descending, padded with −1 to the batch width).

**Diagnostics**: ``loss_base``, ``loss_svr``, ``loss_constraint`` every step; on demand
(:attr:`ObjectiveOutput.drift`, which the trainer calls every ``train.drift_every`` steps), per
side ∈ {text, audio}: ``radius_{side}_mean`` / ``_std``, ``svr_ratio_{side}`` = mean_i R_i/‖a_i−t_i‖,
``svr_over_share_{side}`` = share of anchors with R_i > ‖a_i−t_i‖ and ``svr_damping_{side}`` =
mean_i (1 − R_i/‖a_i−t_i‖).

With a tiled base (``tile=T``) the base and SVR terms run blockwise in O(B·d + T²) memory; the
dynamic radius reads whole similarity rows (O(B²)), so tiling takes the static radius.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .infonce import InfoNCE
from .registry import Objective, ObjectiveOutput, at_least_fp32, register, same_audio
from .siglip import SigLIP

RADIUS_KINDS = ("static", "dynamic")
RADIUS_BOUNDS = ("sigmoid", "hinge")
SIDES = ("uni", "bi")
BI_REDUCE = ("sum", "mean")
SIDE_NAMES = ("text", "audio")
EPS = 1e-12  # F.normalize's default floor on ‖a − t‖


def pull_direction(anchors: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(û, ‖targets − anchors‖)`` for anchors, targets [..., B, d]: û [..., B, d] the unit pull
    direction (0 where the two coincide, as ``F.normalize``), the distance [..., B]."""
    diff = targets - anchors
    distance = diff.norm(dim=-1)
    return diff / distance.clamp(min=EPS)[..., None], distance


def support_vectors(anchors: torch.Tensor, targets: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``anchors + radius · (targets − anchors)/‖targets − anchors‖`` for [..., B, d], radius [..., B]."""
    direction, _ = pull_direction(anchors, targets)
    return anchors + radius[..., None] * direction


def radius_constraint(radius: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """mean over the last dim of ``ReLU(R − sg‖a − t‖) + ReLU(−R)`` for radius [..., B], distance [..., B]
    (or broadcastable): shape [...]; zero exactly when 0 ≤ R_i ≤ ‖a_i − t_i‖. The distance is
    detached: the term trains the radius only."""
    return (F.relu(radius - distance.detach()) + F.relu(-radius)).mean(-1)


def bounded_radius(z: torch.Tensor, distance: torch.Tensor, bound: str) -> torch.Tensor:
    """R [..., B] from the radius modules' output z [..., B] and the distance ‖a − t‖ [..., B]:
    ``σ(z) · sg(distance)`` for ``"sigmoid"``, z itself for ``"hinge"``."""
    if bound == "sigmoid":
        return torch.sigmoid(z) * distance.detach()
    return z


def radius_statistics(radius: torch.Tensor, distance: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per side (rows of radius and distance [k, B], text first), detached 0-dim tensors:
    ``radius_{side}_mean`` / ``_std``, ``svr_ratio_{side}`` = mean_i R_i/‖a_i − t_i‖,
    ``svr_over_share_{side}`` = mean_i [R_i > ‖a_i − t_i‖] and ``svr_damping_{side}`` =
    mean_i (1 − R_i/‖a_i − t_i‖), the factor on the perpendicular gradient."""
    radius, distance = radius.detach(), distance.detach()
    ratio = radius / distance.clamp(min=EPS)
    over = (radius > distance).to(radius.dtype).mean(-1)
    out = {}
    for k, side in enumerate(SIDE_NAMES[: len(radius)]):
        out[f"radius_{side}_mean"], out[f"radius_{side}_std"] = radius[k].mean(), radius[k].std()
        out[f"svr_ratio_{side}"] = ratio[k].mean()
        out[f"svr_over_share_{side}"] = over[k]
        out[f"svr_damping_{side}"] = 1 - ratio[k].mean()
    return out


def sort_descending(x: torch.Tensor) -> torch.Tensor:
    """``x.sort(dim=-1, descending=True).values`` for a tensor that needs no gradient. On the CPU
    numpy's vectorised sort gives the same values 10–40× faster than torch's (B = 64…1024)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=-1)).flip(-1)
    return x.sort(dim=-1, descending=True).values


def similarity_features(cosine: torch.Tensor, audio_ids: torch.Tensor, width: int) -> torch.Tensor:
    """[..., B, width] radius-predictor input from anchor-major cosine matrices [..., B, B] (detached).

    Row i: the positive ``cosine[i, i]``, then the entries of other clips sorted descending,
    then −1 padding (same-clip entries and missing columns of a short batch). The result does
    not depend on the order of the batch's negatives.
    """
    b = len(audio_ids)
    if b > width:
        raise ValueError(f"batch of {b} is wider than the radius predictor's input ({width}); set batch_size")
    cosine = cosine.detach()
    negatives = sort_descending(cosine.masked_fill(same_audio(audio_ids), -1.0))[..., : b - 1]
    parts = [cosine.diagonal(dim1=-2, dim2=-1)[..., None], negatives]
    if width > b:
        parts.append(cosine.new_full((*cosine.shape[:-1], width - b), -1.0))
    return torch.cat(parts, dim=-1)


class StaticRadius(nn.Module):
    """One learnable value z shared by all anchors of a side (the radius under ``hinge``, its
    sigmoid's logit under ``sigmoid``)."""

    def __init__(self, init: float = 0.1):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self, batch: int) -> torch.Tensor:
        return self.value.expand(batch)


class DynamicRadius(nn.Module):
    """Per-anchor z [..., B] from similarity rows [..., B, width]:
    Linear(width, h) → ReLU → Linear(h, h) → ReLU → Linear(h, 1).

    The last layer starts at zero weight and bias ``init`` so every z begins at ``init``.
    """

    def __init__(self, width: int, hidden: int = 256, init: float = 0.1):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(-1)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


class SupportVectorRegularized(Objective):
    """``base`` loss + α SVR term + β radius constraint (module docstring).

    One cosine matrix ``a tᵀ`` feeds the base loss and the radius predictor; the sides' support
    vectors are made in one batched pass over stacked ``[k, B, d]`` anchors (k = 1 or 2 sides)
    and their SVR terms are one batched ``[k, B, B]`` loss: the cost over the base is the support
    vectors' own similarity matrices (one more ``B×B×d`` product per side, forward and backward)
    and, for the dynamic radius, the predictor MLP and one sort of each similarity row.
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
        radius_bound: str = "sigmoid",
        bi_reduce: str = "sum",
        init_ratio: float = 0.1,
    ):
        super().__init__()
        self.sides = _choice("sides", sides, SIDES)
        self.radius_kind = _choice("radius", radius, RADIUS_KINDS)
        self.radius_bound = _choice("radius_bound", radius_bound, RADIUS_BOUNDS)
        self.bi_reduce = _choice("bi_reduce", bi_reduce, BI_REDUCE)
        if radius == "dynamic" and getattr(base, "tile", None):
            raise ValueError("the dynamic radius reads whole [B, B] similarity rows; with tile= use radius=static")
        if radius == "dynamic" and not batch_size:
            raise ValueError("the dynamic radius needs batch_size (the width of its similarity-row input)")
        if radius_bound == "sigmoid" and not 0.0 < init_ratio < 1.0:
            raise ValueError(f"init_ratio (the starting R/‖a−t‖ under radius_bound=sigmoid) must be in (0, 1), got {init_ratio}")
        self.base = base
        self.alpha, self.beta = alpha, beta
        self.width = batch_size or 0
        init = math.log(init_ratio / (1 - init_ratio)) if radius_bound == "sigmoid" else init_radius

        def make() -> nn.Module:
            return StaticRadius(init) if radius == "static" else DynamicRadius(batch_size, hidden, init)

        self.text_radius = make()
        self.audio_radius = make() if sides == "bi" else None

    @property
    def radius_modules(self) -> list[nn.Module]:
        return [self.text_radius] + ([self.audio_radius] if self.audio_radius is not None else [])

    def radius_logits(self, similarity: torch.Tensor | None, audio_ids: torch.Tensor) -> torch.Tensor:
        """z [k, B] of the radius modules, text side first (rows of ``similarity.T``), then audio
        (rows of ``similarity``); the static radius does not read ``similarity``."""
        modules = self.radius_modules
        if self.radius_kind == "static":
            return torch.stack([m(len(audio_ids)) for m in modules])
        rows = [similarity.T, similarity][: len(modules)]
        features = similarity_features(torch.stack(rows), audio_ids, self.width).to(similarity.dtype)
        return torch.stack([m(f) for m, f in zip(modules, features)])

    def radii(self, similarity: torch.Tensor | None, audio_ids: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """R [k, B] per side (text first) given ‖a_i − t_i‖ [k, B] (or [B])."""
        return bounded_radius(self.radius_logits(similarity, audio_ids), distance, self.radius_bound)

    def reduce_sides(self, per_side: torch.Tensor) -> torch.Tensor:
        """Σ (``bi_reduce="sum"``) or mean (``"mean"``) of per-side terms [k]."""
        return per_side.sum() if self.bi_reduce == "sum" else per_side.mean()

    def forward(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor) -> ObjectiveOutput:
        a, t = at_least_fp32(a), at_least_fp32(t)
        if getattr(self.base, "tile", None):
            out, similarity = self.base(a, t, audio_ids), None
        else:
            similarity = a @ t.T
            out = self.base.similarity_loss(similarity, audio_ids)
        if self.audio_radius is None:
            anchors, others = t[None], a[None]
        else:
            anchors, others = torch.stack([t, a]), torch.stack([a, t])
        direction, distance = pull_direction(anchors, others)  # [k, B, d], [k, B]
        radius = self.radii(similarity, audio_ids, distance)
        support = anchors + radius[..., None] * direction
        k = len(anchors)
        svr = self.base.anchor_loss(support, others, audio_ids)  # the mean over the k sides
        svr = svr * k if self.bi_reduce == "sum" else svr
        loss = out.loss + self.alpha * svr
        if self.radius_bound == "hinge":
            cons = self.reduce_sides(radius_constraint(radius, distance))
            loss = loss + self.beta * cons
        else:  # 0 < R < ‖a − t‖ by construction: both hinges are inactive
            cons = torch.zeros((), dtype=loss.dtype, device=loss.device)
        diagnostics = dict(out.diagnostics, loss_base=out.loss.detach(), loss_svr=svr.detach(), loss_constraint=cons.detach())
        radius_d, distance_d = radius.detach(), distance.detach()
        return ObjectiveOutput(loss, diagnostics, drift=lambda: radius_statistics(radius_d, distance_d))


def _with_base(base_cls: type[Objective]):
    def build(radius="dynamic", sides="bi", alpha=1.0, beta=0.01, init_radius=0.1, hidden=256, batch_size=None,
              radius_bound="sigmoid", bi_reduce="sum", init_ratio=0.1, **base_options):
        return SupportVectorRegularized(base_cls(**base_options), radius, sides, alpha, beta, init_radius, hidden, batch_size,
                                        radius_bound, bi_reduce, init_ratio)

    build.base = base_cls  # the options it passes on (registry.accepts_option)
    return build


register("infonce+svr")(_with_base(InfoNCE))
register("siglip+svr")(_with_base(SigLIP))
