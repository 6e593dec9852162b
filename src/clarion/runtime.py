"""Where tensors run: the device a name asks for, and the autocast context for it.

Bottom layer (torch only): the trainer, evaluation, the API, the server and the CLI all need these.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other name as torch reads it.
    Raises :class:`RuntimeError` for a CUDA device on a machine without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_precision(precision: str, amp: bool, device: torch.device) -> str:
    """The arithmetic a training step runs in: ``train.precision`` when it is not ``auto``
    (``train.amp`` is then ignored), else what ``train.amp`` always meant: ``bf16`` on CUDA when
    ``amp`` is true, ``fp32`` otherwise."""
    if precision != "auto":
        return precision
    return "bf16" if amp and device.type == "cuda" else "fp32"


def precision_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to bf16 or fp16 on ``device`` (CPU included) for ``precision`` ``bf16``/``fp16``;
    a no-op context for ``fp32``. Raises :class:`RuntimeError` where torch has no autocast for the device."""
    if precision == "fp32":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if not torch.amp.is_autocast_available(device.type):
        raise RuntimeError(f"train.precision={precision}: torch has no autocast for device {device.type!r}; use fp32")
    return torch.autocast(device.type, dtype=dtype)
