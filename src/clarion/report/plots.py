"""The report's figures. Each function takes plain data (lists, dicts, arrays) and returns a
matplotlib :class:`~matplotlib.figure.Figure` drawn on the Agg canvas; :func:`to_png` turns one
into PNG bytes. No pyplot: figures are never registered globally, so nothing needs closing and
no GUI backend is ever touched.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Series = tuple[Sequence[float], Sequence[float]]  # (x, y), or (x, mean, std) for a group's line and ±std band
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
LINESTYLES = ["-", "--", ":", "-."]
AUDIO_COLOUR, TEXT_COLOUR = "#1f77b4", "#d62728"


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per name (the order given), so a run keeps its colour in every figure."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def linestyles_for(names: Sequence[str]) -> dict[str, str]:
    """Solid for the first ten names, then dashed, dotted, dash-dot: with :func:`colours_for`, up to
    40 lines that differ in colour or style."""
    return {name: LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)] for i, name in enumerate(names)}


def legend_layout(names: Sequence[str], width_in: float) -> tuple[int, int, float]:
    """(columns, rows, font size) of a legend below the axes that fits ``width_in`` inches: font 8
    up to 8 entries, else 7; as many columns as the longest name allows (at most 5)."""
    fontsize = 8 if len(names) <= 8 else 7
    longest = max((len(n) for n in names), default=1)
    entry_in = 0.6 + longest * fontsize * 0.55 / 72  # handle + text at ≈ 0.55 em per character
    columns = max(1, min(len(names), 5, int(width_in * 0.95 // entry_in)))
    return columns, -(-len(names) // columns), fontsize


def add_legend(fig: Figure, handles: Mapping[str, object], width_in: float) -> None:
    """A legend of ``handles`` below the axes (outside them), sized by :func:`legend_layout`; the
    figure grows by the legend's height so the axes keep theirs."""
    if not handles:
        return
    columns, rows, fontsize = legend_layout(list(handles), width_in)
    fig.set_figheight(fig.get_figheight() + rows * fontsize * 1.6 / 72 + 0.1)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=columns, fontsize=fontsize)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_figure(
    panels: Sequence[tuple[str, str, Mapping[str, Series]]],
    xlabel: str,
    colours: Mapping[str, str] | None = None,
    columns: int = 2,
    marker: str | None = None,
    integer_x: bool = True,
    linestyles: Mapping[str, str] | None = None,
) -> Figure:
    """One axes per panel ``(title, ylabel, {line name: series})``, one line per name, a shared
    legend below the axes. A series is ``(x, y)``, or ``(x, mean, std)`` for a group of runs: the
    mean line and a shaded ±std band.

    ``integer_x``: ticks at whole numbers only (steps, epochs)."""
    colours, linestyles = dict(colours or {}), dict(linestyles or {})
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    width = 5.2 * columns
    fig = new_figure(width, 3.4 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    handles: dict[str, object] = {}
    for ax, (title, ylabel, lines) in zip(axes, panels):
        for name, data in lines.items():
            xs, ys = np.asarray(data[0], dtype=float), np.asarray(data[1], dtype=float)
            (line,) = ax.plot(xs, ys, label=name, color=colours.get(name), linestyle=linestyles.get(name, "-"),
                              linewidth=1.4, marker=marker or ("o" if len(xs) <= 12 else None), markersize=4)
            if len(data) > 2 and np.any(np.asarray(data[2]) > 0):
                std = np.asarray(data[2], dtype=float)
                ax.fill_between(xs, ys - std, ys + std, color=line.get_color(), alpha=0.18, linewidth=0)
            handles.setdefault(name, line)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    add_legend(fig, handles, width)
    return fig


def modality_gap_figure(
    audio_2d: np.ndarray, text_2d: np.ndarray, caption_clip: np.ndarray, gap: float, title: str,
    explained: Sequence[float] | None = None,
) -> Figure:
    """Audio and text points in the joint PCA plane, a grey line from each caption to its clip."""
    fig = new_figure(5.6, 4.8)
    ax = fig.subplots()
    caption_clip = np.asarray(caption_clip)
    if len(text_2d):
        segments = np.stack([text_2d, audio_2d[caption_clip]], axis=1)  # [Nt, 2, 2]
        xs = np.concatenate([segments[:, :, 0], np.full((len(segments), 1), np.nan)], axis=1).ravel()
        ys = np.concatenate([segments[:, :, 1], np.full((len(segments), 1), np.nan)], axis=1).ravel()
        ax.plot(xs, ys, color="grey", alpha=0.3, linewidth=0.6, zorder=1)
    ax.scatter(audio_2d[:, 0], audio_2d[:, 1], s=14, color=AUDIO_COLOUR, label=f"audio ({len(audio_2d)})", zorder=2)
    ax.scatter(text_2d[:, 0], text_2d[:, 1], s=14, color=TEXT_COLOUR, marker="^", label=f"text ({len(text_2d)})", zorder=2)
    ax.set_title(f"{title}\ngap ‖mean(a) − mean(t)‖ = {gap:.3f}", fontsize=10)
    if explained is not None:
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% of variance)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def heatmap_figure(
    matrix: np.ndarray, title: str, xlabel: str, ylabel: str, colorbar: str, cmap: str = "viridis",
    row_groups: Sequence[int] | None = None, mark_colour: str = "red",
) -> Figure:
    """``matrix`` [rows, cols] as an image; ``row_groups`` (each row's column of truth) marks the true pairs
    with small ``mark_colour`` circles."""
    rows, cols = matrix.shape
    fig = new_figure(min(9.0, 2.5 + 0.14 * cols), min(11.0, 1.8 + 0.09 * rows))
    ax = fig.subplots()
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, interpolation="nearest")
    if row_groups is not None and len(row_groups):
        ax.scatter(np.asarray(row_groups), np.arange(rows), s=min(14.0, max(2.0, 1500 / rows)), facecolors="none", edgecolors=mark_colour, linewidths=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, label=colorbar, shrink=0.8)
    return fig


def recall_bars_figure(
    recalls: Mapping[str, Mapping[str, Mapping[str, float]]],
    colours: Mapping[str, str] | None = None,
    errors: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> Figure:
    """Grouped bars: for each of T2A / A2T R@1, R@5, R@10 one bar per run or group (in %).

    ``recalls`` is ``{name: {"t2a": {"R@1": .., ...}, "a2t": {...}}}`` (fractions); ``errors`` the
    same layout with standard deviations over a group's runs, drawn as error bars.
    """
    groups = [(side, k) for side in ("t2a", "a2t") for k in ("R@1", "R@5", "R@10")]
    names = list(recalls)
    colours, errors = dict(colours or {}), dict(errors or {})
    width_in = min(16.0, max(6.0, 1.2 * len(groups) * max(1, len(names)) * 0.35 + 2))
    fig = new_figure(width_in, 4.0)
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    handles = {}
    for i, name in enumerate(names):
        values = [100 * recalls[name].get(side, {}).get(k, np.nan) for side, k in groups]
        spread = [100 * errors.get(name, {}).get(side, {}).get(k, 0.0) for side, k in groups] if name in errors else None
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=name, color=colours.get(name), yerr=spread,
                      error_kw={"elinewidth": 0.8, "capsize": 1.5})
        handles[name] = bars
        if len(names) <= 12:
            ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    ax.set_xticks(x, [f"{side.upper()} {k}" for side, k in groups])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    add_legend(fig, handles, width_in)
    return fig


def noise_curve_figure(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]) -> Figure:
    """R@1 (%) against the noise ratio: a T2A and an A2T panel, one line per objective label."""
    panels = []
    for side in ("t2a", "a2t"):
        lines = {label: ([p[0] for p in sides[side]], [100 * p[1] for p in sides[side]])
                 for label, sides in curves.items() if sides.get(side)}
        panels.append((f"{side.upper()} R@1", "R@1 (%)", lines))
    return curves_figure(panels, "noise ratio (share of training captions shuffled)", colours_for(list(curves)), marker="o",
                         integer_x=False)
