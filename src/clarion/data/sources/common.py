"""What every corpus adapter shares: the spec and adapter types, metadata CSVs, folders, labels."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..manifest import read_csv_text, read_text
from ..records import ManifestError, SplitData

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CLASS_CAPTION = "This is a sound of {label}."
SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(.+)$", re.DOTALL)



@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``NAME:PATH[@SPLIT]``; ``name`` is canonical, ``split`` as written (or None)."""

    name: str
    root: Path
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.root}" + (f"@{self.split}" if self.split else "")


@dataclass(frozen=True)
class Adapter:
    """How to read one dataset: the splits found under a root, and one split's rows."""

    name: str
    find_splits: Callable[[Path], list[str]]  # canonical split names present under root
    load: Callable[[Path, str | None], SplitData]  # split already canonical (or None)
    canonical: Callable[[str], str | None]  # a split as written -> canonical, None if invalid
    valid: str  # the valid splits, for error messages
    expected: str  # the metadata it reads, for error messages
    needs_split: bool = False


def read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (start line, record) pairs of a metadata CSV, values stripped; missing columns raise."""
    header, raw = read_csv_text(path, read_text(path))
    records = [(line, {k: (v or "").strip() for k, v in record.items()}) for line, record in raw]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            f"{path}: missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(header) or '(none)'}; required: {', '.join(required)}"
        )
    return header, records


def first_dir(candidates: list[Path]) -> Path | None:
    return next((d for d in candidates if d.is_dir()), None)


def listing(folder: Path) -> set[str]:
    """The names of the regular files in ``folder`` (empty when it is absent)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def readable(label: str) -> str:
    return " ".join(label.replace("_", " ").split())


def fold_split(split: str, n: int) -> str | None:
    match = re.fullmatch(r"(?:fold)?0*(\d+)", split.strip().lower())
    return f"fold{int(match.group(1))}" if match and 1 <= int(match.group(1)) <= n else None


def alias_split(aliases: dict[str, str]) -> Callable[[str], str | None]:
    return lambda split: aliases.get(split.strip().lower())
