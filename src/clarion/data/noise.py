"""Noisy correspondence (m-LTM protocol, docs/methods.md §4): shuffle the captions of a fraction of pairs.

A fraction ``p`` of the training rows is drawn (seeded) and their captions are rotated one
place along a random order of those rows, so every drawn row receives another drawn row's
caption. A row counts as corrupted when the caption it receives describes a different clip
(two drawn rows of the same clip can swap captions and stay correct); only those are listed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from .manifest import csv_safe
from .records import Manifest


@dataclass(frozen=True)
class CorruptedPair:
    row: int  # index into the manifest's usable rows
    audio: str
    caption: str  # the caption the row now carries
    original_caption: str
    caption_from_row: int


def corrupt_captions(manifest: Manifest, ratio: float, seed: int) -> tuple[Manifest, list[CorruptedPair]]:
    """A copy of ``manifest`` with the captions of ``round(ratio · rows)`` rows shuffled among themselves."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"noise ratio must be in [0, 1), got {ratio}")
    n = round(ratio * len(manifest.rows))
    if n == 0:
        return manifest, []
    if n < 2:
        raise ValueError(f"noise ratio {ratio} corrupts fewer than 2 of {len(manifest.rows)} rows; nothing to shuffle")
    rng = np.random.default_rng([seed, 1729])
    order = rng.choice(len(manifest.rows), size=n, replace=False)
    source = np.roll(order, -1)  # row order[k] takes the caption of row order[k + 1]
    rows = list(manifest.rows)
    clip_of = manifest.audio_ids
    corrupted = []
    for target, src in zip(order.tolist(), source.tolist()):
        original = manifest.rows[target]
        rows[target] = dataclasses.replace(original, caption=manifest.rows[src].caption)
        if clip_of[target] != clip_of[src]:
            corrupted.append(CorruptedPair(target, str(original.audio), manifest.rows[src].caption, original.caption, src))
    corrupted.sort(key=lambda pair: pair.row)
    return Manifest(manifest.path, rows, list(manifest.bad)), corrupted


def _cell(value: object) -> object:
    return csv_safe(value) if isinstance(value, str) else value


def write_corrupted_pairs(path: Path, pairs: list[CorruptedPair]) -> None:
    """CSV with one line per corrupted pair (columns: the :class:`CorruptedPair` fields), for people:
    text cells are passed through :func:`~clarion.data.manifest.csv_safe` (no spreadsheet formulas)."""
    names = [f.name for f in dataclasses.fields(CorruptedPair)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([_cell(getattr(pair, name)) for name in names] for pair in pairs)
    atomic_write_text(path, text.getvalue())
