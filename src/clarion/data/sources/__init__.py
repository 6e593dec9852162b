"""Public audio-text and audio-classification datasets, read in their published layouts.

A **dataset spec** ``NAME:PATH`` or ``NAME:PATH@SPLIT`` addresses one of them wherever a
manifest path is accepted (:func:`clarion.data.open.open_source` dispatches here when its
argument is not an existing file). One module per corpus adapter (ESC-50 and UrbanSound8K
share :mod:`.folds`). ``PATH`` is the dataset's folder (WavCaps: a JSON
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

import logging
import os
from pathlib import Path

from ...config import OnBadSample
from ..manifest import build_manifest
from ..records import BadRow, Manifest, ManifestError, SplitData
from . import audiocaps, clotho, wavcaps, webdataset
from .common import SPEC, Adapter, DatasetSpec
from .folds import ESC50, US8K

logger = logging.getLogger("clarion.data")

_EXAMPLES = 5
DATASETS: dict[str, Adapter] = {
    a.name: a for a in (clotho.ADAPTER, audiocaps.ADAPTER, ESC50.adapter(), US8K.adapter(), wavcaps.ADAPTER, webdataset.ADAPTER)
}
ALIASES = {"urbansound8k": "us8k", "wds": "webdataset"}


def parse_spec(text: str | os.PathLike) -> DatasetSpec | None:
    """The spec in ``text``, or None when ``text`` does not look like ``NAME:PATH``.

    Raises :class:`ManifestError` for an unknown ``NAME`` (listing the known ones). The
    split is checked against the dataset's valid splits (not yet against the disk).
    """
    text = os.fspath(text)
    match = SPEC.match(text)
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
    return not os.path.isfile(text) and SPEC.match(os.fspath(text)) is not None


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


def read_dataset(spec: DatasetSpec | str, on_bad_sample: OnBadSample = "skip", check_audio: bool = True) -> Manifest:
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
