"""`clarion report`: the pure pieces (collect, PCA, gap, grouping, HTML) and an end-to-end report of
two tiny runs, checked as text, as PNGs and as a page rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clarion.cli import build_parser, main
from clarion.evaluate.geometry import modality_gap
from clarion.report import plots
from clarion.report.build import step_curves
from clarion.report.collect import (
    RunData, band, best_epoch_record, group_curves, load_run, noise_curves, options_string, read_metrics,
    retrieval_summary, run_groups, series, unique_names, val_series,
)
from clarion.report.embeddings import first_clips, pca_2d
from clarion.report.html import Image, Section, Table, render_page
from clarion.rundir import RunError

from conftest import TINY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Runs", "Training loss", "Validation", "Drift", "Radius (SVR)", "Collapse statistics", "Retrieval R@k",
            "Noise robustness", "Modality gap", "Similarity", "OT plan (m-LTM)"]


# ---------------------------------------------------------------- pure pieces


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    audio, text = rng.normal(size=(7, 5)), rng.normal(size=(11, 5)) + 0.5
    pa, pt, share = pca_2d(audio.astype(np.float32), text.astype(np.float32))
    joint = np.concatenate([audio, text])
    centred = joint - joint.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    got = np.concatenate([pa, pt])
    for k in range(2):  # each axis is defined up to its sign
        sign = np.sign(got[:, k] @ expected[:, k])
        np.testing.assert_allclose(got[:, k], sign * expected[:, k], atol=1e-5)
    np.testing.assert_allclose(share, s[:2] ** 2 / (s**2).sum(), rtol=1e-6)
    assert pa.shape == (7, 2) and pt.shape == (11, 2)
    # the sign convention makes the result independent of the SVD's arbitrary signs
    pa2, _, _ = pca_2d(-audio, -text)
    np.testing.assert_allclose(np.abs(pa2), np.abs(pa), atol=1e-5)


def test_pca_of_degenerate_inputs_does_not_crash():
    pa, pt, share = pca_2d(np.ones((1, 1)), np.zeros((1, 1)))
    assert pa.shape == (1, 2) and pt.shape == (1, 2) and np.all(np.isfinite(share))
    pa, pt, share = pca_2d(np.ones((3, 4)), np.ones((2, 4)))  # all points equal: zero variance
    assert np.all(pa == 0) and np.all(np.isfinite(share))


def test_modality_gap_is_the_distance_between_the_centroids():
    audio = np.array([[1.0, 0.0], [0.0, 1.0]])  # centroid (1/2, 1/2)
    text = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])  # centroid (1/3, 1/3)
    assert modality_gap(torch.from_numpy(audio), torch.from_numpy(text)) == pytest.approx(math.sqrt(2) / 6)
    assert modality_gap(torch.from_numpy(audio), torch.from_numpy(audio)) == 0.0


def test_first_clips_orders_captions_by_clip():
    caption_clip = np.array([2, 0, 1, 0, 3, 1, 2])
    clips, captions = first_clips(caption_clip, 3)
    assert clips.tolist() == [0, 1, 2]
    assert captions.tolist() == [1, 3, 2, 5, 0, 6]  # clip 0's captions, then 1's, then 2's; clip 3 left out
    clips, captions = first_clips(caption_clip, 100)
    assert clips.tolist() == [0, 1, 2, 3] and len(captions) == 7


def _run(name, objective, noise, t2a, a2t, options=None, test=True, cell=None):
    metrics = {"t2a": {"R@1": t2a, "R@5": 0.9, "R@10": 1.0}, "a2t": {"R@1": a2t, "R@5": 0.9, "R@10": 1.0}}
    if cell:
        metrics["cell"] = {"label": cell, "noise": noise, "seed": 0}
    epochs = [] if test else [{"type": "epoch", "epoch": 0, "val": metrics, "val_mean_R@1": (t2a + a2t) / 2, "best": True}]
    return RunData(Path(name), name, objective, options or {}, noise, epochs=epochs, test=metrics if test else None)


def test_noise_curves_group_by_objective_and_average_seeds():
    runs = [
        _run("a", "infonce", 0.0, 0.6, 0.5),
        _run("b", "infonce", 0.4, 0.2, 0.1),
        _run("c", "infonce", 0.4, 0.4, 0.3),  # a second seed at 0.4: averaged with b
        _run("d", "infonce", 0.2, 0.5, 0.4, test=False),  # validation numbers count too
        _run("e", "mltm", 0.4, 0.5, 0.5, options={"partial_mass": 0.9}),
        _run("f", "mltm", 0.4, 0.7, 0.7, options={"partial_mass": 0.8}),  # other options: another line
    ]
    curves = noise_curves(runs)
    assert set(curves) == {"infonce", "mltm (partial_mass=0.9)", "mltm (partial_mass=0.8)"}
    assert curves["infonce"]["t2a"] == [(0.0, 0.6), (0.2, 0.5), (0.4, pytest.approx(0.3))]
    assert curves["infonce"]["a2t"] == [(0.0, 0.5), (0.2, 0.4), (0.4, pytest.approx(0.2))]
    assert curves["mltm (partial_mass=0.9)"]["t2a"] == [(0.4, 0.5)]
    # one shared noise ratio: nothing to plot
    assert noise_curves([_run("a", "infonce", 0.2, 0.6, 0.5), _run("b", "mltm", 0.2, 0.2, 0.1)]) == {}
    # runs without retrieval numbers do not count
    empty = RunData(Path("x"), "x", "infonce", {}, 0.5)
    assert noise_curves([_run("a", "infonce", 0.2, 0.6, 0.5), empty]) == {}


def test_compare_cells_group_by_their_label_across_per_noise_options():
    """A compare objective whose options depend on the noise ratio is one line, under its cell label."""
    runs = [
        _run("a", "mltm", 0.0, 0.6, 0.5, options={"partial_mass": 0.95}, cell="mltm_partial"),
        _run("b", "mltm", 0.4, 0.2, 0.1, options={"partial_mass": 0.6}, cell="mltm_partial"),
        _run("c", "infonce", 0.4, 0.3, 0.3),
    ]
    curves = noise_curves(runs)
    assert set(curves) == {"mltm_partial", "infonce"}
    assert curves["mltm_partial"]["t2a"] == [(0.0, 0.6), (0.4, 0.2)]


def _seed_run(name, label, noise, seed, losses, objective="infonce+svr"):
    steps = [{"type": "step", "step": i + 1, "loss": v} for i, v in enumerate(losses)]
    test = {"t2a": {"R@1": 0.1 * (seed + 1)}, "a2t": {"R@1": 0.2}}
    if label:
        test["cell"] = {"label": label, "noise": noise, "seed": seed}
    return RunData(Path(name), name, objective, {}, noise, steps=steps, test=test)


def test_runs_of_one_grid_label_and_noise_are_one_group():
    runs = [_seed_run("a0", "svr", 0.0, 0, [3, 2]), _seed_run("b0", "base", 0.0, 0, [3, 1]),
            _seed_run("a1", "svr", 0.0, 1, [5, 4]), _seed_run("a4", "svr", 0.4, 0, [1, 1]),
            _seed_run("loose", None, 0.0, 0, [2, 2]), _seed_run("svr · noise 0", None, 0.0, 0, [1, 1])]
    groups = run_groups(runs)
    assert list(groups) == ["svr · noise 0", "base · noise 0", "svr · noise 0.4", "loose", "svr · noise 0 (run)"]
    assert [r.name for r in groups["svr · noise 0"]] == ["a0", "a1"]
    assert [r.name for r in groups["loose"]] == ["loose"]  # no label: a line of its own
    one_noise = run_groups([runs[0], runs[2], runs[4]])
    assert list(one_noise) == ["svr", "loose"]  # one noise ratio among the labelled runs: the label alone


def test_band_is_the_mean_and_sample_std_over_runs_at_each_step():
    xs, mean, std = band([([1, 2, 3], [1.0, 2.0, 4.0]), ([1, 2], [3.0, 6.0]), ([2], [1.0])])
    assert xs == [1, 2, 3]
    assert mean == pytest.approx([2.0, 3.0, 4.0])
    assert std == pytest.approx([float(np.std([1, 3], ddof=1)), float(np.std([2, 6, 1], ddof=1)), 0.0])


def test_grouped_figure_draws_one_line_and_band_per_group_with_a_legend_that_fits():
    runs = [_seed_run(f"{label}{seed}", label, 0.0, seed, [3 - seed, 2 + seed, 1]) for label in ("x", "y", "z") for seed in range(3)]
    runs.append(_seed_run("single", None, 0.0, 0, [2, 2, 2]))
    groups = run_groups(runs)
    curves = step_curves(groups, "loss")
    assert set(curves) == {"x", "y", "z", "single"}
    assert curves["x"][1] == pytest.approx([2.0, 3.0, 1.0]) and curves["x"][2] == pytest.approx([1.0, 1.0, 0.0])
    names = list(groups)
    fig = plots.curves_figure([("loss", "loss", curves)], "step", plots.colours_for(names), linestyles=plots.linestyles_for(names))
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4  # 10 runs, 4 lines
    assert len(ax.collections) == 3  # a ±std band for each group of seeds, none for the single run
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names
    fig.canvas.draw()
    box, frame = legend.get_window_extent(), fig.bbox
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0  # inside the figure, not cut off
    assert all(box.y1 <= a.get_window_extent().y0 + 1 for a in fig.axes if a.get_visible())  # below the axes


def test_legend_of_many_lines_stays_inside_the_figure():
    lines = {f"mltm_partial_target_diagonal · noise 0.{i}": ([0, 1], [i, i + 1]) for i in range(18)}
    fig = plots.curves_figure([("a", "y", lines), ("b", "y", lines)], "step", plots.colours_for(list(lines)),
                              linestyles=plots.linestyles_for(list(lines)))
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0
    assert len(fig.legends[0].get_texts()) == 18
    assert len(set(zip(plots.colours_for(list(lines)).values(), plots.linestyles_for(list(lines)).values()))) == 18


def test_options_string_and_label():
    assert options_string({}) == ""
    assert options_string({"sides": "uni", "alpha": 0.5, "multi_positive": True}) == "alpha=0.5,multi_positive=true,sides=uni"
    assert _run("a", "mltm", 0, 0, 0, options={"eps": 0.05}).label == "mltm (eps=0.05)"


def test_series_keeps_only_records_with_finite_values():
    records = [{"step": 1, "loss": 2.0}, {"step": 2}, {"step": 3, "loss": float("nan")}, {"step": 4, "loss": 1.0},
               {"step": 5, "loss": None}, {"step": 6, "loss": True}]
    assert series(records, "loss") == ([1.0, 4.0], [2.0, 1.0])
    epochs = [{"epoch": 0, "val_mean_R@1": 0.2, "val": {"t2a": {"R@1": 0.1}}}, {"epoch": 1, "train_loss": 1.0}]
    assert val_series(epochs, None) == ([1.0], [0.2]) and val_series(epochs, "t2a") == ([1.0], [0.1])
    assert val_series(epochs, "a2t") == ([], [])


def test_retrieval_summary_prefers_test_json_then_the_best_epoch():
    val = lambda r: {"t2a": {"R@1": r, "R@5": r, "R@10": r}, "a2t": {"R@1": r, "R@5": r, "R@10": r}}  # noqa: E731
    epochs = [{"epoch": 0, "val": val(0.1), "val_mean_R@1": 0.1, "best": True},
              {"epoch": 1, "val": val(0.5), "val_mean_R@1": 0.5, "best": True},
              {"epoch": 2, "val": val(0.3), "val_mean_R@1": 0.3}]
    assert best_epoch_record(epochs)["epoch"] == 1
    assert retrieval_summary(None, epochs) == ("val", {"t2a": {"R@1": 0.5, "R@5": 0.5, "R@10": 0.5},
                                                       "a2t": {"R@1": 0.5, "R@5": 0.5, "R@10": 0.5}})
    assert retrieval_summary(val(0.9), epochs)[0] == "test"
    assert retrieval_summary({"oops": 1}, epochs)[0] == "val"
    assert retrieval_summary(None, [{"epoch": 0, "train_loss": 1.0}]) is None
    assert best_epoch_record([{"epoch": 0, "val_mean_R@1": 0.4}, {"epoch": 1, "val_mean_R@1": 0.2}])["epoch"] == 0
    assert best_epoch_record([]) is None


def test_read_metrics_skips_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "step", "step": 1, "loss": 1}\n{"type": "epoch", "epoch": 0}\n[1]\n{"type": "st')
    steps, epochs, skipped = read_metrics(path)
    assert len(steps) == 1 and len(epochs) == 1 and skipped == 2


def test_unique_names(tmp_path):
    assert unique_names([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]


def test_page_escapes_text_and_inlines_images():
    png = plots.to_png(plots.curves_figure([("t", "y", {"<b>run</b>": ([0, 1], [1, 0])})], "step"))
    page = render_page("<title>", [Section("A & B", "ab", text="<script>alert(1)</script>", images=[Image(png, 'x"y')],
                                           table=Table(["<h>"], [["<td>", 1.5, None, 3]]))])
    assert "<script>" not in page and "&lt;script&gt;" in page and "A &amp; B" in page and "&lt;td&gt;" in page
    assert 'alt="x&quot;y"' in page and "data:image/png;base64," in page


def test_plots_survive_empty_and_tiny_inputs():
    figures = [
        plots.curves_figure([("empty", "y", {})], "step"),
        plots.curves_figure([("a", "y", {"r": ([1], [1])}), ("b", "y", {}), ("c", "y", {"r": ([], [])})], "step"),
        plots.heatmap_figure(np.ones((1, 1)), "t", "x", "y", "c", row_groups=[0]),
        plots.modality_gap_figure(np.zeros((1, 2)), np.zeros((0, 2)), np.zeros(0, dtype=int), 0.0, "t"),
        plots.recall_bars_figure({"r": {"t2a": {"R@1": 0.5}, "a2t": {}}}),
        plots.noise_curve_figure({"infonce": {"t2a": [(0.0, 0.5)], "a2t": []}}),
    ]
    for fig in figures:
        assert plots.to_png(fig).startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def runs(tone_data, tmp_path_factory):
    """Two 2-epoch runs: infonce+svr (noise 0, with a test.json) and mltm (noise 0.25, val only)."""
    root = tmp_path_factory.mktemp("report_runs")
    common = ["--train", str(tone_data["train"]), "--val", str(tone_data["val"]), "--epochs", "2", "--batch-size", "16",
              "-q", *TINY, "train.drift_every=1", "train.collapse_every=2"]
    svr, mltm = root / "svr", root / "mltm"
    assert main(["train", *common, "--objective", "infonce+svr", "--out", str(svr)]) == 0
    assert main(["train", *common, "--objective", "mltm", "--noise-ratio", "0.25", "--out", str(mltm)]) == 0
    assert main(["evaluate", str(svr), "--data", str(tone_data["val"]), "--json", str(svr / "test.json"), "-q"]) == 0
    return svr, mltm


@pytest.fixture(scope="module")
def report(runs, tone_data) -> Path:
    out = runs[0].parent / "out" / "report.html"
    figures = runs[0].parent / "out" / "figures"
    assert main(["report", *map(str, runs), "--data", str(tone_data["val"]), "--out", str(out), "--png-dir", str(figures), "-q"]) == 0
    return out


def _sections(page: str) -> dict[str, str]:
    """Section heading -> its HTML."""
    return {m.group(2): m.group(0) for m in re.finditer(r'<section id="([^"]+)">\s*<h2>(.*?)</h2>.*?</section>', page, re.S)}


def _images(html_text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def test_report_is_self_contained_and_has_every_section(report):
    page = report.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(re.findall(r"<img\b", page)) == len(sources)
    sections = _sections(page)
    assert list(sections) == SECTIONS
    html_escaped = {k.replace("&amp;", "&"): v for k, v in sections.items()}
    expected_images = {"Runs": 0, "Modality gap": 2, "Similarity": 2, "OT plan (m-LTM)": 1}  # OT: the mltm run only
    for title, block in html_escaped.items():
        count = len(_images(block))
        assert count == expected_images.get(title, 1), (title, count)
        assert 'class="note"' not in block, title  # every section had data


def test_report_images_are_valid_pngs(report):
    from matplotlib.image import imread
    from PIL import Image as PILImage

    images = _images(report.read_text(encoding="utf-8"))
    assert len(images) == 12  # 7 curve / bar figures, 2 gaps, 2 heatmaps, 1 OT plan
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        with PILImage.open(io.BytesIO(png)) as img:
            img.verify()
        with PILImage.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.width >= 200 and img.height >= 150
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or range(1 << 20)) > 10  # not blank
        assert imread(io.BytesIO(png), format="png").ndim == 3


def test_png_dir_holds_the_pages_figures_named_by_section(report):
    files = sorted((report.parent / "figures").glob("*.png"))
    names = {f.name for f in files}
    assert {"noise.png", "recall.png", "ot.png", "gap.png", "gap-1.png", "similarity.png", "similarity-1.png"} <= names
    assert sorted(f.read_bytes() for f in files) == sorted(_images(report.read_text(encoding="utf-8")))


def test_report_table_describes_the_runs(report):
    table = _sections(report.read_text(encoding="utf-8"))["Runs"]
    assert "<details>" in table  # runs without a grid label: no group table, the run list collapsed
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert [c[:4] for c in cells] == [["svr", "infonce+svr", "–", "0.000"], ["mltm", "mltm", "–", "0.250"]]
    assert [c[7] for c in cells] == ["test", "val"]  # svr has test.json; mltm falls back to its best val epoch
    assert all(c[6] in ("1", "2") and 0 <= float(c[8]) <= 1 for c in cells)


def test_report_of_grid_seeds_draws_groups_and_collapses_the_run_list(runs, tmp_path):
    """Two seeds of one compare cell label and an unlabelled run: a group table, the runs in a
    <details> element, no paragraph of paths."""
    import json

    seeds = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        shutil.copytree(runs[0], run)
        test = json.loads((run / "test.json").read_text())
        test["cell"] = {"label": "infonce+svr_sigmoid_dynamic", "noise": 0.0, "seed": seed}
        (run / "test.json").write_text(json.dumps(test))
        seeds.append(run)
    out = tmp_path / "r.html"
    assert main(["report", *map(str, seeds), str(runs[1]), "--out", str(out), "-q"]) == 0
    page = out.read_text(encoding="utf-8")
    runs_section = _sections(page)["Runs"]
    assert "<details>" in runs_section and "<summary>all 3 run(s)</summary>" in runs_section
    assert str(seeds[0]) in runs_section.split("<details>")[1]  # the paths are in the collapsed table
    intro = page.split("<nav>")[0]
    assert str(seeds[0]) not in intro and "3 run(s), 2 line(s)" in intro
    group_rows = re.findall(r"<tr>(.*?)</tr>", runs_section.split("<details>")[0], re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in group_rows]
    assert [c[:2] for c in cells] == [["infonce+svr_sigmoid_dynamic", "2"], ["mltm", "1"]]
    assert _images(_sections(page)["Training loss"])


def test_report_without_data_leaves_sections_out_with_a_note(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(runs[1]), "--out", str(out), "-q"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    sections = _sections(out.read_text(encoding="utf-8"))
    assert "No SVR run" in sections["Radius (SVR)"] and not _images(sections["Radius (SVR)"])
    assert "do not differ in data.noise_ratio" in sections["Noise robustness"]
    assert "Pass --data" in sections["Embeddings"]
    assert _images(sections["Training loss"]) and _images(sections["Drift"])


def test_report_of_a_run_without_model_notes_it(runs, tone_data, tmp_path):
    """A run still in its first epoch (no model.safetensors yet): curves, and a note instead of embeddings."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "tokenizer.json"):
        shutil.copy(runs[1] / name, partial)
    lines = (runs[1] / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text("\n".join(line for line in lines if '"type": "step"' in line)[:-5])  # torn
    out = tmp_path / "r.html"
    assert main(["report", str(partial), "--data", str(tone_data["val"]), "--out", str(out), "-q"]) == 0
    sections = _sections(out.read_text(encoding="utf-8"))
    assert "model.safetensors is missing" in sections["Modality gap"]
    assert "No run was validated" in sections["Validation"] and "No run has test.json" in sections["Retrieval R@k"]
    assert _images(sections["Training loss"])


def test_missing_run_or_metrics_is_a_user_error(tmp_path, capsys, runs):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    shutil.copy(runs[0] / "config.yaml", tmp_path / "empty")
    assert main(["report", str(runs[0]), str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("clarion report: error:") and "metrics.jsonl" in err[-1]
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(runs[0]), "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.html")]) == 2
    assert "missing.csv" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    with pytest.raises(RunError, match="metrics.jsonl"):
        load_run(tmp_path / "empty")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["report", "--help"])
    assert info.value.code == 0 and "usage: clarion report" in capsys.readouterr().out


# ---------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    for candidate in (os.environ.get("CLARION_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


try:
    from playwright.sync_api import sync_playwright
except ImportError:  # CI machines may lack it
    sync_playwright = None

CHROMIUM = _chromium()


@pytest.mark.skipif(sync_playwright is None, reason="Playwright for Python is not installed (pip install playwright)")
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable (apt-get install chromium, or set CLARION_CHROMIUM)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image as PILImage

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("CLARION_REPORT_SCREENSHOT"):  # keep it to look at
        Path(os.environ["CLARION_REPORT_SCREENSHOT"]).write_bytes(shot)
    assert headings == SECTIONS
    assert len(images) == 12 and all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing fetched from anywhere
    with PILImage.open(io.BytesIO(shot)) as img:
        assert img.width >= 1000 and img.height > 2000  # the whole page, figures stacked
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colours) > 100  # not a blank page
        assert max(count for count, _ in colours) < 0.95 * img.width * img.height
