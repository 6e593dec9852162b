"""Objectives by name.

An objective is an ``nn.Module`` called as ``objective(a, t, audio_ids)`` with
``a, t``: [B, d] L2-normalised audio and text embeddings (row i of each is pair i) and
``audio_ids``: [B] int64 clip ids (captions of one clip share an id). It returns an
:class:`ObjectiveOutput`. Learnable state (temperature, bias, radius, metric) lives inside
the module, so it is optimised and saved with the model. The trainer knows no objective.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, fp32
    diagnostics: dict[str, float | torch.Tensor] = field(default_factory=dict)  # scalars; tensors stay on device
    plan: torch.Tensor | None = None  # [B, B] detached transport plan (text rows, audio columns), OT objectives only
    # more diagnostics, computed only when called: the trainer calls it every train.drift_every steps
    drift: Callable[[], dict[str, float | torch.Tensor]] | None = None


def diagnostics_as_floats(diagnostics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Python floats for logging, with one device sync for all tensor entries."""
    floats = {k: float(v) for k, v in diagnostics.items() if not isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in diagnostics.items() if isinstance(v, torch.Tensor)}
    if tensors:
        values = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]).tolist()
        floats.update(zip(tensors, values))
    return floats


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(a, t, audio_ids) -> ObjectiveOutput``."""

    def after_optimizer_step(self) -> None:
        """Hook the trainer calls after every optimiser step (e.g. a projection onto a constraint set)."""

    def local_loss(self, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor, rows: slice) -> ObjectiveOutput | None:
        """Optional, for data-parallel training: the loss of one process's anchors ``rows`` of the
        gathered batch (``a``, ``t``, ``audio_ids`` are the whole batch) against all of it, as the
        mean of their per-anchor terms, where the loss is the mean over all anchors; so the row
        blocks' values, weighted by their shares of the batch, sum to ``forward``'s loss.
        None (the default): no such split; every process then calls ``forward`` on the whole batch
        (see ``clarion.train.distributed``)."""
        return None


_REGISTRY: dict[str, Callable[..., Objective]] = {}


def register(name: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    """Register an objective class (or a factory returning one) under ``name``."""

    def add(cls: Callable[..., Objective]) -> Callable[..., Objective]:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def accepts_option(name: str, option: str) -> bool:
    """Whether objective ``name`` takes the keyword ``option`` (a wrapper such as SVR that
    passes ``**base_options`` on declares its base as the factory's ``base`` attribute)."""
    factory = _REGISTRY.get(name)
    while factory is not None:
        parameters = inspect.signature(factory).parameters
        if option in parameters:
            return True
        factory = getattr(factory, "base", None)
    return False


def build_objective(
    name: str,
    options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    embed_dim: int | None = None,
    seed: int | None = None,
) -> Objective:
    """Instantiate the objective registered as ``name`` with keyword ``options``.

    ``batch_size`` (the training batch size), ``embed_dim`` (the embedding width) and ``seed``
    (the training seed) are passed to objectives whose constructor takes them (e.g. a radius
    predictor whose input is a similarity row, a d × d metric, a random negative sampler),
    unless ``options`` sets them.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available())}")
    options = dict(options or {})
    parameters = inspect.signature(_REGISTRY[name]).parameters
    for key, value in (("batch_size", batch_size), ("embed_dim", embed_dim), ("seed", seed)):
        if value is not None and key in parameters:
            options.setdefault(key, value)
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise ValueError(f"bad options for objective {name!r}: {exc}") from exc


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (or fp64 when given fp64), never in half precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def same_audio(audio_ids: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: entry (i, j) is True when pairs i and j share a clip (diagonal included)."""
    return audio_ids[:, None] == audio_ids[None, :]
