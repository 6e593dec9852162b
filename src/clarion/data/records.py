"""The row types every data source produces, at the bottom of :mod:`clarion.data`.

An :class:`Entry` is a row as read (from a manifest, a corpus' metadata or a shard), before
validation; :class:`SplitData` is one split's entries; :class:`Manifest` holds the validated
:class:`Row` s and the :class:`BadRow` s that were left out; :class:`ManifestError` and
:class:`BadSampleError` are how any source reports problems.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ManifestError(ValueError):
    """A manifest that cannot be read at all."""


class BadSampleError(ManifestError):
    """A bad row (or undecodable clip) met under the policy ``on_bad_sample="fail"``.

    ``bad`` holds the offending :class:`BadRow` when the error was built by :meth:`for_row`.
    The constructor takes a single message so that DataLoader workers re-raise it with
    its type intact.
    """

    hint = "use --on-bad-sample skip to skip such rows"
    bad: BadRow | None = None

    @classmethod
    def for_row(cls, bad: BadRow) -> BadSampleError:
        err = cls(f"{bad}; {cls.hint}")
        err.bad = bad
        return err


@dataclass(frozen=True)
class Row:
    """One usable manifest row; ``line`` is the 1-based line where its record starts."""

    audio: Path
    caption: str
    label: str | None
    lang: str | None
    line: int
    fold: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A row left out of a manifest, and why; ``audio`` is the value as written."""

    manifest: Path
    line: int
    audio: str
    reason: str

    def __str__(self) -> str:
        return f"{self.manifest}:{self.line}: {self.reason} ({self.audio})"


@dataclass
class Manifest:
    """The usable rows of a manifest, and the bad rows that were skipped.

    With clips ``c_0, ..., c_{M-1}`` the distinct ``audio`` paths in order of first
    appearance, row i belongs to clip ``audio_ids[i]``.
    """

    path: Path
    rows: list[Row]
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def clips(self) -> list[Path]:
        return list(dict.fromkeys(row.audio for row in self.rows))

    @property
    def audio_ids(self) -> np.ndarray:
        """int64 [len(rows)]: index into :attr:`clips` of each row's clip."""
        index = {clip: i for i, clip in enumerate(self.clips)}
        return np.fromiter((index[row.audio] for row in self.rows), dtype=np.int64, count=len(self.rows))

    @property
    def captions(self) -> list[str]:
        return [row.caption for row in self.rows]

    @property
    def labels(self) -> list[str | None]:
        """Per clip, the label of its first row."""
        first: dict[Path, str | None] = {}
        for row in self.rows:
            first.setdefault(row.audio, row.label)
        return list(first.values())

    @property
    def folds(self) -> list[str | None]:
        """Per clip, the ``fold`` of its first row."""
        first: dict[Path, str | None] = {}
        for row in self.rows:
            first.setdefault(row.audio, row.fold)
        return list(first.values())

    def subset(self, lang: str | None) -> Manifest:
        """The rows whose ``lang`` equals ``lang`` (possibly none); ``bad`` is kept as is."""
        return Manifest(self.path, [row for row in self.rows if row.lang == lang], list(self.bad))

    def summary(self) -> str:
        text = f"{len(self.rows)} rows, {len(self.clips)} clips, {len(self.bad)} bad rows skipped"
        return f"{text}: {count_reasons(self.bad)}" if self.bad else text


@dataclass(frozen=True)
class Entry:
    """A row as read from a manifest or a dataset's metadata, before validation.

    ``source`` is the file it comes from and ``line`` its 1-based line there (for a JSON
    dataset file, the 1-based index of the entry); ``audio`` is the audio value as written
    (or the id that names the clip) and ``path`` the file it resolves to, or None when no
    file could be found.
    """

    source: Path
    line: int
    audio: str
    path: Path | None
    caption: str
    label: str | None = None
    lang: str | None = None
    fold: str | None = None


def count_reasons(bad: list[BadRow]) -> str:
    """E.g. "3 missing file, 1 empty caption", most frequent first; details in parentheses dropped."""
    counts = Counter(b.reason.split(" (")[0] for b in bad)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


@dataclass
class SplitData:
    """The unvalidated rows of one split (or of a whole dataset), as read from its metadata.

    ``missing`` holds the rows whose clip was never downloaded (AudioCaps): they are
    counted and skipped, not validated. ``source`` is the metadata file (or folder).
    """

    dataset: str
    split: str | None
    source: Path
    entries: list[Entry]
    missing: list[Entry] = field(default_factory=list)
    searched: str = ""  # where missing clips were looked for, for the warning

    @property
    def title(self) -> str:
        return self.dataset + (f"@{self.split}" if self.split else "")
