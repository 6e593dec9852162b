"""WebDataset tar shards: writing them from any manifest, reading them back, streaming them.

**Layout** (LAION-CLAP's): ``OUT/shard-000000.tar``, ``shard-000001.tar``, ... Each sample
is a group of consecutive tar members sharing a key: ``{key}.flac`` (or ``.wav``), mono,
and ``{key}.json`` holding ``{"text": [captions ...], "original_path": ...}`` plus
``label``, ``lang`` and ``fold`` when the manifest has them (``lang`` is a list parallel
to ``text`` when the captions' languages differ). Keys are the sample's running number
(``000000042``), unique across the shards. ``OUT/shards.json`` lists every shard with its
sample and caption counts, size and sha256, the totals, the source, the settings and the
skipped rows and clips, so a reader knows the sizes without scanning.

**Writing** (:func:`write_shards`, ``clarion shards``): one sample per clip with all its
captions. Every clip is decoded (mono, optionally resampled) and re-encoded: FLAC as
16-bit PCM (samples clipped to [-1, 1]), WAV as 32-bit float (lossless). A shard closes
at ``max_samples_per_shard`` samples or before its file would exceed ``max_shard_bytes``
(the exact tar size is computed ahead; a single sample larger than the limit gets a
shard of its own). Bad rows and undecodable clips follow ``on_bad_sample`` as
everywhere: skipped, logged and counted in ``shards.json``, or the write aborts. Each
shard is written under a hidden temporary name (``.shard-000000.tar.tmp-*``), flushed
and renamed into place, and ``shards.json`` is written last, the same way: an
interrupted write never leaves a torn file under a shard's name, and a folder without
``shards.json`` is an unfinished write.

**Reading as a manifest** (spec ``webdataset:DIR[@SPLIT]``, alias ``wds``; evaluation and
small data): each shard is extracted once into a cache folder (``$CLARION_SHARD_CACHE``,
default ``~/.cache/clarion/shards``) keyed by the shard's absolute path, size and mtime,
extracted into a temporary folder and renamed into place, so concurrent readers are
safe; the manifest's rows point at the extracted files and everything downstream (the
clip cache, ``data check``, evaluation) works on plain files. This was chosen over
teaching :mod:`clarion.data.audio` a ``tar://`` path: rows, the clip cache and the checks
all assume real files. ``SPLIT`` names a subfolder holding shards (LAION-CLAP's
``train/``, ``valid/``, ``test/``); a folder holding shards itself is one split named
after the folder. Besides ``shards.json``, LAION-CLAP's ``sizes.json`` (``{"0.tar": n}``)
is read; a folder with neither is counted by scanning (with a warning).

**Streaming** (:class:`ShardStream`; training on large corpora): per epoch the shard order
is shuffled by ``(seed, epoch)`` and shard i goes to logical worker ``i % W``
(``W = max(1, data.num_workers)``), so each shard is read by exactly one DataLoader
worker. A worker streams its shards' samples through a shuffle buffer (seeded by
``(seed, epoch, worker)``), draws one caption per sample and crops like
:class:`~clarion.data.dataset.AudioTextDataset` (offset from ``(seed, epoch, sample)``),
and yields full batches only (drop_last per worker: up to ``batch_size - 1`` samples
per worker and epoch are left out). The DataLoader takes batches from the workers in
turn; an undecodable sample stays in its batch position as a bad item that ``collate``
drops, so batch boundaries never depend on decoding. Resuming at batch k of an epoch
recomputes from the shard counts which batches each worker had delivered, skips those
samples without decoding them and lets the workers deliver in the order the
uninterrupted run would: exact as long as the shards (and their counts in
``shards.json``), the seed, the batch size, the shuffle buffer and ``data.num_workers``
are unchanged.

The stdlib :mod:`tarfile` is used rather than the ``webdataset`` package (not installed,
and it would add a dependency whose shard splitting and shuffling would have to be
re-derived anyway to make resume exact): writing is a dozen lines, reading is a
sequential scan of members, and every RNG here is one of ours.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset

from .audio import _DECODE_ERRORS, AudioError, _sf_message, decode_audio, fit_length, read_audio
from .dataset import collate
from .manifest import POLICIES, BadRow, BadSampleError, Entry, ManifestError, read_manifest

logger = logging.getLogger("clarion.data")

INDEX = "shards.json"
LAION_INDEX = "sizes.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "FLOAT")}
AUDIO_EXTS = ("flac", "wav", "ogg", "mp3")
SPEC_NAMES = ("webdataset", "wds")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: the key ends at the basename's first dot
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_LOGGED = 20


class ShardError(ManifestError):
    """Shards that cannot be written or read at all (a folder holding shards, a torn shard, ...)."""


# --- writing ------------------------------------------------------------------------------


def _member_bytes(n: int) -> int:
    """Bytes a member of ``n`` data bytes takes in a ustar archive (header + padded data)."""
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def tar_size(member_bytes: int) -> int:
    """File size of a tar whose members take ``member_bytes``: two zero blocks, padded to a record."""
    return -(-(member_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


class _ShardWriter:
    """One shard being written: under a hidden temporary name until :meth:`finish` renames it."""

    def __init__(self, out: Path, number: int, mtime: int):
        self.name = SHARD_NAME.format(number)
        self.path = out / self.name
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{self.name}.tmp-")
        self.tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.mtime = mtime
        self.samples = 0
        self.captions = 0
        self.member_bytes = 0

    def add(self, members: list[tuple[str, bytes]], captions: int) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            self.member_bytes += _member_bytes(len(data))
        self.samples += 1
        self.captions += captions

    def finish(self) -> dict[str, Any]:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return {"name": self.name, "samples": self.samples, "captions": self.captions,
                "bytes": self.path.stat().st_size, "sha256": digest.hexdigest()}

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        except Exception:  # the file may be in any state; it is removed anyway
            pass
        self.tmp.unlink(missing_ok=True)


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
    for p in [*existing, *out.glob(f".{INDEX}.tmp-*"), *out.glob(".shard-*.tar.tmp-*")]:
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
    on_bad_sample: str = "skip",
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
    if on_bad_sample not in POLICIES:
        raise ValueError(f"on_bad_sample must be one of {POLICIES}, got {on_bad_sample!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)

    manifest = read_manifest(source, on_bad_sample)
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
                if len(skipped_clips) <= _LOGGED:
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
            size = sum(_member_bytes(len(data)) for _, data in members)
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
    if len(skipped_clips) > _LOGGED:
        logger.warning("%d more bad clips skipped, not listed", len(skipped_clips) - _LOGGED)
    if oversized:
        logger.warning("%d samples are larger than max_shard_bytes=%d on their own; each got a shard", oversized, max_shard_bytes)
    if not shards:
        raise ShardError(f"no sample could be written from {source}: all {len(clips)} clips were bad")

    from .. import __version__

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
    _write_json_atomic(out / INDEX, index)
    return index


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the shard index ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    samples: int


@dataclass
class ShardIndex:
    """The shards of one folder, in order, with their sample counts."""

    root: Path
    shards: list[ShardInfo]
    source: Path  # shards.json, sizes.json, or the folder when counted by scanning
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def offsets(self) -> list[int]:
        """Global number of each shard's first sample."""
        return np.concatenate([[0], np.cumsum([s.samples for s in self.shards])[:-1]]).astype(int).tolist()

    def summary(self) -> str:
        return f"{self.total} samples in {len(self.shards)} shards ({self.root})"

    def captions(self) -> Iterator[str]:
        """Every caption of every sample, shard by shard (reads only the JSON members)."""
        for shard in self.shards:
            try:
                with tarfile.open(shard.path, "r:") as tar:
                    for member in tar:
                        if member.isfile() and member.name.endswith(".json"):
                            meta = _parse_meta(tar.extractfile(member).read())
                            yield from (meta or {}).get("text", [])
            except (tarfile.TarError, EOFError, OSError) as e:
                logger.warning("%s: captions read up to an unreadable part (%s)", shard.path, e)


def holds_shards(folder: Path) -> bool:
    return folder.is_dir() and ((folder / INDEX).is_file() or (folder / LAION_INDEX).is_file() or any(folder.glob("*.tar")))


def shard_splits(root: Path) -> list[str]:
    """Splits of a webdataset folder: the folder's own name when it holds shards, else its subfolders that do."""
    if holds_shards(root):
        return [root.name]
    return sorted(p.name for p in root.iterdir() if holds_shards(p)) if root.is_dir() else []


def shard_folder(root: Path, split: str | None) -> Path:
    """The folder holding the shards of ``root`` / ``split`` (see :func:`shard_splits`)."""
    if split is None:
        if holds_shards(root):
            return root
        found = shard_splits(root)
        raise ShardError(
            f"{root} holds no shards itself; name a split: webdataset:{root}@SPLIT with SPLIT one of {', '.join(found)}"
            if found else f"no shards under {root}: expected {INDEX}, {LAION_INDEX} or *.tar"
        )
    if holds_shards(root / split):
        return root / split
    if split == root.name and holds_shards(root):
        return root
    raise ShardError(f"webdataset: split {split!r} not found under {root}; splits found: {', '.join(shard_splits(root)) or '(none)'}")


def is_webdataset_spec(text: str | os.PathLike | None) -> bool:
    if text is None or os.path.isfile(text):
        return False
    name, sep, _ = os.fspath(text).partition(":")
    return bool(sep) and name.lower() in SPEC_NAMES


def open_shards(target: str | os.PathLike) -> ShardIndex:
    """The :class:`ShardIndex` of a spec ``webdataset:DIR[@SPLIT]``, a folder or its ``shards.json``."""
    if is_webdataset_spec(target):
        from .datasets import parse_spec

        spec = parse_spec(target)
        assert spec is not None
        if not spec.root.exists():
            raise ShardError(f"webdataset: folder not found: {spec.root}")
        folder = shard_folder(spec.root, spec.split)
    else:
        folder = Path(os.path.abspath(target))
        if folder.is_file():
            folder = folder.parent
        folder = shard_folder(folder, None)
    return _read_index(folder)


def _read_index(folder: Path) -> ShardIndex:
    if (folder / INDEX).is_file():
        meta = _load_json(folder / INDEX)
        try:
            shards = [ShardInfo(folder / s["name"], int(s["samples"])) for s in meta["shards"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{folder / INDEX}: expected {{\"shards\": [{{\"name\", \"samples\"}}, ...]}} ({e!r})") from e
        source = folder / INDEX
    elif (folder / LAION_INDEX).is_file():
        meta = _load_json(folder / LAION_INDEX)
        if not isinstance(meta, dict):
            raise ShardError(f"{folder / LAION_INDEX}: expected {{\"NAME.tar\": samples, ...}}")
        shards = [ShardInfo(folder / name, int(n)) for name, n in sorted(meta.items(), key=lambda kv: _natural(kv[0]))]
        source = folder / LAION_INDEX
    else:
        paths = sorted(folder.glob("*.tar"), key=lambda p: _natural(p.name))
        logger.warning(
            "%s: no %s or %s; counting the samples of %d shards by reading them (a folder written by "
            "`clarion shards` without %s is an unfinished write)", folder, INDEX, LAION_INDEX, len(paths), INDEX,
        )
        shards = [ShardInfo(p, sum(1 for _ in _records(p, "skip"))) for p in paths]
        meta, source = {}, folder
    missing = [s.path.name for s in shards if not s.path.is_file()]
    if missing:
        raise ShardError(f"{source}: {len(missing)} shard(s) listed but not found, e.g. {', '.join(missing[:3])}")
    if not shards:
        raise ShardError(f"{source}: no shards")
    return ShardIndex(folder, shards, source, meta if isinstance(meta, dict) else {})


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: cannot read ({e})") from e


# --- reading samples ----------------------------------------------------------------------


@dataclass
class Record:
    """A sample as stored: its shard, key, global number and members (extension -> bytes)."""

    shard: str
    key: str
    number: int
    members: dict[str, bytes]

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.key}"

    def audio(self) -> tuple[str, bytes] | None:
        return next(((ext, self.members[ext]) for ext in AUDIO_EXTS if ext in self.members), None)


def _records(path: Path, on_bad_sample: str, offset: int = 0) -> Iterator[Record]:
    """The samples of one shard in order (members grouped by key), read sequentially.

    A shard that breaks off (truncated, not a tar) ends after its last whole sample with a
    warning under "skip"; it raises :class:`BadSampleError` under "fail", :class:`ShardError`
    under "raise".
    """
    key, members, number = None, {}, offset
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY.match(member.name)
                if match is None:
                    continue
                data = tar.extractfile(member).read()
                if match.group(1) != key:
                    if key is not None:
                        yield Record(path.name, key, number, members)
                        number += 1
                    key, members = match.group(1), {}
                members[match.group(2).lower()] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        message = f"{path}: shard unreadable after {number - offset} samples ({e})"
        if on_bad_sample == "raise":
            raise ShardError(f"{message}; write it again or leave it out") from e
        if on_bad_sample == "fail":
            raise BadSampleError(f"{message}; {BadSampleError.hint}") from e
        logger.warning("%s; the rest of the shard is skipped", message)
        return
    if key is not None:
        yield Record(path.name, key, number, members)


def _parse_meta(data: bytes | None) -> dict[str, Any] | None:
    """A sample's JSON with ``text`` as a list of non-empty captions, or None when unreadable."""
    if data is None:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    text = meta.get("text", meta.get("caption"))
    text = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    meta["text"] = [str(t).strip() for t in text if t is not None and str(t).strip()]
    return meta


def _sample_problem(record: Record, meta: dict[str, Any] | None) -> str | None:
    if record.audio() is None:
        return f"no audio member ({'/'.join(AUDIO_EXTS)})"
    if meta is None:
        return "no readable JSON member" if "json" not in record.members else "invalid JSON member"
    if not meta["text"]:
        return "empty caption"
    return None


# --- reading as a manifest ------------------------------------------------------------------


def cache_root() -> Path:
    env = os.environ.get("CLARION_SHARD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clarion" / "shards"


def extract_shard(path: Path, cache: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Extract a shard's audio into the cache once; returns the folder and its samples' index.

    The folder is ``CACHE/<sha1 of (absolute path, size, mtime_ns)>/`` with the audio as
    ``{position:06d}.{ext}`` and ``samples.json`` (``key``, ``audio`` file or None, ``meta``).
    Extraction goes to a temporary folder renamed into place. A shard that cannot be read
    to its end raises :class:`ShardError`.
    """
    cache = cache_root() if cache is None else cache
    st = path.stat()
    digest = hashlib.sha1(repr((str(path.resolve()), st.st_size, st.st_mtime_ns)).encode()).hexdigest()
    final = cache / digest
    if (final / "samples.json").is_file():
        return final, _load_json(final / "samples.json")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{digest}.tmp-"))
    try:
        samples = []
        for position, record in enumerate(_records(path, "raise")):
            audio = record.audio()
            name = None
            if audio is not None:
                name = f"{position:06d}.{audio[0]}"
                (tmp / name).write_bytes(audio[1])
            samples.append({"key": record.key, "audio": name, "meta": _parse_meta(record.members.get("json")),
                            "json": "json" in record.members})
        (tmp / "samples.json").write_text(json.dumps(samples, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:  # another process extracted it first
            if not (final / "samples.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, samples


def load_shard_split(root: Path, split: str | None):
    """The unvalidated rows of a webdataset folder (one row per caption), for :mod:`.datasets`."""
    from .datasets import SplitData

    index = _read_index(shard_folder(root, split))
    entries = []
    for shard, offset in zip(index.shards, index.offsets):
        folder, samples = extract_shard(shard.path)
        for position, sample in enumerate(samples):
            number = offset + position + 1
            name = f"{shard.path.name}:{sample['key']}"
            audio = folder / sample["audio"] if sample["audio"] else None
            meta = sample["meta"]
            if meta is None:
                logger.warning("%s: %s", name, "no JSON member" if not sample.get("json") else "invalid JSON member")
                entries.append(Entry(shard.path, number, name, audio, ""))
                continue
            langs = meta.get("lang")
            texts = meta["text"] or [""]
            for i, caption in enumerate(texts):
                lang = langs[i] if isinstance(langs, list) and i < len(langs) else langs if isinstance(langs, str) else None
                entries.append(Entry(shard.path, number, name, audio, caption, _opt(meta.get("label")), _opt(lang),
                                     _opt(meta.get("fold"))))
    return SplitData("webdataset", split, index.source, entries)


def _opt(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


# --- streaming ------------------------------------------------------------------------------


def _shuffled(records: Iterable[Record], size: int, rng: np.random.Generator) -> Iterator[Record]:
    """A shuffle buffer of ``size`` samples: each new sample replaces a random one, which is emitted."""
    if size <= 1:
        yield from records
        return
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], record = record, buffer[j]
        yield record
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def delivery_order(counts: list[int], skip: int) -> tuple[list[int], list[int]]:
    """How a DataLoader that takes batches from its workers in turn delivers after ``skip`` batches.

    ``counts[w]`` is logical worker w's batches. Returns the batches each worker had delivered
    (``done``) and the order in which DataLoader slots must serve the logical workers so that
    the rest comes in the uninterrupted order: those with batches left, starting with the
    one due next, then the others.
    """
    n = len(counts)
    done, w = [0] * n, 0
    for _ in range(min(skip, sum(counts))):
        while done[w] >= counts[w]:
            w = (w + 1) % n
        done[w] += 1
        w = (w + 1) % n
    cycle = [(w + i) % n for i in range(n)]
    active = [v for v in cycle if done[v] < counts[v]]
    return done, active + [v for v in cycle if v not in active]


class ShardStream:
    """Training batches streamed from shards; :meth:`loader` gives one epoch's DataLoader.

    Batches are :func:`~clarion.data.dataset.collate` dicts; ``audio_id`` and ``index`` are
    the samples' global numbers (each sample is its own clip).
    """

    def __init__(
        self,
        index: ShardIndex,
        sample_rate: int,
        clip_seconds: float,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        on_bad_sample: str = "skip",
        max_seconds: float | None = None,
        rank_rows: tuple[int, int] | None = None,
    ):
        if on_bad_sample not in POLICIES:
            raise ValueError(f"on_bad_sample must be one of {POLICIES}, got {on_bad_sample!r}")
        if batch_size < 1 or shuffle_buffer < 0 or num_workers < 0:
            raise ValueError("batch_size must be >= 1, shuffle_buffer and num_workers >= 0")
        self.index = index
        self.sample_rate = sample_rate
        self.n_samples = round(clip_seconds * sample_rate)
        if self.n_samples <= 0:
            raise ValueError(f"clip_seconds must give at least one sample, got {clip_seconds}")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.on_bad_sample = on_bad_sample
        self.max_seconds = max_seconds
        # under torchrun: this process decodes and yields rows [lo, hi) of every global batch
        self.rank_rows = rank_rows or (0, batch_size)
        if self.num_batches(0) == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the samples each of {self.workers} worker(s) streams "
                f"({index.total} samples in {len(index.shards)} shards)"
            )

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def plan(self, epoch: int) -> list[list[int]]:
        """The shards (indices into ``index.shards``) of each logical worker in ``epoch``, in reading order."""
        order = np.random.default_rng([self.seed, epoch, 11]).permutation(len(self.index.shards)).tolist()
        return [order[w :: self.workers] for w in range(self.workers)]

    def worker_batches(self, epoch: int) -> list[int]:
        return [sum(self.index.shards[i].samples for i in shards) // self.batch_size for shards in self.plan(epoch)]

    def num_batches(self, epoch: int, skip: int = 0) -> int:
        return max(0, sum(self.worker_batches(epoch)) - skip)

    def epoch(self, epoch: int, skip: int = 0) -> ShardEpoch:
        """The IterableDataset of ``epoch`` without its first ``skip`` batches."""
        return ShardEpoch(self, epoch, skip)

    def loader(self, epoch: int, skip: int = 0, pin_memory: bool = False) -> tuple[DataLoader, int]:
        """A DataLoader over the batches of ``epoch`` from batch ``skip`` on, and their number.

        Its own generator keeps the DataLoader from drawing its workers' base seed from the
        global torch RNG, which a resumed run restores (dropout) after the loader of the
        interrupted run had already drawn it.
        """
        loader = DataLoader(self.epoch(epoch, skip), batch_size=None, num_workers=self.num_workers,
                            collate_fn=_identity, pin_memory=pin_memory,
                            generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        return loader, self.num_batches(epoch, skip)

    def captions(self) -> Iterator[str]:
        return self.index.captions()


def _identity(batch: dict) -> dict:
    return batch


class ShardEpoch(IterableDataset):
    """One epoch of a :class:`ShardStream`; each DataLoader worker reads its own shards."""

    def __init__(self, stream: ShardStream, epoch: int, skip: int):
        self.stream, self.epoch, self.skip = stream, epoch, skip
        self._warned: set[str] = set()

    def __iter__(self) -> Iterator[dict]:
        s = self.stream
        info = torch.utils.data.get_worker_info()
        slot, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != s.workers:
            raise RuntimeError(f"the stream was planned for {s.workers} worker(s) but runs in {n}")
        counts = s.worker_batches(self.epoch)
        done, slots = delivery_order(counts, self.skip)
        worker = slots[slot]
        offsets = s.index.offsets
        records = (r for i in s.plan(self.epoch)[worker] for r in _records(s.index.shards[i].path, s.on_bad_sample, offsets[i]))
        rng = np.random.default_rng([s.seed, self.epoch, 13, worker])
        first, last = done[worker] * s.batch_size, counts[worker] * s.batch_size
        lo, hi = s.rank_rows
        items: list[dict] = []
        for position, record in enumerate(_shuffled(records, s.shuffle_buffer, rng)):
            if position >= last:
                break
            if position < first:
                continue  # delivered before the interruption: not decoded
            row = position % s.batch_size
            if lo <= row < hi:  # this process's share of the global batch
                items.append(self._item(record))
            if row == s.batch_size - 1:
                yield collate(items)
                items = []

    def _item(self, record: Record) -> dict:
        s = self.stream
        meta = _parse_meta(record.members.get("json"))
        problem = _sample_problem(record, meta)
        if problem is None:
            ext, data = record.audio()
            try:
                wave = decode_audio(io.BytesIO(data), s.sample_rate, s.max_seconds, name=record.name)
            except AudioError as e:
                problem = e.reason
        if problem is not None:
            if s.on_bad_sample == "fail":
                raise BadSampleError(f"{record.name}: {problem}; {BadSampleError.hint}")
            if record.name not in self._warned:
                self._warned.add(record.name)
                logger.warning("skipping bad sample %s: %s", record.name, problem)
            return {"bad": (record.name, problem), "index": record.number}
        rng = np.random.default_rng([s.seed, self.epoch, record.number])
        caption = meta["text"][int(rng.integers(len(meta["text"])))]
        audio = fit_length(wave, s.n_samples, rng)
        return {"audio": audio, "caption": caption, "audio_id": record.number, "index": record.number}


def stream_for(cfg, rank_rows: tuple[int, int] | None = None) -> ShardStream | None:
    """The training stream for ``cfg``, or None for the index-based path.

    ``data.stream`` None (the default) streams exactly when ``data.train`` is a webdataset
    spec; ``false`` reads such a spec as a manifest (extracted, index-based); ``true``
    requires one. ``rank_rows``: a torchrun process's rows of each global batch.
    """
    d = cfg.data
    spec = is_webdataset_spec(d.train)
    stream = spec if d.stream is None else d.stream
    if not stream:
        return None
    if not spec:
        raise ValueError(f"data.stream=true needs --train webdataset:DIR (write shards with `clarion shards`), got {d.train!r}")
    if d.noise_ratio > 0:
        raise ValueError("data.noise_ratio needs a manifest; it is not supported when streaming shards (data.stream=false)")
    if d.pairs != "one_per_clip":
        logger.info("streaming draws one random caption per sample and epoch (data.pairs=%s does not apply)", d.pairs)
    return ShardStream(
        open_shards(d.train), cfg.audio.sample_rate, cfg.audio.clip_seconds, cfg.train.batch_size, cfg.train.seed,
        d.num_workers, d.shuffle_buffer, d.on_bad_sample, cfg.audio.max_seconds, rank_rows,
    )
