"""Objectives by name.

An objective is an ``nn.Module`` called as ``objective(a, t, audio_ids)`` with
``a, t``: [B, d] L2-normalised audio and text embeddings (row i of each is pair i) and
``audio_ids``: [B] int64 clip ids (captions of one clip share an id). It returns an
:class:`ObjectiveOutput`. Learnable state (temperature, bias, radius, metric) lives inside
the module, so it is optimised and saved with the model. The trainer knows no objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, fp32
    diagnostics: dict[str, float] = field(default_factory=dict)  # logged as-is


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(a, t, audio_ids) -> ObjectiveOutput``."""

    def after_optimizer_step(self) -> None:
        """Hook the trainer calls after every optimiser step (e.g. a projection onto a constraint set)."""


_REGISTRY: dict[str, Callable[..., Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def add(cls: type[Objective]) -> type[Objective]:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_objective(name: str, options: dict[str, Any] | None = None) -> Objective:
    """Instantiate the objective registered as ``name`` with keyword ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available())}")
    try:
        return _REGISTRY[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for objective {name!r}: {exc}") from exc


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (or fp64 when given fp64), never in half precision."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def same_audio(audio_ids: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: entry (i, j) is True when pairs i and j share a clip (diagonal included)."""
    return audio_ids[:, None] == audio_ids[None, :]
