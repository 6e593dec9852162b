"""What the checkpoint converters share: a safe ``torch.load`` and the strict key check.

``read_state_dict(path)`` loads with ``weights_only=True`` (no pickled code runs), takes the
``state_dict`` entry when there is one (training checkpoints) and strips the ``module.`` prefix
that ``DistributedDataParallel`` adds. ``check_keys`` compares the keys a converter produced with
the ones its target model has and raises one :class:`ConversionError` that lists every unknown,
missing and mis-shaped tensor.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (not a checkpoint, another architecture, keys that do
    not match); the message says which file and what is wrong."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` of a PyTorch checkpoint file, loaded with ``weights_only=True`` on the CPU.

    Accepts a bare state dict or a training checkpoint holding one under ``state_dict`` (or
    ``model``); a leading ``module.`` (DistributedDataParallel) is removed from every key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as exc:
        if not zipfile.is_zipfile(path):
            raise ConversionError(f"{path}: not a PyTorch checkpoint (torch.save's zip archive), or a truncated one") from None
        if isinstance(exc, pickle.UnpicklingError):
            why = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
            why = why[why.find("Unsupported global"):].split(" was not")[0] if why else ""
            raise ConversionError(f"{path}: holds objects other than tensors and plain containers, which "
                                  f"weights_only=True refuses to load (no pickled code is run){': ' + why if why else ''}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: a damaged PyTorch checkpoint ({first[:200]})") from None
    if isinstance(obj, Mapping):
        for name in ("state_dict", "model"):
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _listing(title: str, keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:limit])
    more = f"\n  … and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}):\n  {shown}{more}"


def check_keys(
    source: str,
    unknown: Iterable[str],
    converted: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    optional: Iterable[str] = (),
) -> None:
    """Raise one :class:`ConversionError` listing every problem, or return.

    ``unknown``: checkpoint keys no rule maps; ``converted``: the converter's output, by target
    name; ``target``: the target model's ``state_dict()``; ``optional``: target keys the model
    computes itself (index buffers), which the checkpoint may leave out.
    """
    unknown = set(unknown) | {k for k in converted if k not in target}
    missing = set(target) - set(converted) - set(optional)
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    parts = []
    if unknown:
        parts.append(_listing("unknown keys in the checkpoint", unknown))
    if missing:
        parts.append(_listing("missing keys (the model needs them)", missing))
    if shapes:
        parts.append(_listing("shape mismatches", shapes))
    if parts:
        raise ConversionError(f"{source}: the checkpoint does not match the model it was read as\n" + "\n".join(parts))
