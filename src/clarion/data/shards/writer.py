"""Writing webdataset shards from any manifest or dataset spec (``clarion shards``).

**Writing** (:func:`write_shards`, ``clarion shards``): one sample per clip with all its
captions. Every clip is decoded (mono, optionally resampled) and re-encoded: FLAC as
16-bit PCM (samples clipped to [-1, 1]), WAV as 32-bit float (lossless). A shard closes
at ``max_samples_per_shard`` samples or before its file would exceed ``max_shard_bytes``
(the exact tar size is computed ahead; a single sample larger than the limit gets a
shard of its own). Bad rows and undecodable clips follow ``on_bad_sample`` as
everywhere: skipped, logged and counted in ``shards.json``, or the write aborts. Each
shard is written under a hidden temporary name (``.shard-000000.tar.*.tmp``), flushed
and renamed into place, and ``shards.json`` is written last, the same way: an
interrupted write never leaves a torn file under a shard's name, and a folder without
``shards.json`` is an unfinished write.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ...audio import AudioError, read_audio
from ...audio.decode import _DECODE_ERRORS, _sf_message
from ...config import OnBadSample
from ...files import AtomicFile, atomic_write_json, sha256
from ...version import __version__
from ..open import open_source
from ..records import BadRow, BadSampleError
from .format import LOGGED, FORMATS, INDEX, SHARD_NAME, ShardError, member_bytes, logger, tar_size


class _ShardWriter:
    """One shard being written under a hidden temporary name (:class:`~clarion.files.AtomicFile`)
    until :meth:`finish` renames it into place."""

    def __init__(self, out: Path, number: int, mtime: int):
        self.name = SHARD_NAME.format(number)
        self.path = out / self.name
        self._target = AtomicFile(self.path)
        self._tar = tarfile.open(fileobj=self._target.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.mtime = mtime
        self.samples = 0
        self.captions = 0
        self.member_bytes = 0

    def add(self, members: list[tuple[str, bytes]], captions: int) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            self.member_bytes += member_bytes(len(data))
        self.samples += 1
        self.captions += captions

    def finish(self) -> dict[str, Any]:
        self._tar.close()
        self._target.commit()
        return {"name": self.name, "samples": self.samples, "captions": self.captions,
                "bytes": self.path.stat().st_size, "sha256": sha256(self.path)}

    def abort(self) -> None:
        try:
            self._tar.close()
        except Exception:  # the file may be in any state; it is removed anyway
            pass
        self._target.abort()


def _encode(wave: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    container, subtype = FORMATS[audio_format]
    if subtype.startswith("PCM"):
        wave = np.clip(wave, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def _load_clip(path: Path, sample_rate: int | None, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The clip as mono float32 at ``sample_rate`` (default: the file's own rate), and that rate."""
    if sample_rate is None:
        try:
            sample_rate = sf.info(str(path)).samplerate
        except _DECODE_ERRORS as e:
            raise AudioError(path, f"cannot decode ({_sf_message(e)})") from e
    return read_audio(path, sample_rate, max_seconds), sample_rate


def _clear(out: Path, overwrite: bool) -> None:
    existing = sorted(out.glob("shard-*.tar")) + [p for p in (out / INDEX,) if p.exists()]
    if existing and not overwrite:
        raise ShardError(f"{out} already holds shards ({existing[0].name}, ...); choose another folder or pass --overwrite")
    for p in [*existing, *out.glob(f".{INDEX}.*.tmp"), *out.glob(".shard-*.tar.*.tmp")]:
        p.unlink()


def write_shards(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_samples_per_shard: int = 1000,
    max_shard_bytes: int | None = None,
    audio_format: str = "flac",
    sample_rate: int | None = None,
    max_seconds: float | None = None,
    on_bad_sample: OnBadSample = "skip",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the manifest or dataset spec ``source`` as WebDataset shards into ``out_dir``.

    One sample per clip (all its captions in ``"text"``), in the manifest's clip order.
    ``sample_rate`` resamples before writing (default: each file's own rate);
    ``max_seconds`` keeps only the start of longer clips. Returns the contents of
    ``shards.json``. Raises :class:`ShardError` when ``out_dir`` already holds shards
    (unless ``overwrite``: they are removed first) and :class:`BadSampleError` for the
    first bad row or clip under ``on_bad_sample="fail"``.
    """
    if max_samples_per_shard < 1:
        raise ValueError(f"max_samples_per_shard must be at least 1, got {max_samples_per_shard}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if audio_format not in FORMATS:
        raise ValueError(f"audio format must be one of {', '.join(FORMATS)}, got {audio_format!r}")
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)

    manifest = open_source(source, on_bad_sample)
    clips: dict[Path, list] = {}
    for row in manifest.rows:
        clips.setdefault(row.audio, []).append(row)
    skipped_clips: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    mtime = int(time.time())
    writer: _ShardWriter | None = None
    oversized = written = 0
    try:
        for clip, rows in clips.items():
            try:
                wave, rate = _load_clip(clip, sample_rate, max_seconds)
            except AudioError as e:
                bad = BadRow(manifest.path, rows[0].line, str(clip), e.reason)
                if on_bad_sample == "fail":
                    raise BadSampleError.for_row(bad) from e
                skipped_clips.append({"source": f"{manifest.path}:{rows[0].line}", "audio": str(clip), "reason": e.reason})
                if len(skipped_clips) <= LOGGED:
                    logger.warning("skipping bad clip %s", bad)
                continue
            key = f"{written:09d}"
            meta: dict[str, Any] = {"text": [r.caption for r in rows], "original_path": str(clip)}
            for column in ("label", "fold"):
                value = next((getattr(r, column) for r in rows if getattr(r, column) is not None), None)
                if value is not None:
                    meta[column] = value
            langs = [r.lang for r in rows]
            if any(lang is not None for lang in langs):
                meta["lang"] = langs[0] if len(set(langs)) == 1 else langs
            members = [(f"{key}.{audio_format}", _encode(wave, rate, audio_format)),
                       (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))]
            size = sum(member_bytes(len(data)) for _, data in members)
            if writer is not None and writer.samples and (
                writer.samples >= max_samples_per_shard
                or (max_shard_bytes is not None and tar_size(writer.member_bytes + size) > max_shard_bytes)
            ):
                shards.append(writer.finish())
                writer = None
            if writer is None:
                writer = _ShardWriter(out, len(shards), mtime)
            if max_shard_bytes is not None and tar_size(size) > max_shard_bytes:
                oversized += 1
            writer.add(members, len(rows))
            written += 1
        if writer is not None:
            shards.append(writer.finish())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    if len(skipped_clips) > LOGGED:
        logger.warning("%d more bad clips skipped, not listed", len(skipped_clips) - LOGGED)
    if oversized:
        logger.warning("%d samples are larger than max_shard_bytes=%d on their own; each got a shard", oversized, max_shard_bytes)
    if not shards:
        raise ShardError(f"no sample could be written from {source}: all {len(clips)} clips were bad")

    index = {
        "format": "webdataset", "layout": "{key}.%s + {key}.json" % audio_format, "version": 1,
        "clarion": __version__, "source": str(source), "manifest": str(manifest.path),
        "settings": {
            "format": audio_format, "subtype": FORMATS[audio_format][1], "channels": 1, "sample_rate": sample_rate,
            "max_seconds": max_seconds, "max_samples_per_shard": max_samples_per_shard,
            "max_shard_bytes": max_shard_bytes, "on_bad_sample": on_bad_sample,
        },
        "shards": shards,
        "total_samples": sum(s["samples"] for s in shards),
        "total_captions": sum(s["captions"] for s in shards),
        "skipped_rows": [{"source": f"{b.manifest}:{b.line}", "audio": b.audio, "reason": b.reason} for b in manifest.bad],
        "skipped_clips": skipped_clips,
        "skipped": {"rows": len(manifest.bad), "clips": len(skipped_clips),
                    "by_reason": dict(Counter(s["reason"].split(" (")[0] for s in
                                              [*({"reason": b.reason} for b in manifest.bad), *skipped_clips]))},
    }
    atomic_write_json(out / INDEX, index)
    return index
