"""Experiment grids: spec parsing, the paired bootstrap, tables, and resumable end-to-end runs."""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from clarion.cli import main
from clarion.compare import Grid, load_grid, run_grid, synthetic_preset, write_tables
from clarion.compare.grid import Cell, ObjectiveSpec, parse_objectives
from clarion.compare.runner import CellResult
from clarion.compare.stats import mean_std, paired_bootstrap
from clarion.config import ConfigError, load_config
from clarion.objectives import build_objective

from conftest import TINY


def test_noise_keyed_options_resolve_per_cell():
    spec = ObjectiveSpec("partial", "mltm", {"metric": "euclidean", "partial_mass": {0.0: 0.95, 0.4: 0.6}})
    assert spec.options_at(0.4) == {"metric": "euclidean", "partial_mass": 0.6}
    assert spec.options_at(0.0)["partial_mass"] == 0.95
    with pytest.raises(ConfigError, match="no value for noise ratio 0.2"):
        spec.options_at(0.2)
    grid = Grid(None, None, None, [spec], [3], [0.4])
    cfg = load_config(None, grid.cell_overrides(grid.cells()[0]))
    assert cfg.objective.name == "mltm" and cfg.objective.options == {"metric": "euclidean", "partial_mass": 0.6}
    assert cfg.train.seed == 3 and cfg.data.noise_ratio == 0.4


def test_grid_file_paths_are_relative_to_it_and_errors_are_clear(tmp_path):
    (tmp_path / "g.yaml").write_text(
        "data: bench\nseeds: [0, 1]\nnoise: [0, 0.4]\n"
        "objectives: [infonce, {label: hard, name: triplet, options: {sampling: hard}}]\n"
    )
    grid = load_grid(tmp_path / "g.yaml")
    assert grid.train == (tmp_path / "bench" / "train.csv").resolve()
    assert [o.label for o in grid.objectives] == ["infonce", "hard"]
    assert len(grid.cells()) == 8 and grid.cells()[0].key == "noise0/infonce/seed0"
    for text, message in [
        ("data: x\nobjectives: [infonce]\nepochs: 3\n", "unknown key"),
        ("data: x\nobjectives: []\n", "non-empty list"),
        ("data: x\nobjectives: [infonce, infonce]\n", "unique"),
        ("objectives: [infonce]\n", "'data'"),
    ]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_grid(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name, cells, labels", [
    ("svr_study.yaml", 24, ["infonce", "infonce+svr_hinge_static", "infonce+svr_hinge_dynamic", "infonce+svr_sigmoid_static",
                            "infonce+svr_sigmoid_dynamic", "siglip", "siglip+svr_hinge_dynamic", "siglip+svr_sigmoid_dynamic"]),
    ("partial_ot_study.yaml", 12, ["infonce", "mltm_partial_uniform", "mltm_partial_row_mass", "mltm_partial_diagonal"]),
])
def test_study_grids_parse_and_build_their_objectives(name, cells, labels):
    """The issue-17 study grids: 3 seeds of the demo recipe; every cell's options build the objective they name."""
    grid = load_grid(Path(__file__).parents[1] / "configs" / "compare" / name)
    assert [o.label for o in grid.objectives] == labels and len(grid.cells()) == cells and grid.seeds == [0, 1, 2]
    assert grid.recipe.name == "demo.yaml" and grid.train.parent.name == "data"
    for cell in grid.cells()[: len(labels)]:
        cfg = load_config(grid.recipe, [*grid.cell_overrides(cell), f"data.train={grid.train}"])
        objective = build_objective(cfg.objective.name, cfg.objective.options, batch_size=cfg.train.batch_size,
                                    embed_dim=cfg.model.embed_dim)
        label = cell.objective.label
        if "+svr_" in label:
            assert (objective.radius_bound, objective.radius_kind) == tuple(label.split("_")[1:])
        if label.startswith("mltm_partial_"):
            assert objective.partial_target == label.removeprefix("mltm_partial_") and objective.partial_mass == 0.6
            assert cell.noise == 0.4


def test_augment_study_varies_only_augmentation_and_matches_the_recipe():
    """Entry overrides: each cell of the augmentation study is the demo recipe plus its own augment.*
    keys; the "all" entry is configs/demo_augment.yaml."""
    configs = Path(__file__).parents[1] / "configs"
    grid = load_grid(configs / "compare" / "augment_study.yaml")
    assert [o.label for o in grid.objectives] == ["none", "specaugment", "gain+shift", "mixup", "all"]
    cfgs = {c.objective.label: load_config(grid.recipe, grid.cell_overrides(c)) for c in grid.cells()[:5]}
    base = cfgs["none"].to_dict()
    for label, cfg in cfgs.items():
        assert {**cfg.to_dict(), "augment": base["augment"]} == base, label  # nothing else differs
    assert cfgs["none"].augment == load_config().augment  # off by default
    assert cfgs["mixup"].augment.mixup_alpha == 0.5 and cfgs["mixup"].augment.gain_db == 0
    assert cfgs["all"].augment == load_config(configs / "demo_augment.yaml").augment
    assert cfgs["all"].to_dict() == {**load_config(configs / "demo_augment.yaml").to_dict(), "objective": base["objective"]}
    with pytest.raises(ConfigError, match="'overrides' must be a list"):
        parse_objectives([{"name": "infonce", "overrides": "augment.gain_db=3"}])
    long = load_grid(configs / "compare" / "augment_study_long.yaml")  # the same cells at 10 epochs
    assert [o.label for o in long.objectives] == ["none", "specaugment"] and long.seeds == [0, 1, 2]
    for cell in long.cells()[:2]:
        cfg = load_config(long.recipe, long.cell_overrides(cell))
        assert cfg.train.epochs == 10 and cfg.augment == cfgs[cell.objective.label].augment


def test_preset_has_the_documented_cells(tmp_path):
    full = synthetic_preset(tmp_path)
    assert len(full.cells()) == 9 * 3 * 2
    assert {o.name for o in full.objectives} == {"infonce", "infonce+svr", "siglip", "siglip+svr", "mltm", "triplet"}
    quick = synthetic_preset(tmp_path, quick=True)
    assert len(quick.cells()) == 4 and quick.synth["n_train"] < 500


def test_mean_std_matches_statistics():
    values = [0.2, 0.25, 0.31]
    assert mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_paired_bootstrap_against_closed_forms():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 400)) < 0.6).astype(float)
    b = (rng.random((2, 400)) < 0.4).astype(float)
    out = paired_bootstrap(a, b, n_resamples=4000, seed=1)
    d = a.mean(0) - b.mean(0)
    assert out["diff"] == pytest.approx(d.mean())
    # the bootstrap distribution of a mean has standard error sd(d) / √n (with the 1/n variance)
    se = d.std() / math.sqrt(len(d))
    assert (out["ci_high"] - out["ci_low"]) / (2 * 1.96) == pytest.approx(se, rel=0.1)
    assert out["ci_low"] < out["diff"] < out["ci_high"] and out["p_value"] < 0.01

    same = paired_bootstrap(a, a, n_resamples=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    noise = paired_bootstrap(rng.random(300) < 0.5, rng.random(300) < 0.5, n_resamples=2000)
    assert noise["p_value"] > 0.01  # two draws of one distribution rarely differ significantly
    with pytest.raises(ValueError, match="same non-empty queries"):
        paired_bootstrap(np.ones(3), np.ones(4))


def fake_result(label, noise, seed, hits, r1):
    cell = Cell(ObjectiveSpec(label, label), noise, seed)
    metrics = {side: {"R@1": r1, "R@5": r1, "R@10": r1} for side in ("t2a", "a2t")}
    metrics["geometry"] = {"modality_gap": 0.5}
    ranks = np.where(np.asarray(hits), 1, 3)
    return CellResult(cell, metrics, ranks, ranks)


def test_tables_hold_means_stds_and_tests(tmp_path):
    results = [
        fake_result("good", 0.0, 0, [1, 1, 1, 0] * 25, 0.75), fake_result("good", 0.0, 1, [1, 1, 0, 0] * 25, 0.5),
        fake_result("bad", 0.0, 0, [0, 0, 0, 1] * 25, 0.25),
        CellResult(Cell(ObjectiveSpec("broken", "broken"), 0.0, 0), None, error="boom"),
    ]
    paths = write_tables(results, tmp_path, n_resamples=500)
    rows = list(csv.DictReader(open(paths["results.csv"])))
    good = next(r for r in rows if r["objective"] == "good")
    assert good["seeds"] == "2" and float(good["t2a_R@1_mean"]) == pytest.approx(0.625)
    assert float(good["t2a_R@1_std"]) == pytest.approx(statistics.stdev([0.75, 0.5]))
    markdown = paths["results.md"].read_text()
    assert "62.5 ± 17.7" in markdown and "Failed cells" in markdown and "broken" in markdown
    tests = list(csv.DictReader(open(paths["significance.csv"])))
    assert {(t["a"], t["b"], t["metric"]) for t in tests} == {("good", "bad", "t2a R@1"), ("good", "bad", "a2t R@1")}
    assert float(tests[0]["diff"]) == pytest.approx(0.625 - 0.25)


def test_compare_runs_a_grid_resumes_and_skips_finished_cells(tone_data, tmp_path, caplog):
    data = tone_data["train"].parent
    (data / "test.csv").write_text(tone_data["val"].read_text())
    out = tmp_path / "grid"
    args = ["compare", "--data", str(data), "--objectives", "infonce", "siglip", "--noise", "0", "0.25",
            "--out", str(out), "--resamples", "200", "-q", *TINY, "train.epochs=1", "train.batch_size=16"]
    assert main(args) == 0
    assert len(list(out.glob("runs/*/*/seed0/test.json"))) == 4
    table = (out / "results.md").read_text()
    assert table.count("| infonce |") == 2 and table.count("| siglip |") == 2
    assert (out / "significance.csv").read_text().count("R@1") == 4  # 2 noise ratios × 2 directions
    noisy = json.loads((out / "runs/noise0.25/infonce/seed0/test.json").read_text())
    assert (out / "runs/noise0.25/infonce/seed0/noisy_pairs.csv").is_file() and 0 <= noisy["t2a"]["R@1"] <= 1
    assert noisy["cell"] == {"label": "infonce", "noise": 0.25, "seed": 0}

    # a finished grid is not rerun; a cell whose evaluation was lost resumes training (nothing left) and re-evaluates
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed0/model.safetensors")}
    (out / "runs/noise0/siglip/seed0/test.json").unlink()
    caplog.set_level(logging.INFO, logger="clarion.compare")
    grid = Grid(data / "train.csv", None, data / "test.csv", parse_objectives(["infonce", "siglip"]), [0], [0.0, 0.25],
                overrides=[*TINY, "train.epochs=1", "train.batch_size=16"])
    results = run_grid(grid, out)
    assert "4 cells: 3 finished, 1 to run" in caplog.text
    assert all(r.metrics is not None for r in results)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed0/model.safetensors")}


def test_a_failing_cell_is_reported_and_the_others_finish(tone_data, tmp_path):
    data = tone_data["train"].parent
    (data / "test.csv").write_text(tone_data["val"].read_text())
    grid = Grid(data / "train.csv", None, data / "test.csv",
                [ObjectiveSpec("ok", "infonce"), ObjectiveSpec("bad", "triplet", {"sampling": "nonsense"})], [0], [0.0],
                overrides=[*TINY, "train.epochs=1", "train.batch_size=16"])
    results = run_grid(grid, tmp_path / "out")
    assert results[0].metrics is not None
    assert results[1].metrics is None and "unknown sampling" in results[1].error


@pytest.mark.slow
def test_quick_synthetic_preset_end_to_end(tmp_path):
    out = tmp_path / "preset"
    assert main(["compare", "--preset", "synthetic", "--quick", "--out", str(out), "--resamples", "500", "-q"]) == 0
    assert len(list(out.glob("runs/*/*/seed0/test.json"))) == 4
    table = (out / "results.md").read_text()
    assert "| infonce |" in table and "| mltm_partial |" in table
