"""Public audio-text and audio-classification datasets, read in their published layouts.

A **dataset spec** ``NAME:PATH`` or ``NAME:PATH@SPLIT`` addresses one of them wherever a
manifest path is accepted (:func:`clarion.data.manifest.read_manifest` dispatches here when
its argument is not an existing file). ``PATH`` is the dataset's folder (WavCaps: a JSON
file or a folder of JSON files); ``~`` is expanded. ``@SPLIT`` is the text after the last
``@`` when that text holds no path separator. Nothing is downloaded.

=============  ==========================================================================
``clotho``     Clotho v2.1. ``clotho_captions_{development,validation,evaluation}.csv``
               (``file_name,caption_1..caption_5``) in PATH; audio in ``development/``,
               ``clotho_audio_development/`` or ``audio/development/`` (likewise for the
               other splits). Splits ``development|validation|evaluation`` (aliases
               ``train|val|test``), one required. Each clip gives one row per caption.
``audiocaps``  AudioCaps. ``{train,val,test}.csv`` (``audiocap_id,youtube_id,start_time,
               caption``) in PATH or ``PATH/dataset/``; audio in ``PATH/audio/{split}/``,
               ``PATH/{split}/`` or ``PATH/audio/``, named (with or without a leading
               ``Y``) ``{yid}``, ``{yid}_{start}``, ``{yid}_{start}_{end}``,
               ``{yid}_{start_ms}_{end_ms}`` or ``{yid}_{start:.3f}_{end:.3f}``
               (``end = start + 10``), or ``{audiocap_id}``, with extension ``.wav``,
               ``.flac`` or ``.ogg``. Splits ``train|val|test`` (aliases ``development|
               validation|evaluation``), one required. Clips not found are always
               skipped and counted (one warning line), whatever ``on_bad_sample`` says:
               the YouTube-hosted dataset is known to be incomplete.
``esc50``      ESC-50. ``meta/esc50.csv`` (``filename,fold,target,category,...``) and
               ``audio/``. Rows get ``label = category``, ``fold`` and the caption
               "This is a sound of {category with _ as spaces}.". Split ``fold1``..``fold5``
               (or ``1``..``5``); none means all folds.
``us8k``       UrbanSound8K (alias ``urbansound8k``). ``metadata/UrbanSound8K.csv``
               (``slice_file_name,fsID,start,end,salience,fold,classID,class``) and
               ``audio/fold{1..10}/``. ``label = class``, ``fold``, caption as for ESC-50.
               Split ``fold1``..``fold10``; none means all folds.
``wavcaps``    WavCaps JSON ``{"data": [{"id", "caption", "audio"?, ...}]}``. PATH is a JSON
               file or a folder whose ``*.json`` (else ``*/*.json``) files are read; in a
               folder, JSON files without a ``"data"`` key (WavCaps' blacklists) are skipped.
               An entry's audio is its ``audio`` value relative to the JSON's folder when
               that file exists, else ``{id}`` (or ``{id}`` with its audio extension
               replaced) + ``.flac|.wav|.ogg`` in the JSON's folder, its ``audio/``,
               ``audio/{json stem}/`` or ``{json stem}/``. Splits are the JSON files' stems;
               none means all of them. ``line`` is the 1-based index of the entry.
``webdataset`` WebDataset tar shards (alias ``wds``) as written by ``clarion shards``
               (``shards.json``) or LAION-CLAP (``sizes.json``), in PATH or PATH/SPLIT.
               Shards are extracted once to a cache; one row per caption; ``line`` is
               the 1-based sample number. See :mod:`clarion.data.shards`.
=============  ==========================================================================

Labels stay as the datasets spell them (``chirping_birds``, ``dog_bark``); only captions are
made readable. Missing columns raise :class:`ManifestError` naming the file and the columns.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .audio import file_problem
from .manifest import BadRow, Entry, Manifest, ManifestError, build_manifest, read_csv_text, read_text

logger = logging.getLogger("clarion.data")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CLASS_CAPTION = "This is a sound of {label}."
_SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(.+)$", re.DOTALL)
_EXAMPLES = 5


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``NAME:PATH[@SPLIT]``; ``name`` is canonical, ``split`` as written (or None)."""

    name: str
    root: Path
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.root}" + (f"@{self.split}" if self.split else "")


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


# --- spec parsing and the public entry points ------------------------------------------


def parse_spec(text: str | os.PathLike) -> DatasetSpec | None:
    """The spec in ``text``, or None when ``text`` does not look like ``NAME:PATH``.

    Raises :class:`ManifestError` for an unknown ``NAME`` (listing the known ones). The
    split is checked against the dataset's valid splits (not yet against the disk).
    """
    text = os.fspath(text)
    match = _SPEC.match(text)
    if match is None:
        return None
    name, rest = match.group(1).lower(), match.group(2)
    adapter = DATASETS.get(ALIASES.get(name, name))
    if adapter is None:
        raise ManifestError(
            f"{text!r} is neither an existing manifest file nor a dataset spec: unknown dataset {match.group(1)!r}; "
            f"known datasets: {known_datasets()} (spec syntax NAME:PATH or NAME:PATH@SPLIT)"
        )
    split = None
    head, at, tail = rest.rpartition("@")
    if at and head and tail and "/" not in tail and os.sep not in tail:
        rest, split = head, tail
    root = Path(os.path.abspath(os.path.expanduser(rest)))
    if split is not None:
        canonical = adapter.canonical(split)
        if canonical is None:
            raise ManifestError(f"{adapter.name}: unknown split {split!r}; valid splits: {adapter.valid}")
        split = canonical
    return DatasetSpec(adapter.name, root, split)


def is_dataset_spec(text: str | os.PathLike) -> bool:
    """Whether ``text`` is read as a dataset spec (not an existing file, and ``NAME:PATH``-shaped)."""
    return not os.path.isfile(text) and _SPEC.match(os.fspath(text)) is not None


def known_datasets() -> str:
    aliases = {v: k for k, v in ALIASES.items()}
    return ", ".join(f"{n} ({aliases[n]})" if n in aliases else n for n in sorted(DATASETS))


def dataset_splits(spec: DatasetSpec | str) -> list[str]:
    """The splits of ``spec`` found on disk (just ``spec.split`` when it names one)."""
    spec = _as_spec(spec)
    adapter = DATASETS[spec.name]
    _check_root(spec)
    if spec.split is not None:
        return [spec.split]
    return adapter.find_splits(spec.root)


def load_split(spec: DatasetSpec | str) -> SplitData:
    """The unvalidated rows of ``spec`` (one split, or all rows for datasets that allow it)."""
    spec = _as_spec(spec)
    adapter = DATASETS[spec.name]
    _check_root(spec)
    found = adapter.find_splits(spec.root)
    if not found:
        raise ManifestError(f"{adapter.name}: no metadata found under {spec.root}; expected {adapter.expected}")
    if spec.split is None:
        if adapter.needs_split:
            raise ManifestError(
                f"{adapter.name} needs a split: {adapter.name}:{spec.root}@SPLIT with SPLIT one of "
                f"{', '.join(found)} (found); valid splits: {adapter.valid}"
            )
    elif spec.split not in found:
        raise ManifestError(
            f"{adapter.name}: split {spec.split!r} not found under {spec.root}; splits found: {', '.join(found)}"
        )
    return adapter.load(spec.root, spec.split)


def read_dataset(spec: DatasetSpec | str, on_bad_sample: str = "skip", check_audio: bool = True) -> Manifest:
    """The :class:`Manifest` of a dataset spec, validated like a manifest file.

    ``Manifest.path`` is the split's metadata file (the WavCaps folder when several JSON
    files are read). Clips that were never downloaded (AudioCaps) are logged in one line,
    counted in ``Manifest.bad`` as "missing clip (not downloaded)" and skipped under both
    policies; every other bad row follows ``on_bad_sample``.
    """
    data = load_split(spec)
    skipped = []
    if data.missing:
        warn_missing(data)
        skipped = [BadRow(e.source, e.line, e.audio, "missing clip (not downloaded)") for e in data.missing]
    if not data.entries:
        raise ManifestError(
            f"no usable rows in {data.source}: "
            + (f"none of its {len(data.missing)} clips found in {data.searched}" if data.missing else "no data rows")
        )
    return build_manifest(data.source, data.entries, on_bad_sample, check_audio, skipped)


def warn_missing(data: SplitData) -> None:
    clips = list(dict.fromkeys(e.audio for e in data.missing))
    total = len({e.audio for e in data.entries}) + len(clips)
    logger.warning(
        "%s: %d of %d clips not found (%d rows skipped; the dataset is known to be incomplete), e.g. %s; looked in %s",
        data.title, len(clips), total, len(data.missing), ", ".join(clips[:_EXAMPLES]), data.searched,
    )


def _as_spec(spec: DatasetSpec | str) -> DatasetSpec:
    if isinstance(spec, DatasetSpec):
        return spec
    parsed = parse_spec(spec)
    if parsed is None:
        raise ManifestError(f"not a dataset spec: {spec!r}; expected NAME:PATH or NAME:PATH@SPLIT")
    return parsed


def _check_root(spec: DatasetSpec) -> None:
    if not spec.root.exists():
        raise ManifestError(f"{spec.name}: dataset not found: {spec.root}")


# --- shared helpers -----------------------------------------------------------------------


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
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


def _first_dir(candidates: list[Path]) -> Path | None:
    return next((d for d in candidates if d.is_dir()), None)


def _listing(folder: Path) -> set[str]:
    """The names of the regular files in ``folder`` (empty when it is absent)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _readable(label: str) -> str:
    return " ".join(label.replace("_", " ").split())


def _fold_split(split: str, n: int) -> str | None:
    match = re.fullmatch(r"(?:fold)?0*(\d+)", split.strip().lower())
    return f"fold{int(match.group(1))}" if match and 1 <= int(match.group(1)) <= n else None


def _alias_split(aliases: dict[str, str]) -> Callable[[str], str | None]:
    return lambda split: aliases.get(split.strip().lower())


# --- Clotho -------------------------------------------------------------------------------

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
    header, records = _read_csv(path, ("file_name", "caption_1"))
    columns = sorted((c for c in header if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c.split("_")[1]))
    candidates = _clotho_audio_dirs(root, split)
    folder = _first_dir(candidates)
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


# --- AudioCaps ----------------------------------------------------------------------------

AUDIOCAPS_SPLITS = ("train", "val", "test")
_AUDIOCAPS_ALIASES = {
    **{s: s for s in AUDIOCAPS_SPLITS}, "development": "train", "validation": "val", "evaluation": "test",
}


def _audiocaps_csv(root: Path, split: str) -> Path | None:
    return next((p for p in (root / f"{split}.csv", root / "dataset" / f"{split}.csv") if p.is_file()), None)


def _audiocaps_splits(root: Path) -> list[str]:
    return [s for s in AUDIOCAPS_SPLITS if _audiocaps_csv(root, s) is not None]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def audiocaps_stems(youtube_id: str, start_time: str, audiocap_id: str = "") -> list[str]:
    """File names (without extension) an AudioCaps clip may have, most specific first."""
    stems = []
    try:
        start = float(start_time)
    except ValueError:
        start = None
    if start is not None:
        end = start + 10
        stems += [
            f"{youtube_id}_{_number(start)}_{_number(end)}",
            f"{youtube_id}_{start:.3f}_{end:.3f}",
            f"{youtube_id}_{_number(start * 1000)}_{_number(end * 1000)}",
            f"{youtube_id}_{_number(start)}",
        ]
    stems.append(youtube_id)
    stems = [*stems, *(f"Y{s}" for s in stems)]
    if audiocap_id:
        stems.append(audiocap_id)
    return list(dict.fromkeys(stems))


def _audiocaps_load(root: Path, split: str | None) -> SplitData:
    assert split is not None
    path = _audiocaps_csv(root, split)
    assert path is not None
    _, records = _read_csv(path, ("audiocap_id", "youtube_id", "start_time", "caption"))
    folders = [root / "audio" / split, root / split, root / "audio"]
    listings = [(folder, _listing(folder)) for folder in folders]
    entries, missing = [], []
    resolved: dict[tuple[str, str, str], Path | None] = {}
    for line, record in records:
        yid = record["youtube_id"]
        key = (yid, record["start_time"], record["audiocap_id"])
        if yid and key not in resolved:
            names = [stem + ext for stem in audiocaps_stems(*key) for ext in AUDIO_EXTENSIONS]
            resolved[key] = next((folder / n for folder, listed in listings for n in names if n in listed), None)
        found = resolved.get(key)
        entry = Entry(path, line, yid, found, record["caption"])
        if yid and found is None:
            missing.append(entry)
        else:
            entries.append(entry)
    searched = ", ".join(f"{f}/" for f in folders)
    return SplitData("audiocaps", split, path, entries, missing, searched)


# --- ESC-50 and UrbanSound8K --------------------------------------------------------------


def _esc50_csv(root: Path) -> Path:
    return root / "meta" / "esc50.csv"


def _fold_splits(path: Path, required: tuple[str, ...], n: int) -> list[str]:
    if not path.is_file():
        return []
    _, records = _read_csv(path, required)
    folds = {_fold_split(r.get("fold", ""), n) for _, r in records}
    return sorted((f for f in folds if f is not None), key=lambda f: int(f[4:]))


_ESC50_COLUMNS = ("filename", "fold", "category")
_US8K_COLUMNS = ("slice_file_name", "fold", "class")


def _esc50_load(root: Path, split: str | None) -> SplitData:
    path = _esc50_csv(root)
    _, records = _read_csv(path, _ESC50_COLUMNS)
    audio = root / "audio"
    entries = []
    for line, record in records:
        fold = record["fold"]
        if split is not None and _fold_split(fold, 5) != split:
            continue
        name, label = record["filename"], record["category"]
        caption = CLASS_CAPTION.format(label=_readable(label)) if label else ""
        entries.append(Entry(path, line, name, audio / name if name else None, caption, label or None, None, fold or None))
    return SplitData("esc50", split, path, entries)


def _us8k_csv(root: Path) -> Path:
    return root / "metadata" / "UrbanSound8K.csv"


def _us8k_load(root: Path, split: str | None) -> SplitData:
    path = _us8k_csv(root)
    _, records = _read_csv(path, _US8K_COLUMNS)
    entries = []
    for line, record in records:
        fold = record["fold"]
        if split is not None and _fold_split(fold, 10) != split:
            continue
        name, label = record["slice_file_name"], record["class"]
        caption = CLASS_CAPTION.format(label=_readable(label)) if label else ""
        audio = root / "audio" / f"fold{fold}" / name if name and fold else None
        entries.append(Entry(path, line, name, audio, caption, label or None, None, fold or None))
    return SplitData("us8k", split, path, entries)


# --- WavCaps ------------------------------------------------------------------------------


def _wavcaps_files(root: Path) -> list[Path]:
    """The WavCaps JSON files under ``root``: itself, or ``*.json`` in it, else ``*/*.json``,
    leaving out files that hold no ``"data"`` key at all (WavCaps' blacklists)."""
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.json")) or sorted(root.glob("*/*.json"))
    kept = [p for p in files if _mentions_data(p)]
    for p in files:
        if p not in kept:
            logger.info("wavcaps: %s has no 'data' key; not a split, skipped", p)
    return kept


def _mentions_data(path: Path) -> bool:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b'"data"') >= 0
    except (OSError, ValueError):  # unreadable or empty: let the reader report it
        return True


def _wavcaps_data(path: Path) -> list:
    """The ``data`` list of a WavCaps JSON file."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: cannot decode as UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    except RecursionError:
        raise ManifestError(f"{path}: invalid JSON (nested too deeply)") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e})") from e
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        found = ", ".join(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise ManifestError(f'{path}: expected a WavCaps JSON object {{"data": [...]}}; found: {found or "(empty)"}')
    return data


def _wavcaps_splits(root: Path) -> list[str]:
    return list(dict.fromkeys(p.stem for p in _wavcaps_files(root)))


def _wavcaps_load(root: Path, split: str | None) -> SplitData:
    files = [p for p in _wavcaps_files(root) if split is None or p.stem == split]
    entries = []
    for path in files:
        data = _wavcaps_data(path)
        base = path.parent
        folders = [base, base / "audio", base / "audio" / path.stem, base / path.stem]
        listings: list[tuple[Path, set[str]]] | None = None  # listed on first need
        for index, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ManifestError(f"{path}: entry {index} of 'data' is a {type(item).__name__}, expected an object")
            caption = "" if item.get("caption") is None else str(item["caption"]).strip()
            ident = "" if item.get("id") is None else str(item["id"]).strip()
            value = "" if item.get("audio") is None else str(item["audio"]).strip()
            audio = None
            if value and file_problem(base / value) is None:
                audio = Path(os.path.abspath(base / value))
            elif ident:
                if listings is None:
                    listings = [(f, _listing(f)) for f in folders]
                stem = ident[: -len(Path(ident).suffix)] if Path(ident).suffix.lower() in AUDIO_EXTENSIONS else ident
                names = [ident] if ident != stem else []
                names += [stem + ext for ext in AUDIO_EXTENSIONS]
                audio = next((f / n for f, listed in listings for n in names if n in listed), None)
            entries.append(Entry(path, index, value or ident, audio, caption))
    source = files[0] if len(files) == 1 else root
    return SplitData("wavcaps", split, source, entries)


def _wavcaps_canonical(split: str) -> str | None:
    return split.strip() or None


# --- WebDataset shards (clarion.data.shards) ---------------------------------------------


def _webdataset_splits(root: Path) -> list[str]:
    from .shards import shard_splits

    return shard_splits(root)


def _webdataset_load(root: Path, split: str | None) -> SplitData:
    from .shards import load_shard_split

    return load_shard_split(root, split)


DATASETS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("clotho", _clotho_splits, _clotho_load, _alias_split(_CLOTHO_ALIASES),
                "development (train), validation (val), evaluation (test)",
                "clotho_captions_{development,validation,evaluation}.csv", needs_split=True),
        Adapter("audiocaps", _audiocaps_splits, _audiocaps_load, _alias_split(_AUDIOCAPS_ALIASES),
                "train (development), val (validation), test (evaluation)",
                "{train,val,test}.csv in PATH or PATH/dataset", needs_split=True),
        Adapter("esc50", lambda root: _fold_splits(_esc50_csv(root), _ESC50_COLUMNS, 5), _esc50_load,
                lambda s: _fold_split(s, 5), "fold1 .. fold5 (or none: all folds)", "meta/esc50.csv"),
        Adapter("us8k", lambda root: _fold_splits(_us8k_csv(root), _US8K_COLUMNS, 10), _us8k_load,
                lambda s: _fold_split(s, 10), "fold1 .. fold10 (or none: all folds)", "metadata/UrbanSound8K.csv"),
        Adapter("wavcaps", _wavcaps_splits, _wavcaps_load, _wavcaps_canonical,
                "the stem of a JSON file (or none: all of them)", "a JSON file, or *.json or */*.json in PATH"),
        Adapter("webdataset", _webdataset_splits, _webdataset_load, _wavcaps_canonical,
                "a subfolder holding shards, e.g. train, valid, test (or none: PATH's own shards)",
                "shards.json, sizes.json or *.tar in PATH or PATH/SPLIT"),
    )
}
ALIASES = {"urbansound8k": "us8k", "wds": "webdataset"}
