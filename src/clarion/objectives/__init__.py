"""Training objectives over embeddings, registered by name (see :mod:`.registry`)."""

from . import infonce, mltm, siglip, svr, triplet  # noqa: F401  (registers the objectives)
from .registry import Objective, ObjectiveOutput, accepts_option, available, build_objective, diagnostics_as_floats, register, same_audio

__all__ = ["Objective", "ObjectiveOutput", "accepts_option", "available", "build_objective", "diagnostics_as_floats", "register", "same_audio"]
