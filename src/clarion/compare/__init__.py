"""Experiment grids (objectives × seeds × noise ratios), their runner and results tables."""

from .grid import Cell, Grid, ObjectiveSpec, load_grid, synthetic_preset
from .runner import CellResult, run_grid
from .tables import write_tables

__all__ = ["Cell", "CellResult", "Grid", "ObjectiveSpec", "load_grid", "run_grid", "synthetic_preset", "write_tables"]
