"""Put the report together: runs → plain data (collect) → figures (plots) → page (html)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..version import __version__
from ..data.manifest import Manifest
from ..data.open import open_source
from ..evaluate.geometry import modality_gap
from ..rundir import RunError, atomic_write_text
from . import plots
from .collect import RunData, band, group_curves, load_runs, noise_curves, run_groups, series, val_series
from .embeddings import embed_run, first_clips, pca_2d
from .html import Image, Section, Table, render_page

log = logging.getLogger("clarion.report")

DRIFT_KEYS = [("drift_cos", "cos(−∂L/∂t, a − t)  (higher = less drift)"), ("drift_perp_ratio", "‖g⊥‖ / |g∥|")]
RADIUS_KEYS = [("radius_text_mean", "radius"), ("radius_audio_mean", "radius"),
               ("svr_ratio_text", "R / ‖a − t‖  (≤ 1: damped, > 1: flipped)"), ("svr_ratio_audio", "R / ‖a − t‖  (≤ 1: damped, > 1: flipped)"),
               ("radius_text_std", "radius"), ("radius_audio_std", "radius")]
Groups = dict[str, list[RunData]]
Style = tuple[dict[str, str], dict[str, str]]  # colour and line style per line name
COLLAPSE_KEYS = [("collapse_audio_cos", "mean pairwise cosine"), ("collapse_text_cos", "mean pairwise cosine"),
                 ("collapse_audio_rank", "effective rank"), ("collapse_text_rank", "effective rank")]


def _image(fig, alt: str, caption: str = "") -> Image:
    return Image(plots.to_png(fig), alt, caption)


def _curve_section(title: str, anchor: str, panels, xlabel: str, style: Style, empty: str, text: str = "") -> Section:
    panels = [p for p in panels if p[2]]
    if not panels:
        return Section(title, anchor, note=empty)
    colours, linestyles = style
    figure = plots.curves_figure(panels, xlabel, colours, linestyles=linestyles)
    return Section(title, anchor, text=text, images=[_image(figure, title)])


def step_curves(groups: Groups, key: str):
    """Per line (group), the mean ± std over its runs of the step records' ``key``."""
    return group_curves(groups, lambda run: series(run.steps, key))


def training_sections(groups: Groups, style: Style) -> list[Section]:
    """Loss, validation, drift, radius and collapse curves from the runs' metrics.jsonl: one line
    per group of runs (a grid label's seeds: mean and ±std band), else per run."""
    banded = any(len(members) > 1 for members in groups.values())
    seeds = " Runs of one grid label (and noise ratio) are one line: the mean over them, shaded ±1 std." if banded else ""
    sections = [
        _curve_section("Training loss", "loss", [("loss", "loss", step_curves(groups, "loss"))], "step", style,
                       "No run logged a step loss.", seeds.strip()),
        _curve_section(
            "Validation", "validation",
            [("mean R@1 (T2A, A2T)", "R@1", group_curves(groups, lambda r: val_series(r.epochs, None))),
             ("T2A R@1", "R@1", group_curves(groups, lambda r: val_series(r.epochs, "t2a"))),
             ("A2T R@1", "R@1", group_curves(groups, lambda r: val_series(r.epochs, "a2t")))],
            "epoch", style, "No run was validated (train with --val for validation curves).",
        ),
        _curve_section("Drift", "drift", [(key, label, step_curves(groups, key)) for key, label in DRIFT_KEYS], "step", style,
                       "No run logged drift statistics (train.drift_every = 0, or fewer steps than it).",
                       "Drift of the text anchors' update direction (SupCLAP), at the steps that logged it." + seeds),
        _curve_section("Radius (SVR)", "radius", [(key, label, step_curves(groups, key)) for key, label in RADIUS_KEYS], "step",
                       style, "No SVR run: no radius statistics.",
                       "SVR radius per side and its ratio to the positive pair's distance; the perpendicular gradient is "
                       "scaled by 1 − R/‖a − t‖." + seeds),
        _curve_section("Collapse statistics", "collapse", [(key, label, step_curves(groups, key)) for key, label in COLLAPSE_KEYS],
                       "step", style, "No run logged collapse statistics (train.collapse_every = 0, or fewer steps than it).",
                       "Batch statistics of the embeddings: pairwise cosine → 1 and effective rank → 1 mean collapse."),
    ]
    return sections


def group_recalls(members: list[RunData]) -> tuple[dict, dict] | None:
    """Mean and std (n − 1; 0 for one run) of each R@k over a group's runs that have retrieval numbers."""
    found = [summary[1] for run in members if (summary := run.retrieval()) is not None]
    if not found:
        return None
    means, stds = {}, {}
    for side in ("t2a", "a2t"):
        for k in ("R@1", "R@5", "R@10"):
            values = [r[side][k] for r in found if k in r.get(side, {})]
            if values:
                _, mean, std = band([([0.0], [v]) for v in values])
                means.setdefault(side, {})[k], stds.setdefault(side, {})[k] = mean[0], std[0]
    return means, stds


def retrieval_sections(runs: list[RunData], groups: Groups, style: Style) -> list[Section]:
    recalls, errors, sources = {}, {}, {}
    for run in runs:
        summary = run.retrieval()
        if summary is not None:
            sources[run.name] = summary[0]
    for name, members in groups.items():
        found = group_recalls(members)
        if found is not None:
            recalls[name], errors[name] = found
    if recalls:
        from_val = sorted(name for name, source in sources.items() if source == "val")
        text = "From each run's test.json (clarion evaluate RUN --data test.csv --json RUN/test.json)" + (
            f"; from the best epoch's validation for {', '.join(from_val)}." if from_val else ".")
        if any(len(members) > 1 for members in groups.values()):
            text += " Bars of a grid label are the mean over its runs, error bars ±1 std."
        figure = plots.recall_bars_figure(recalls, style[0], errors)
        bars = Section("Retrieval R@k", "recall", text=text, images=[_image(figure, "R@k bars")])
    else:
        bars = Section("Retrieval R@k", "recall", note="No run has test.json or validation metrics.")
    noise = noise_curves(runs)
    if noise:
        curve = Section("Noise robustness", "noise", text="R@1 against data.noise_ratio, one line per objective "
                        "(runs of one objective at one ratio averaged).", images=[_image(plots.noise_curve_figure(noise), "noise curve")])
    else:
        curve = Section("Noise robustness", "noise", note="The runs do not differ in data.noise_ratio: no noise curve.")
    return [bars, curve]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    _, mean, std = band([([0.0], [v]) for v in values])
    return f"{100 * mean[0]:.1f} ± {100 * std[0]:.1f}" if len(values) > 1 else f"{100 * mean[0]:.1f}"


def group_table(groups: Groups) -> Table:
    """One row per line of the figures: its runs, objective(s), noise ratio(s), R@1 mean ± std in %."""
    rows = []
    for name, members in groups.items():
        found = [summary[1] for run in members if (summary := run.retrieval()) is not None]
        rows.append([
            name, len(members), ", ".join(sorted({r.objective for r in members})),
            ", ".join(f"{p:g}" for p in sorted({r.noise_ratio for r in members})),
            _mean_std([r["t2a"]["R@1"] for r in found if "R@1" in r.get("t2a", {})]),
            _mean_std([r["a2t"]["R@1"] for r in found if "R@1" in r.get("a2t", {})]),
        ])
    return Table(["line", "runs", "objective", "noise ratio", "T2A R@1 (%)", "A2T R@1 (%)"], rows)


def run_table(runs: list[RunData], groups: Groups) -> Section:
    """The run list, collapsed (a ``<details>`` table); above it, when seeds form groups, one row
    per group."""
    line_of = {id(run): name for name, members in groups.items() for run in members}
    rows = []
    for run in runs:
        best = run.best_epoch
        summary = run.retrieval()
        source, recalls = summary if summary else (None, {})
        warned = next((r.get("collapse_warning_step") for r in reversed(run.epochs) if r.get("collapse_warning_step") is not None), None)
        rows.append([
            run.name, run.objective, run.options_str or "–", run.noise_ratio,
            run.steps[-1]["step"] if run.steps else (run.epochs[-1].get("step") if run.epochs else None),
            len(run.epochs), int(best["epoch"]) + 1 if best and "epoch" in best else None, source,
            recalls.get("t2a", {}).get("R@1"), recalls.get("a2t", {}).get("R@1"), warned, line_of[id(run)], str(run.path),
        ])
    headers = ["run", "objective", "options", "noise ratio", "steps", "epochs", "best epoch", "R@1 from",
               "T2A R@1", "A2T R@1", "collapse warning at step", "line", "path"]
    banded = any(len(members) > 1 for members in groups.values())
    text = (f"{len(runs)} run(s) drawn as {len(groups)} line(s): runs of one grid label (clarion compare cell) and "
            "noise ratio are one line." if banded else f"{len(runs)} run(s), one line each.") + " Epochs are counted from 1; R@1 as a fraction."
    return Section("Runs", "runs", text=text, table=group_table(groups) if banded else None,
                   details=Table(headers, rows), details_summary=f"all {len(runs)} run(s)")


def data_sections(
    runs: list[RunData], manifest: Manifest, device: torch.device, max_clips: int = 40, ot_eps: float = 0.03
) -> list[Section]:
    """Modality gap, similarity heatmap and (for mltm runs) the OT plan on ``manifest``, per run.
    A run that cannot be embedded (no model yet) gets a note instead of figures."""
    from ..evaluate.ot_retrieval import euclidean_cost, ot_scores
    from ..rundir import load_objective

    data = manifest.path
    gap_images, sim_images, ot_images, notes = [], [], [], []
    has_mltm = any(run.objective == "mltm" for run in runs)
    for run in runs:
        try:
            log.info("embedding %s with %s", data, run.path)
            emb = embed_run(run.path, manifest, device)
        except RunError as exc:
            notes.append(f"{run.name}: {exc}")
            continue
        audio_2d, text_2d, explained = pca_2d(emb.audio, emb.text)
        gap = modality_gap(torch.from_numpy(emb.audio), torch.from_numpy(emb.text))
        caption = f"{len(emb.audio)} clips, {len(emb.text)} captions" + (
            f" ({emb.skipped_clips} clips could not be decoded)" if emb.skipped_clips else "")
        gap_images.append(_image(plots.modality_gap_figure(audio_2d, text_2d, emb.caption_clip, gap, run.name, explained),
                                 f"modality gap {run.name}", caption))
        clips, captions = first_clips(emb.caption_clip, max_clips)
        text_sub = torch.from_numpy(emb.text[captions])
        audio_sub = torch.from_numpy(emb.audio[clips])
        truth = emb.caption_clip[captions]
        sim = (text_sub @ audio_sub.T).numpy()
        sim_images.append(_image(plots.heatmap_figure(sim, f"{run.name}: cosine similarity", "clip", "caption (ordered by clip)",
                                                      "cos(t, a)", row_groups=truth),
                                 f"similarity {run.name}", f"first {len(clips)} clips, {len(captions)} captions; circles: true pairs"))
        if run.objective == "mltm" and len(captions) and len(clips):
            cost_fn, cost_name = euclidean_cost, "Euclidean cost"
            try:
                learned = getattr(load_objective(run.path, "cpu"), "ground_cost", None)
                if learned is not None:
                    cost_fn, cost_name = learned, "learned cost"
            except RunError as exc:
                notes.append(f"{run.name}: learned cost not loaded ({exc}); Euclidean cost used")
            plan, info = ot_scores(text_sub, audio_sub, cost_fn, eps=ot_eps)
            shares = (plan * len(captions)).float().numpy()  # each caption's row sums to 1
            ot_images.append(_image(
                plots.heatmap_figure(shares, f"{run.name}: OT plan ({cost_name}, ε = {ot_eps:g})", "clip",
                                     "caption (ordered by clip)", "share of the caption's mass", cmap="magma", row_groups=truth,
                                     mark_colour="cyan"),
                f"OT plan {run.name}", f"{info['iterations']} Sinkhorn iterations, marginal error {info['marginal_error']:.1e}"))
    note = " ".join(notes)
    if not gap_images:
        return [Section("Modality gap", "gap", note=note or "No run could embed the data."),
                Section("Similarity", "similarity", note=note or "No run could embed the data."),
                Section("OT plan (m-LTM)", "ot", note="No mltm run could embed the data." if has_mltm else "No mltm run among the runs.")]
    sections = [
        Section("Modality gap", "gap", text=f"Joint 2-D PCA of the audio and text embeddings of {data}; lines join each "
                "caption to its clip.", images=gap_images, note=note),
        Section("Similarity", "similarity", text="Caption × clip cosine similarity on the first clips of the data.",
                images=sim_images),
    ]
    if ot_images:
        sections.append(Section("OT plan (m-LTM)", "ot", text="Entropic transport plan over the same captions and clips "
                                "(uniform marginals; the cost, named in each title, is the run's learned one when it loads).", images=ot_images))
    else:
        sections.append(Section("OT plan (m-LTM)", "ot",
                                note="No mltm run could embed the data." if has_mltm else "No mltm run among the runs."))
    return sections


def build_report(
    run_paths: list[str | Path],
    out: str | Path = "report.html",
    data: str | Path | None = None,
    device: str = "auto",
    max_clips: int = 40,
    ot_eps: float = 0.03,
    png_dir: str | Path | None = None,
) -> Path:
    """Write the HTML report of ``run_paths`` to ``out`` and return its path. With ``png_dir``,
    every figure is also written there as ``{section anchor}[-{i}].png``."""
    if not run_paths:
        raise ValueError("no run directory given")
    runs = load_runs(list(run_paths))
    manifest = None
    if data is not None:  # a bad manifest or device fails before any plotting
        from ..runtime import resolve_device

        manifest, torch_device = open_source(data, "skip"), resolve_device(device)
    groups = run_groups(runs)
    style = plots.colours_for(list(groups)), plots.linestyles_for(list(groups))
    sections = [run_table(runs, groups), *training_sections(groups, style), *retrieval_sections(runs, groups, style)]
    if manifest is not None:
        sections += data_sections(runs, manifest, torch_device, max_clips, ot_eps)
    else:
        sections.append(Section("Embeddings", "embeddings",
                                note="Pass --data CSV for the modality gap, similarity and OT plan sections."))
    page = render_page(
        "clarion report", sections,
        intro=f"{len(runs)} run(s), {len(groups)} line(s) in the figures; the run list is under Runs.",
        footer=f"clarion {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
    )
    out = Path(out)
    atomic_write_text(out, page)
    if png_dir is not None:
        write_figures(sections, Path(png_dir))
    return out


def write_figures(sections: list[Section], folder: Path) -> list[Path]:
    """Each section's figures as PNG files named after its anchor (``-1``, ``-2``… after the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for section in sections:
        for i, image in enumerate(section.images):
            path = folder / f"{section.anchor}{f'-{i}' if i else ''}.png"
            path.write_bytes(image.png)
            paths.append(path)
    return paths
