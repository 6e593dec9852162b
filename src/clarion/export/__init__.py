"""``clarion export --format FORMAT``: one function per format, named in :data:`FORMATS`.

``clarion`` (the default) is a clarion export directory (:meth:`clarion.api.ClarionModel.save`);
``hf`` a Hugging Face ``ClapModel`` folder (:func:`.hf.export_hf`, CLAP towers only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..api import ClarionModel
from .hf import export_hf


def export_clarion(model: ClarionModel, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """A clarion export directory that ``clarion.load`` reads."""
    return model.save(out, overwrite=overwrite)


FORMATS: dict[str, Callable[[ClarionModel, str | os.PathLike, bool], Path]] = {
    "clarion": export_clarion,
    "hf": export_hf,
}

__all__ = ["FORMATS", "export_clarion", "export_hf"]
