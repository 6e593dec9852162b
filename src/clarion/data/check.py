"""``clarion data check``: validate every row and clip of a manifest or a dataset spec.

Row problems (one per row): ``missing_audio_path``, ``empty_caption``, ``duplicate_row`` (the
same audio file and caption as an earlier row of the split; one file with several different
captions is normal). Clip problems (one per clip and split, at the line of its first row):
``missing_file``, ``missing_clip`` (an AudioCaps clip that was never downloaded; expected, so
``--strict`` ignores it), ``corrupt`` (header or data soundfile cannot decode, or fewer frames
than the header announces), ``empty_audio``, ``nan_samples`` (NaN/Inf), ``silent`` (all zeros,
or RMS below ``silence_db`` dBFS), ``too_short`` (under ``min_seconds``), ``too_long`` (over
``max_seconds``, the default decode cap ``audio.max_seconds``) and ``duplicate_audio`` (the
same decoded samples, rate and channel count as another file of the checked set, across
splits too; silent clips are left out of that comparison).

Each distinct file is inspected once however many rows and splits name it: one soundfile
handle reads the header, then decodes the samples in blocks (skipped with ``decode=False``, which checks headers
only: no NaN, silence or duplicate-content checks). A dataset spec without ``@SPLIT`` is
checked split by split (ESC-50 and UrbanSound8K by fold, WavCaps by JSON file).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.decode import _DECODE_ERRORS, _sf_message, file_problem
from .manifest import csv_safe, read_entries
from .records import Entry, ManifestError
from .sources import DatasetSpec, dataset_splits, load_split, parse_spec

logger = logging.getLogger("clarion.data")

KINDS = (
    "missing_audio_path", "empty_caption", "duplicate_row", "missing_file", "missing_clip", "corrupt",
    "empty_audio", "nan_samples", "silent", "too_short", "too_long", "duplicate_audio",
)
NOT_STRICT = frozenset({"missing_clip"})  # expected in AudioCaps; reported, never fails --strict
_BLOCK = 1 << 18  # frames per decoded block
_LISTED = 20  # problems printed by format_report


@dataclass(frozen=True)
class Problem:
    """One problem: ``file`` is the audio as written (row problems) or the resolved file."""

    split: str
    source: Path
    line: int
    file: str
    kind: str
    detail: str


@dataclass
class ClipInfo:
    """What inspecting one file found."""

    path: Path
    sample_rate: int | None = None
    channels: int | None = None
    seconds: float | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    digest: str | None = None  # of the decoded samples, when they are usable and not silent


@dataclass
class SplitReport:
    name: str
    source: Path
    rows: int = 0
    clips: int = 0
    problems: list[Problem] = field(default_factory=list)
    sample_rates: Counter = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)


@dataclass
class CheckResult:
    target: str
    splits: list[SplitReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.splits for p in s.problems]

    @property
    def failing(self) -> list[Problem]:
        """The problems ``--strict`` counts (all but :data:`NOT_STRICT`)."""
        return [p for p in self.problems if p.kind not in NOT_STRICT]


def inspect_clip(
    path: Path, min_seconds: float = 0.1, max_seconds: float | None = 600.0, silence_db: float = -60.0, decode: bool = True
) -> ClipInfo:
    """Check one file: its header, then (with ``decode``) every sample, in blocks, through one open handle."""
    info = ClipInfo(path)
    problem = file_problem(path)
    if problem is not None:
        info.problems.append(("missing_file", problem))
        return info
    try:
        f = sf.SoundFile(str(path))
    except _DECODE_ERRORS as e:
        info.problems.append(("corrupt", f"cannot read header ({_sf_message(e)})"))
        return info
    with f:
        info.sample_rate, info.channels, announced = f.samplerate, f.channels, f.frames
        if announced == 0:
            info.problems.append(("empty_audio", "0 samples"))
            return info
        frames = announced
        if decode:
            frames, sumsq, peak, nonfinite = 0, 0.0, 0.0, 0
            digest = hashlib.sha1(f"{f.samplerate},{f.channels};".encode())
            try:
                for block in f.blocks(blocksize=_BLOCK, dtype="float32", always_2d=True):
                    frames += block.shape[0]
                    finite = np.isfinite(block)
                    if not finite.all():
                        nonfinite += int(block.size - finite.sum())
                        block = np.where(finite, block, 0.0).astype(np.float32)
                    if block.size:
                        sumsq += float(np.square(block, dtype=np.float64).sum())
                        peak = max(peak, float(np.abs(block).max()))
                    digest.update(block.tobytes())
            except _DECODE_ERRORS as e:
                info.problems.append(("corrupt", f"decoding failed after {frames} frames ({_sf_message(e)})"))
                return info
            if frames == 0:
                info.problems.append(("empty_audio", f"header announces {announced} frames, none decoded"))
                return info
            if frames < 0.99 * announced:
                info.problems.append(("corrupt", f"truncated: header announces {announced} frames, decoded {frames}"))
            if nonfinite:
                info.problems.append(("nan_samples", f"{nonfinite} NaN/Inf samples"))
            elif peak == 0.0:
                info.problems.append(("silent", "all samples are zero"))
            else:
                rms_db = 10 * math.log10(sumsq / (frames * f.channels))
                if rms_db < silence_db:
                    info.problems.append(("silent", f"RMS {rms_db:.1f} dBFS below {silence_db:g} dBFS"))
                else:
                    info.digest = digest.hexdigest()
    info.seconds = frames / info.sample_rate
    if info.seconds < min_seconds:
        info.problems.append(("too_short", f"{info.seconds:.3f} s < {min_seconds:g} s"))
    if max_seconds is not None and info.seconds > max_seconds:
        info.problems.append(("too_long", f"{info.seconds:.1f} s > {max_seconds:g} s"))
    return info


def _splits(target: str | os.PathLike) -> list[tuple[str, Path, list[Entry], list[Entry]]]:
    """(name, source, entries, missing clips) of every split to check."""
    if os.path.isfile(target):
        path, entries = read_entries(target)
        return [(path.name, path, entries, [])]
    spec = parse_spec(target)
    if spec is None:
        raise ManifestError(f"manifest not found: {os.path.abspath(target)} (nor a dataset spec NAME:PATH[@SPLIT])")
    out = []
    for split in dataset_splits(spec):
        data = load_split(DatasetSpec(spec.name, spec.root, split))
        out.append((data.title, data.source, data.entries, data.missing))
    if not out:
        raise ManifestError(f"{spec.name}: no split found under {spec.root}")
    return out


def check_data(
    target: str | os.PathLike,
    min_seconds: float = 0.1,
    max_seconds: float | None = 600.0,
    silence_db: float = -60.0,
    decode: bool = True,
    workers: int = 1,
) -> CheckResult:
    """Check every row of a manifest or a dataset spec (every split it finds without ``@SPLIT``).

    Structural errors (no metadata, missing columns) raise :class:`ManifestError`.
    """
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    splits = _splits(target)
    reports: list[SplitReport] = []
    first_seen: dict[Path, tuple[int, int, Path]] = {}  # file -> (split index, line, source) where first named
    per_split: list[dict[Path, tuple[int, int, Path]]] = []  # per split: file -> (first line, rows, source)
    for index, (name, source, entries, missing) in enumerate(splits):
        report = SplitReport(name, source, rows=len(entries) + len(missing))
        reports.append(report)
        clips: dict[Path, tuple[int, int, Path]] = {}
        unresolved: dict[str, tuple[int, int, Path]] = {}
        seen_rows: dict[tuple[object, str], int] = {}
        for e in entries:
            if not e.audio:
                report.problems.append(Problem(name, e.source, e.line, "", "missing_audio_path", "empty audio value"))
                continue
            key = e.path if e.path is not None else e.audio
            if e.path is not None:
                line, n, src = clips.get(e.path, (e.line, 0, e.source))
                clips[e.path] = (line, n + 1, src)
                first_seen.setdefault(e.path, (index, e.line, e.source))
            else:
                line, n, src = unresolved.get(e.audio, (e.line, 0, e.source))
                unresolved[e.audio] = (line, n + 1, src)
            if not e.caption:
                report.problems.append(Problem(name, e.source, e.line, str(key), "empty_caption", "empty caption"))
            elif (key, e.caption) in seen_rows:
                report.problems.append(Problem(name, e.source, e.line, str(key), "duplicate_row",
                                               f"same audio and caption as line {seen_rows[key, e.caption]}"))
            else:
                seen_rows[key, e.caption] = e.line
        for audio, (line, n, src) in unresolved.items():
            report.problems.append(Problem(name, src, line, audio, "missing_file", f"no file found ({_rows(n)})"))
        missing_clips: dict[str, tuple[int, int, Path]] = {}
        for e in missing:
            line, n, src = missing_clips.get(e.audio, (e.line, 0, e.source))
            missing_clips[e.audio] = (line, n + 1, src)
        for audio, (line, n, src) in missing_clips.items():
            report.problems.append(Problem(name, src, line, audio, "missing_clip", f"not downloaded ({_rows(n)})"))
        report.clips = len(clips) + len(unresolved) + len(missing_clips)
        per_split.append(clips)

    infos = _inspect_all(list(first_seen), min_seconds, max_seconds, silence_db, decode, workers)
    for index, clips in enumerate(per_split):
        report = reports[index]
        for path, (line, n, src) in clips.items():
            info = infos[path]
            if info.sample_rate is not None and info.seconds is not None:
                report.sample_rates[info.sample_rate] += 1
                report.seconds.append(info.seconds)
            for kind, detail in info.problems:
                report.problems.append(Problem(report.name, src, line, str(path), kind,
                                               detail if n == 1 else f"{detail} ({_rows(n)})"))
    by_digest: dict[str, Path] = {}
    for path in first_seen:  # in order of first appearance, across splits
        digest = infos[path].digest
        if digest is None:
            continue
        if digest in by_digest:
            index, line, src = first_seen[path]
            reports[index].problems.append(Problem(reports[index].name, src, line, str(path),
                                                   "duplicate_audio", f"same samples as {by_digest[digest]}"))
        else:
            by_digest[digest] = path
    order = {kind: i for i, kind in enumerate(KINDS)}
    for report in reports:
        report.problems.sort(key=lambda p: (p.line, order.get(p.kind, len(order))))
    return CheckResult(os.fspath(target), reports)


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def _inspect_all(
    paths: list[Path], min_seconds: float, max_seconds: float | None, silence_db: float, decode: bool, workers: int
) -> dict[Path, ClipInfo]:
    def one(path: Path) -> ClipInfo:
        return inspect_clip(path, min_seconds, max_seconds, silence_db, decode)

    out: dict[Path, ClipInfo] = {}
    started = last = time.monotonic()
    with ThreadPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for i, info in enumerate(pool.map(one, paths), start=1):
            out[info.path] = info
            now = time.monotonic()
            if now - last > 10:
                last = now
                logger.info("checked %d/%d files (%.0f s)", i, len(paths), now - started)
    return out


class _Serial:
    """The part of an executor :func:`_inspect_all` uses, run in this thread."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def write_problems(path: str | os.PathLike, result: CheckResult) -> Path:
    """Write every problem as CSV: ``split,file,source,line,kind,detail``, for people: a text cell
    that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR) is prefixed with ``'``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "file", "source", "line", "kind", "detail"])
        for p in result.problems:
            writer.writerow([csv_safe(p.split), csv_safe(p.file), csv_safe(str(p.source)), p.line, p.kind, csv_safe(p.detail)])
    return path


def _count_text(counts: Counter) -> str:
    order = {kind: i for i, kind in enumerate(KINDS)}
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], order.get(kv[0], 99))))


def _total(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def format_report(result: CheckResult) -> str:
    """The per-split summary (rows, clips, durations, sample rates, problems by kind) and the first problems."""
    lines = []
    for s in result.splits:
        lines.append(f"{s.name} ({s.source})")
        text = f"  {s.rows} rows, {s.clips} clips"
        if s.seconds:
            text += (f", {_total(sum(s.seconds))}; duration {min(s.seconds):.2f}-{max(s.seconds):.2f} s"
                     f" (median {statistics.median(s.seconds):.2f} s)")
        lines.append(text)
        if s.sample_rates:
            rates = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(s.sample_rates.items(), key=lambda kv: -kv[1]))
            lines.append(f"  sample rates: {rates}")
        lines.append(f"  problems: {_count_text(s.counts()) or 'none'}")
    problems = result.problems
    if problems:
        lines.append(f"{len(problems)} problem(s): {_count_text(Counter(p.kind for p in problems))}")
        for p in problems[:_LISTED]:
            lines.append(f"  {p.source}:{p.line}: {p.kind}: {p.detail} ({p.file})")
        if len(problems) > _LISTED:
            lines.append(f"  ... {len(problems) - _LISTED} more")
        if len(result.failing) < len(problems):
            lines.append("missing_clip (an AudioCaps clip never downloaded) is expected and not counted by --strict")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


class DataCheckError(ManifestError):
    """Training data with problems, refused by ``clarion train --validate-data`` (``data.validate=fail``)."""


def validate_training_data(cfg) -> list[CheckResult]:
    """Check ``cfg.data.train`` and ``cfg.data.val`` as ``clarion data check --strict`` would, with
    ``audio.max_seconds`` as the length limit. ``data.validate="fail"`` raises :class:`DataCheckError`
    listing the problems; ``"warn"`` logs the report and returns."""
    results = []
    for role, target in (("train", cfg.data.train), ("val", cfg.data.val)):
        if not target:
            continue
        result = check_data(target, max_seconds=cfg.audio.max_seconds)
        results.append(result)
        logger.info("data check of %s (%s):\n%s", role, target, format_report(result))
        failing = result.failing
        if not failing:
            continue
        shown = "\n".join(f"  {p.source}:{p.line}: {p.kind}: {p.detail} ({p.file})" for p in failing[:5])
        more = f"\n  ... {len(failing) - 5} more" if len(failing) > 5 else ""
        summary = f"data check found {len(failing)} problem(s) in the {role} data {target}: " \
                  f"{_count_text(Counter(p.kind for p in failing))}\n{shown}{more}"
        if cfg.data.validate == "fail":
            raise DataCheckError(
                f"{summary}\nrefusing to train: fix or remove these rows (full list: clarion data check {target} "
                "--csv problems.csv), or pass --validate-data-warn to train anyway"
            )
        logger.warning("%s\ntraining anyway (--validate-data-warn)", summary)
    return results
