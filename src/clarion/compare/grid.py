"""Experiment grids: objectives × seeds × noise ratios, from a YAML file or a preset.

A grid file (paths relative to the file)::

    data: {train: data/train.csv, val: data/val.csv, test: data/test.csv}   # or data: DIR (…/train.csv, …)
    recipe: recipe.yaml            # optional training config; `overrides` apply on top
    overrides: [train.epochs=4]
    seeds: [0, 1, 2]
    noise: [0.0, 0.4]
    objectives:
      - {label: infonce, name: infonce}
      - {label: mltm_partial, name: mltm, options: {partial_mass: {0.0: 0.95, 0.4: 0.6}}}
      - {label: infonce+augment, name: infonce, overrides: [augment.mixup_alpha=0.5]}

An entry's own ``overrides`` apply after the grid's, to that entry's cells only (a variant of the
recipe, such as augmentation, compared like an objective). An option whose value is a mapping from noise ratios to values takes, in each cell, the value of
that cell's ratio (above: partial OT keeps mass 1 − p). ``label`` defaults to ``name``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError

# The `make demo` recipe (configs/demo.yaml), inlined so the preset works from an installed package.
DEMO_RECIPE = [
    "data.pairs=one_per_clip", "data.num_workers=1", "train.batch_size=64", "train.lr=0.001", "train.warmup_steps=30",
]
# SVR and partial OT spelled out with their defaults (bounded radius, α per side, the paper's
# uniform target), so the preset keeps its meaning if a default changes.
SVR_DEFAULTS = {"radius": "dynamic", "sides": "bi", "radius_bound": "sigmoid", "bi_reduce": "sum"}
SYNTHETIC_OBJECTIVES = [
    {"label": "infonce", "name": "infonce"},
    {"label": "infonce+svr", "name": "infonce+svr", "options": dict(SVR_DEFAULTS)},
    {"label": "siglip", "name": "siglip"},
    {"label": "siglip+svr", "name": "siglip+svr", "options": dict(SVR_DEFAULTS)},
    {"label": "mltm", "name": "mltm", "options": {"metric": "euclidean"}},
    {"label": "mltm_projected", "name": "mltm", "options": {"metric": "projected"}},
    {"label": "mltm_partial", "name": "mltm",
     "options": {"metric": "euclidean", "partial_mass": {0.0: 0.95, 0.4: 0.6}, "partial_target": "uniform"}},
    {"label": "triplet_semihard", "name": "triplet", "options": {"sampling": "semihard"}},
    {"label": "triplet_hard", "name": "triplet", "options": {"sampling": "hard"}},
]


@dataclass(frozen=True)
class ObjectiveSpec:
    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # config overrides of this entry's cells, after the grid's

    def options_at(self, noise: float) -> dict[str, Any]:
        """The options of a cell with noise ratio ``noise`` (noise-keyed mappings resolved)."""
        resolved = {}
        for key, value in self.options.items():
            if isinstance(value, dict) and value and all(isinstance(k, (int, float)) for k in value):
                match = [v for k, v in value.items() if abs(float(k) - noise) < 1e-9]
                if not match:
                    raise ConfigError(f"objective {self.label}: option {key} has no value for noise ratio {noise}")
                value = match[0]
            resolved[key] = value
        return resolved


@dataclass(frozen=True)
class Cell:
    objective: ObjectiveSpec
    noise: float
    seed: int

    @property
    def key(self) -> str:
        return f"noise{self.noise:g}/{self.objective.label}/seed{self.seed}"


@dataclass
class Grid:
    train: Path
    val: Path | None
    test: Path
    objectives: list[ObjectiveSpec]
    seeds: list[int]
    noise: list[float]
    recipe: Path | None = None
    overrides: list[str] = field(default_factory=list)
    synth: dict[str, Any] | None = None  # `clarion synth` settings when the data is generated first

    def cells(self) -> list[Cell]:
        """Every (objective, noise, seed) cell, seeds innermost so a partial grid has every objective."""
        return [Cell(o, p, s) for s in self.seeds for p in self.noise for o in self.objectives]

    def cell_overrides(self, cell: Cell) -> list[str]:
        options = cell.objective.options_at(cell.noise)
        return [
            *self.overrides,
            *cell.objective.overrides,
            f"objective.name={cell.objective.name}",
            f"objective.options={yaml.safe_dump(options, default_flow_style=True).strip()}",
            f"train.seed={cell.seed}",
            f"data.noise_ratio={cell.noise}",
        ]


def parse_objectives(raw: Any) -> list[ObjectiveSpec]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("grid: 'objectives' must be a non-empty list")
    specs = []
    for item in raw:
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"grid: each objective needs a 'name', got {item!r}")
        unknown = set(item) - {"label", "name", "options", "overrides"}
        if unknown:
            raise ConfigError(f"grid: unknown objective key(s) {sorted(unknown)}")
        overrides = item.get("overrides") or []
        if not isinstance(overrides, list):
            raise ConfigError(f"grid: objective {item['name']}: 'overrides' must be a list of key=value, got {overrides!r}")
        specs.append(ObjectiveSpec(str(item.get("label", item["name"])), str(item["name"]), dict(item.get("options") or {}),
                                   tuple(str(o) for o in overrides)))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"grid: objective labels must be unique, got {labels}")
    return specs


def load_grid(path: str | Path) -> Grid:
    """Read a grid YAML file (see the module docstring)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read grid {path}: {exc}") from exc
    unknown = set(raw) - {"data", "recipe", "overrides", "seeds", "noise", "objectives"}
    if unknown:
        raise ConfigError(f"grid {path}: unknown key(s) {sorted(unknown)}")
    base = path.parent
    data = raw.get("data")
    if isinstance(data, str):
        data = {split: f"{data}/{split}.csv" for split in ("train", "val", "test")}
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        raise ConfigError(f"grid {path}: 'data' must be a folder or a mapping with train, test (and val)")
    resolve = lambda p: (base / p).resolve() if p is not None else None  # noqa: E731
    return Grid(
        train=resolve(data["train"]), val=resolve(data.get("val")), test=resolve(data["test"]),
        objectives=parse_objectives(raw.get("objectives")),
        seeds=[int(s) for s in raw.get("seeds", [0])],
        noise=[float(p) for p in raw.get("noise", [0.0])],
        recipe=resolve(raw.get("recipe")),
        overrides=[str(o) for o in raw.get("overrides", [])],
    )


def synthetic_preset(out: Path, quick: bool = False) -> Grid:
    """The synthetic benchmark's standard comparison; the data is generated under ``out/data``.

    Full: nine objectives × seeds 0, 1, 2 × noise 0 and 0.4, three epochs of the demo recipe.
    Quick (a smoke run of the whole pipeline, minutes on 2 CPU cores): a small dataset, a narrow
    model, infonce vs m-LTM with partial OT, one seed, one epoch.
    """
    data = out / "data"
    objectives = copy.deepcopy(SYNTHETIC_OBJECTIVES)
    grid = Grid(
        train=data / "train.csv", val=data / "val.csv", test=data / "test.csv",
        objectives=parse_objectives(objectives), seeds=[0, 1, 2], noise=[0.0, 0.4],
        overrides=[*DEMO_RECIPE, "train.epochs=3"], synth={"n_train": 2000, "n_val": 300, "n_test": 300, "seed": 0},
    )
    if quick:
        grid.objectives = [o for o in grid.objectives if o.label in ("infonce", "mltm_partial")]
        grid.seeds = [0]
        grid.overrides = [
            *DEMO_RECIPE, "train.epochs=1", "train.batch_size=32", "train.warmup_steps=2", "audio.clip_seconds=2.0",
            "model.audio_channels=[16,32,64]", "model.text_width=64", "model.text_layers=1", "model.embed_dim=64",
        ]
        grid.synth = {"n_train": 160, "n_val": 40, "n_test": 40, "seed": 0}
    return grid
