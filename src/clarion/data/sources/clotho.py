"""Clotho v2.1: ``clotho_captions_{split}.csv`` and one audio folder per split."""

from __future__ import annotations

import re
from pathlib import Path

from ..records import Entry, ManifestError, SplitData
from .common import Adapter, alias_split, first_dir, read_csv

CLOTHO_SPLITS = ("development", "validation", "evaluation")
_CLOTHO_ALIASES = {**{s: s for s in CLOTHO_SPLITS}, "train": "development", "val": "validation", "test": "evaluation"}


def _clotho_csv(root: Path, split: str) -> Path:
    return root / f"clotho_captions_{split}.csv"


def _clotho_audio_dirs(root: Path, split: str) -> list[Path]:
    return [root / split, root / f"clotho_audio_{split}", root / "audio" / split]


def _clotho_splits(root: Path) -> list[str]:
    return [s for s in CLOTHO_SPLITS if _clotho_csv(root, s).is_file()]


def _clotho_load(root: Path, split: str | None) -> SplitData:
    assert split is not None
    path = _clotho_csv(root, split)
    header, records = read_csv(path, ("file_name", "caption_1"))
    columns = sorted((c for c in header if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c.split("_")[1]))
    candidates = _clotho_audio_dirs(root, split)
    folder = first_dir(candidates)
    if folder is None:
        raise ManifestError(
            f"clotho@{split}: no audio folder under {root}; looked for "
            + ", ".join(f"{d.relative_to(root)}/" for d in candidates)
        )
    entries = []
    for line, record in records:
        name = record.get("file_name", "")
        for column in columns:
            entries.append(Entry(path, line, name, folder / name if name else None, record.get(column, "")))
    return SplitData("clotho", split, path, entries)




ADAPTER = Adapter("clotho", _clotho_splits, _clotho_load, alias_split(_CLOTHO_ALIASES),
                  "development (train), validation (val), evaluation (test)",
                  "clotho_captions_{development,validation,evaluation}.csv", needs_split=True)
