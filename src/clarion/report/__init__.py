"""``clarion report``: a single-file HTML report (inline PNGs, no external resources) of one or more runs.

``collect`` reads runs into plain data, ``embeddings`` embeds a manifest and holds the geometry
(PCA, modality gap), ``plots`` draws matplotlib figures (Agg), ``html`` writes the page and
``build`` puts them together.
"""

from .build import build_report

__all__ = ["build_report"]
