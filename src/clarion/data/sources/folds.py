"""Classification corpora in cross-validation folds: ESC-50 and UrbanSound8K, one loader.

Both are a metadata CSV with a file name, a ``fold`` and a class column, audio under one
folder; each row becomes an entry with ``label`` = the class as spelled, ``fold``, and the
caption ``"This is a sound of {class with _ as spaces}."``. A split ``foldK`` (or ``K``,
``1 <= K <= n_folds``) keeps one fold; no split keeps them all.

============  =============================  =================  ======  ============================
corpus        metadata                       columns (file,     folds   audio of a row
                                             class)
============  =============================  =================  ======  ============================
``esc50``     ``meta/esc50.csv``             filename, category 5       ``audio/{file}``
``us8k``      ``metadata/UrbanSound8K.csv``  slice_file_name,   10      ``audio/fold{fold}/{file}``
                                             class
============  =============================  =================  ======  ============================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..records import Entry, SplitData
from .common import CLASS_CAPTION, Adapter, fold_split, read_csv, readable


@dataclass(frozen=True)
class FoldCorpus:
    """The layout of one fold corpus (see the module table)."""

    name: str
    metadata: str  # relative to the root
    file_column: str
    label_column: str
    n_folds: int
    audio: Callable[[Path, str, str], Path | None]  # (root, fold, file name) -> the clip (None: cannot say)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.file_column, "fold", self.label_column)

    def splits(self, root: Path) -> list[str]:
        """The folds present in the metadata, as ``foldK``, in numeric order."""
        path = root / self.metadata
        if not path.is_file():
            return []
        _, records = read_csv(path, self.columns)
        folds = {fold_split(r.get("fold", ""), self.n_folds) for _, r in records}
        return sorted((f for f in folds if f is not None), key=lambda f: int(f[4:]))

    def load(self, root: Path, split: str | None) -> SplitData:
        path = root / self.metadata
        _, records = read_csv(path, self.columns)
        entries = []
        for line, record in records:
            fold = record["fold"]
            if split is not None and fold_split(fold, self.n_folds) != split:
                continue
            name, label = record[self.file_column], record[self.label_column]
            caption = CLASS_CAPTION.format(label=readable(label)) if label else ""
            audio = self.audio(root, fold, name) if name else None
            entries.append(Entry(path, line, name, audio, caption, label or None, None, fold or None))
        return SplitData(self.name, split, path, entries)

    def adapter(self) -> Adapter:
        return Adapter(self.name, self.splits, self.load, lambda s: fold_split(s, self.n_folds),
                       f"fold1 .. fold{self.n_folds} (or none: all folds)", self.metadata)


ESC50 = FoldCorpus("esc50", "meta/esc50.csv", "filename", "category", 5,
                   lambda root, fold, name: root / "audio" / name)
US8K = FoldCorpus("us8k", "metadata/UrbanSound8K.csv", "slice_file_name", "class", 10,
                  lambda root, fold, name: root / "audio" / f"fold{fold}" / name if fold else None)
