"""Audio-caption manifests: reading, validation of every row, grouping of captions by clip.

A manifest is a CSV file or a JSON-lines file (``.jsonl`` or ``.json``) with the columns
``audio`` (a path, relative to the manifest's folder or absolute), ``caption`` and the
optional ``label``, ``lang`` and ``fold`` (a cross-validation fold, e.g. ESC-50's 1-5);
other columns are ignored. A clip with several captions
appears in several rows with the same ``audio``. A public dataset in its own layout is read
through a dataset spec ``NAME:PATH[@SPLIT]`` instead (see :mod:`clarion.data.sources`; every
command opens either through :func:`clarion.data.open.open_source`). The row types are in
:mod:`clarion.data.records`.

Structural problems (missing file, unknown extension, missing column, bad text or JSON)
raise :class:`ManifestError`. Bad rows are skipped and logged, or raise
:class:`BadSampleError`, depending on the ``on_bad_sample`` policy.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import soundfile as sf

from ..audio.decode import _DECODE_ERRORS, _sf_message, file_problem
from ..config import OnBadSample
from .records import BadRow, BadSampleError, Entry, Manifest, ManifestError, Row, count_reasons

logger = logging.getLogger("clarion.data")

REQUIRED = ("audio", "caption")
OPTIONAL = ("label", "lang", "fold")
_LOGGED_BAD_ROWS = 20


def read_manifest(path: str | os.PathLike, on_bad_sample: OnBadSample = "skip", check_audio: bool = True) -> Manifest:
    """Read and validate a manifest file (a dataset spec ``NAME:PATH[@SPLIT]`` goes through
    :func:`clarion.data.open.open_source`, which every command uses).

    Each row is checked in turn for: an empty ``audio`` value ("missing audio path"),
    an empty caption ("empty caption"), a missing file ("missing file") and, with
    ``check_audio``, a header soundfile cannot read ("unreadable audio (...)") or one
    that announces no frames ("empty audio (0 samples)"). Under ``on_bad_sample="skip"``
    bad rows are logged, collected in ``Manifest.bad`` and dropped; under ``"fail"`` the
    first one raises :class:`BadSampleError`. A manifest without a usable row raises
    :class:`ManifestError`.
    """
    path, entries = read_entries(path)
    return build_manifest(path, entries, on_bad_sample, check_audio)


def read_entries(path: str | os.PathLike) -> tuple[Path, list[Entry]]:
    """The absolute path of a manifest file and its rows as :class:`Entry` (unvalidated).

    Raises :class:`ManifestError` for a missing file, an unknown extension, bad text or a
    missing ``audio``/``caption`` column.
    """
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    columns, records = _read_records(path)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(
            f"{path}: missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(columns) or '(none)'}; required: {', '.join(REQUIRED)}"
        )
    entries = []
    for line, record in records:
        value = _text(record.get("audio"))
        label, lang, fold = (_text(record.get(c)) or None for c in ("label", "lang", "fold"))
        audio = Path(os.path.abspath(path.parent / value)) if value else None
        entries.append(Entry(path, line, value, audio, _text(record.get("caption")), label, lang, fold))
    return path, entries


def build_manifest(
    path: Path,
    entries: list[Entry],
    on_bad_sample: OnBadSample = "skip",
    check_audio: bool = True,
    skipped: list[BadRow] | None = None,
) -> Manifest:
    """Validate ``entries`` into a :class:`Manifest` at ``path`` under the bad-row policy.

    The checks and their order are those of :func:`read_manifest`; an entry whose ``path``
    is None is a "missing file". ``skipped`` rows (already reported by the caller, e.g.
    AudioCaps clips that were never downloaded) head ``Manifest.bad`` whatever the policy.
    """
    rows: list[Row] = []
    bad: list[BadRow] = list(skipped or [])
    n_bad = 0
    file_checks: dict[Path, str | None] = {}
    for entry in entries:
        audio = entry.path
        if not entry.audio:
            reason = "missing audio path"
        elif not entry.caption:
            reason = "empty caption"
        elif not _is_unicode(entry.caption):
            reason = "caption is not valid Unicode (lone surrogate)"
        elif not _is_unicode(entry.audio):
            reason = "audio path is not valid Unicode (lone surrogate)"
        elif audio is None:
            reason = "missing file"
        else:
            if audio not in file_checks:
                file_checks[audio] = _check_file(audio, check_audio)
            reason = file_checks[audio]
        if reason is None:
            rows.append(Row(audio, entry.caption, entry.label, entry.lang, entry.line, entry.fold))
            continue
        bad_row = BadRow(entry.source, entry.line, entry.audio, reason)
        if on_bad_sample == "fail":
            raise BadSampleError.for_row(bad_row)
        bad.append(bad_row)
        n_bad += 1
        if n_bad <= _LOGGED_BAD_ROWS:
            logger.warning("skipping bad row %s", bad_row)

    if n_bad > _LOGGED_BAD_ROWS:
        logger.warning(
            "%s: %d more bad rows skipped, not listed; in all %s",
            path, n_bad - _LOGGED_BAD_ROWS, count_reasons(bad),
        )
    if not rows:
        raise ManifestError(f"no usable rows in {path}: {count_reasons(bad) if bad else 'no data rows'}")
    return Manifest(path, rows, bad)


def write_manifest(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows (dicts) as CSV, or as JSON lines for ``.jsonl``/``.json``.

    Columns are ``audio`` and ``caption``, plus ``label``, ``lang`` and ``fold`` when any row has one.
    """
    path = Path(path)
    kind = _kind(path)
    columns = list(REQUIRED) + [c for c in OPTIONAL if any(row.get(c) is not None for row in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if kind == "csv":
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else str(row[c]) for c in columns])
        else:
            for row in rows:
                record = {c: None if row.get(c) is None else str(row[c]) for c in columns}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: str) -> str:
    """``value`` for a CSV cell meant for people: text a spreadsheet would evaluate as a formula
    (starting with ``=``, ``+``, ``-``, ``@``, tab or CR; "CSV injection") gets a leading ``'``.
    Manifests themselves are written verbatim (:func:`write_manifest`): they are data."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise ManifestError(f"{path}: unknown manifest extension {suffix!r}; use .csv, .jsonl or .json (JSON lines)")


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The columns found and the (start line, record) pairs of a manifest file."""
    kind = _kind(path)
    text = read_text(path)
    return read_csv_text(path, text) if kind == "csv" else _read_jsonl(path, text)


def read_text(path: Path) -> str:
    """A metadata file's text (UTF-8, optional BOM); unreadable or undecodable files raise ManifestError."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e})") from e
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: cannot decode as UTF-8 ({e})") from e


def read_csv_text(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the (start line, record) pairs of CSV ``text`` read from ``path``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    records: list[tuple[int, dict]] = []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields:
                continue
            if header is None:
                header = [name.strip() for name in fields]
            else:
                records.append((start, dict(zip(header, fields))))
    except csv.Error as e:
        raise ManifestError(f"{path}:{reader.line_num}: invalid CSV ({e})") from e
    return header or [], records


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: dict[str, None] = {}
    records: list[tuple[int, dict]] = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{line}: invalid JSON ({e.msg} at column {e.colno})") from e
        except RecursionError:
            raise ManifestError(f"{path}:{line}: invalid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        columns.update(dict.fromkeys(record))
        records.append((line, record))
    return list(columns), records


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (JSON's ``"\\ud800"`` decodes to a lone surrogate, which does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _check_file(audio: Path, check_audio: bool) -> str | None:
    """Why the file cannot be used, or None."""
    problem = file_problem(audio)
    if problem == "file not found":
        return "missing file"
    if problem is not None:
        return problem
    if not check_audio:
        return None
    try:
        info = sf.info(str(audio))
    except _DECODE_ERRORS as e:
        return f"unreadable audio ({_sf_message(e)})"
    if info.frames == 0:
        return "empty audio (0 samples)"
    return None
