"""clarion: contrastive language-audio pretraining with InfoNCE, SigLIP, SVR, m-LTM and triplet objectives."""

from .version import __version__  # noqa: F401  (clarion.__version__)

_API = ("load", "ClarionModel", "Classification")


def __getattr__(name: str):
    # `clarion.load` without importing torch at `import clarion` (the CLI stays quick to start)
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clarion' has no attribute {name!r}")
