"""``clarion export --format FORMAT``: one function per format, named in :data:`FORMATS`.

``clarion`` (the default) is a clarion export directory (:meth:`clarion.api.ClarionModel.save`);
``hf`` a Hugging Face ``ClapModel`` folder (:func:`.hf.export_hf`, CLAP towers only); ``onnx``
each tower as ONNX, checked against torch under onnxruntime (:func:`.onnx.export_onnx`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..api import ClarionModel
from .hf import export_hf
from .onnx import export_onnx


def export_clarion(model: ClarionModel, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """A clarion export directory that ``clarion.load`` reads."""
    return model.save(out, overwrite=overwrite)


def export_onnx_folder(model: ClarionModel, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``audio.onnx`` + ``text.onnx`` + tokenizer; the parity record is ``OUT/onnx.json``."""
    export_onnx(model, out, overwrite=overwrite)
    return Path(out)


FORMATS: dict[str, Callable[[ClarionModel, str | os.PathLike, bool], Path]] = {
    "clarion": export_clarion,
    "hf": export_hf,
    "onnx": export_onnx_folder,
}

__all__ = ["FORMATS", "export_clarion", "export_hf", "export_onnx", "export_onnx_folder"]
