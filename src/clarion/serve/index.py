"""A search index over a folder of audio files (or a manifest's clips): text-to-audio and audio-to-audio search.

Layout of an index directory (everything a search needs; the training run is not):

    INDEX/index.json      {"format": "clarion-index", "version": 2, "audio_root": "/abs/folder",
                           "source": folder or manifest/spec, "model_fingerprint": sha256,
                           "long": how files were read (ClarionModel.long_settings), "windows": bool,
                           "embed_dim": d, "count": N, "window_count": W, "skipped": n, "updated": ISO
                           time}; written last, so it describes complete files
    INDEX/entries.csv     id,path,size,mtime_ns,duration,caption: one row per indexed file, path
                          relative to audio_root (POSIX), id = row = position in embeddings.npy,
                          duration in seconds (whole file), caption the manifest's first caption
                          of the clip (empty for a folder)
    INDEX/embeddings.npy  float32 [N, d], unit-norm rows (pooled over windows in windows mode)
    INDEX/thumbs.npy      uint8 [N, 64] waveform peaks over the whole file (the page's thumbnail)
    INDEX/windows.npy     float32 [W, d] every window's embedding (``windows`` only)
    INDEX/window_map.npy  float64 [W, 2] (entry id, window start in seconds) per window (``windows`` only)
    INDEX/skipped.csv     path,reason: files of the last build that could not be decoded
    INDEX/model/          the model export (:meth:`clarion.api.ClarionModel.save`)
    INDEX/partial/        an unfinished build (only while one runs or after it was killed):
                          state.json (fingerprint, settings) and per chunk of files
                          chunk-NNNNN.npy [n, d] (+ chunk-NNNNN.windows.npy) then chunk-NNNNN.json
                          (its entries, thumbnails, window starts, skipped files), each written
                          atomically, the .json last; removed once index.json is written

Version 1 indexes (no duration, caption or thumbnails) are still read.

:func:`build_index` is incremental: a file whose size and mtime are unchanged keeps its
embedding, new and changed files are embedded, removed files are dropped. It is resumable: files
are embedded ``chunk_files`` at a time and each chunk is committed under ``partial/``; a build
killed at any point and run again with the same model and settings embeds only the files no
committed chunk holds (other settings: the partial build is discarded, with a message). Ids are
positions in the sorted list of paths, so they may shift when files come and go. An index is tied
to one model (:attr:`clarion.api.ClarionModel.fingerprint`), one source and one way of reading
long files; changing any needs ``rebuild``.

Search is exact: cosine top-k by chunked matrix products (:func:`top_k`, memory
O(Q · (chunk + k))), or FAISS ``IndexFlatIP`` (also exact) when ``faiss`` is installed and the
index holds more than :attr:`SearchIndex.faiss_threshold` entries. With windows a file scores
its best window (:func:`best_windows`) and a hit reports that window's start (``offset``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..api import AUDIO_EXTENSIONS, ClarionModel, find_audio_files, load
from ..audio import AudioError, file_problem, file_summary
from ..audio.windows import THUMB_BINS
from ..files import atomic_write_json
from ..rundir import RunError, atomic_write, atomic_write_text
from ..runtime import resolve_device

log = logging.getLogger("clarion.serve")

FORMAT = "clarion-index"
VERSION = 2
ENTRY_COLUMNS = ("id", "path", "size", "mtime_ns", "duration", "caption")
ENTRY_COLUMNS_V1 = ("id", "path", "size", "mtime_ns")
CHUNK_FILES = 256  # files per committed chunk of a build


class SearchIndexError(RunError):
    """A directory that is not a (complete, consistent) clarion index, or a build that cannot go on."""


class ModelMismatchError(SearchIndexError):
    """The model given to :func:`build_index` is not the one the index was built with."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    id: int  # entry id (row of embeddings.npy)
    path: str  # relative to the index's audio root
    score: float  # cosine similarity (of the best window with windows)
    offset: float | None = None  # start of the best window in seconds (windows only)


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int
    mtime_ns: int


@dataclass
class _Indexed:
    """One file's data in an index or a chunk: pooled embedding [d], summary, windows [K, d] + starts."""

    entry: _Entry
    embedding: np.ndarray
    duration: float | None
    caption: str
    thumb: np.ndarray
    windows: np.ndarray | None = None
    starts: list[float] | None = None


# ------------------------------------------------------------------------------------------
# exact top-k


def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k' = min(k, N)`` largest inner products of each query with the keys.

    ``queries`` [Q, d], ``keys`` [N, d] → ``scores`` [Q, k'] (descending) and ``ids`` [Q, k']
    (int64). Keys are scanned ``chunk_size`` rows at a time, keeping the running best k, so
    memory is O(Q · (chunk_size + k)) rather than O(Q · N). Equal scores are ordered by id.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"need queries [Q, d] and keys [N, d], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    queries = queries.to(keys.device, keys.dtype)
    n_queries, k = queries.shape[0], min(k, keys.shape[0])
    best_scores = torch.empty(n_queries, 0, dtype=keys.dtype, device=keys.device)
    best_ids = torch.empty(n_queries, 0, dtype=torch.long, device=keys.device)
    for start in range(0, keys.shape[0], chunk_size):
        scores = queries @ keys[start : start + chunk_size].T  # [Q, c]
        ids = torch.arange(start, start + scores.shape[1], device=keys.device).expand_as(scores)
        # the running best (ties in id order) come first and have the lower ids, so a stable
        # sort keeps equal scores in id order
        scores = torch.cat([best_scores, scores], dim=1)
        ids = torch.cat([best_ids, ids], dim=1)
        best_scores, order = scores.sort(dim=1, descending=True, stable=True)
        best_scores, order = best_scores[:, :k], order[:, :k]
        best_ids = ids.gather(1, order)
    return best_scores, best_ids


# ------------------------------------------------------------------------------------------
# reading and writing


@dataclass
class _Stored:
    """A complete index as read from disk (arrays memory-mapped)."""

    info: dict
    entries: list[_Entry]
    durations: list[float | None]
    captions: list[str]
    embeddings: np.ndarray  # [N, d]
    thumbs: np.ndarray | None  # [N, THUMB_BINS] uint8 (None: version 1)
    windows: np.ndarray | None  # [W, d]
    window_map: np.ndarray | None  # [W, 2]


def _read_index(path: Path) -> _Stored:
    """The index at ``path``: ``index.json``, entries, embeddings (memory-mapped), thumbnails, windows."""
    info_path = path / "index.json"
    if not info_path.is_file():
        raise SearchIndexError(f"{path} is not a clarion index: index.json is missing (build one with `clarion index build`)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{info_path}: unreadable ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise SearchIndexError(f"{info_path} is not a clarion index file")
    version = info.get("version")
    if version not in (1, VERSION):
        raise SearchIndexError(f"{info_path}: index format version {version}, this clarion reads 1 and {VERSION}")
    columns = ENTRY_COLUMNS if version == VERSION else ENTRY_COLUMNS_V1
    thumbs = windows = window_map = None
    try:
        with open(path / "entries.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != columns:
                raise SearchIndexError(f"{path / 'entries.csv'}: expected columns {','.join(columns)}")
            rows = list(reader)
        entries = [_Entry(r["path"], int(r["size"]), int(r["mtime_ns"])) for r in rows]
        if [int(r["id"]) for r in rows] != list(range(len(rows))):
            raise SearchIndexError(f"{path / 'entries.csv'}: ids are not 0..{len(rows) - 1} in order")
        durations = [float(r["duration"]) if r.get("duration") else None for r in rows]
        captions = [r.get("caption") or "" for r in rows]
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        if version == VERSION:
            thumbs = np.load(path / "thumbs.npy", allow_pickle=False)
            if info.get("windows"):
                windows = np.load(path / "windows.npy", mmap_mode="r", allow_pickle=False)
                window_map = np.load(path / "window_map.npy", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, SearchIndexError):
            raise
        raise SearchIndexError(f"{path}: damaged index ({exc}); rebuild it with --rebuild") from exc
    count = info.get("count")
    consistent = embeddings.ndim == 2 and embeddings.shape[0] == len(entries) == count
    if thumbs is not None:
        consistent &= thumbs.shape == (len(entries), THUMB_BINS)
    if windows is not None:
        consistent &= (windows.ndim == 2 and windows.shape[1] == embeddings.shape[1] and window_map.shape == (windows.shape[0], 2)
                       and windows.shape[0] == info.get("window_count")
                       and bool(np.all((window_map[:, 0] >= 0) & (window_map[:, 0] < len(entries)))))
    if not consistent:
        raise SearchIndexError(
            f"{path}: inconsistent index ({count} in index.json, {len(entries)} entries, embeddings "
            f"{tuple(embeddings.shape)}); rebuild it with --rebuild"
        )
    return _Stored(info, entries, durations, captions, embeddings, thumbs, windows, window_map)


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _save_npy(path: Path, array: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, save)


def _write_index(out: Path, info: dict, items: list[_Indexed], skipped: list[tuple[str, str]], windows: bool) -> None:
    """Every file of the index, atomically one by one, ``index.json`` last."""
    d = info["embed_dim"]
    _save_npy(out / "embeddings.npy", np.stack([x.embedding for x in items]).astype(np.float32) if items else np.zeros((0, d), np.float32))
    _save_npy(out / "thumbs.npy", np.stack([x.thumb for x in items]).astype(np.uint8))
    if windows:
        _save_npy(out / "windows.npy", np.concatenate([x.windows for x in items]).astype(np.float32))
        _save_npy(out / "window_map.npy", np.array([(i, t) for i, x in enumerate(items) for t in x.starts], dtype=np.float64))
    else:
        for name in ("windows.npy", "window_map.npy"):
            (out / name).unlink(missing_ok=True)
    rows = [(i, x.entry.path, x.entry.size, x.entry.mtime_ns, "" if x.duration is None else f"{x.duration:.6f}", x.caption)
            for i, x in enumerate(items)]
    atomic_write_text(out / "entries.csv", _csv_text(ENTRY_COLUMNS, rows))
    atomic_write_text(out / "skipped.csv", _csv_text(("path", "reason"), skipped))
    atomic_write_text(out / "index.json", json.dumps(info, indent=2) + "\n")


def _stored_items(stored: _Stored) -> dict[str, _Indexed]:
    """The files of a complete index by path (windows grouped per entry)."""
    per_entry: dict[int, list[int]] = {}
    if stored.windows is not None:
        for row, entry in enumerate(stored.window_map[:, 0].astype(np.int64).tolist()):
            per_entry.setdefault(entry, []).append(row)
    items = {}
    for i, e in enumerate(stored.entries):
        rows = per_entry.get(i, [])
        thumb = stored.thumbs[i] if stored.thumbs is not None else None
        items[e.path] = _Indexed(e, np.asarray(stored.embeddings[i]), stored.durations[i], stored.captions[i], thumb,
                                 np.asarray(stored.windows[rows]) if stored.windows is not None else None,
                                 stored.window_map[rows, 1].tolist() if stored.windows is not None else None)
    return items


# ------------------------------------------------------------------------------------------
# the partial build (resume)


class _Partial:
    """``INDEX/partial/``: committed chunks of an unfinished build."""

    def __init__(self, out: Path, state: dict):
        self.root = out / "partial"
        self.state = state

    def resume(self) -> tuple[dict[str, _Indexed], dict[str, str]]:
        """The files (and skipped files) committed by an earlier run with the same state; a partial
        build with another state is discarded (logged). Starts a fresh partial build otherwise."""
        found: dict[str, _Indexed] = {}
        skipped: dict[str, str] = {}
        state_path = self.root / "state.json"
        if state_path.is_file():
            try:
                old = json.loads(state_path.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.state:
                log.warning("discarding the unfinished build in %s: it used another model, source or settings", self.root)
                shutil.rmtree(self.root)
            else:
                for meta_path in sorted(self.root.glob("chunk-*.json")):
                    try:
                        chunk_found, chunk_skipped = self._read_chunk(meta_path)
                    except (OSError, ValueError, KeyError, TypeError) as exc:
                        log.warning("ignoring damaged chunk %s (%s)", meta_path, exc)
                        continue
                    found.update(chunk_found)
                    skipped.update(chunk_skipped)
        if not state_path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state_path, self.state)
        self.next_chunk = max([int(p.name[6:11]) + 1 for p in self.root.glob("chunk-*.json")], default=0)
        return found, skipped

    def _read_chunk(self, meta_path: Path) -> tuple[dict[str, _Indexed], dict[str, str]]:
        meta = json.loads(meta_path.read_text())
        stem = meta_path.with_suffix("")
        embeddings = np.load(f"{stem}.npy", allow_pickle=False)
        windows = np.load(f"{stem}.windows.npy", allow_pickle=False) if meta["windows"] else None
        if embeddings.shape[0] != len(meta["files"]):
            raise ValueError("embeddings and entries disagree")
        found, row = {}, 0
        for i, f in enumerate(meta["files"]):
            k = len(f["starts"]) if windows is not None else 0
            found[f["path"]] = _Indexed(
                _Entry(f["path"], f["size"], f["mtime_ns"]), embeddings[i], f["duration"], f["caption"],
                np.array(f["thumb"], dtype=np.uint8), windows[row : row + k] if windows is not None else None,
                f["starts"] if windows is not None else None)
            row += k
        return found, {p: r for p, r in meta["skipped"]}

    def commit(self, items: list[_Indexed], skipped: list[tuple[str, str]], d: int, windows: bool) -> Path:
        """Write one chunk: its arrays, then its .json (which makes it count)."""
        stem = self.root / f"chunk-{self.next_chunk:05d}"
        self.next_chunk += 1
        _save_npy(Path(f"{stem}.npy"), np.stack([x.embedding for x in items]).astype(np.float32) if items else np.zeros((0, d), np.float32))
        if windows:
            _save_npy(Path(f"{stem}.windows.npy"),
                      np.concatenate([x.windows for x in items]).astype(np.float32) if items else np.zeros((0, d), np.float32))
        files = [{"path": x.entry.path, "size": x.entry.size, "mtime_ns": x.entry.mtime_ns, "duration": x.duration,
                  "caption": x.caption, "thumb": x.thumb.tolist(), "starts": x.starts if windows else []} for x in items]
        atomic_write_json(Path(f"{stem}.json"), {"windows": windows, "files": files, "skipped": skipped})
        return Path(f"{stem}.json")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# building


def _source_files(source: Path | str) -> tuple[Path, list[str], dict[str, str], list[tuple[str, str]]]:
    """(audio root, sorted relative paths, caption per path, bad manifest rows) of a folder or a manifest / spec."""
    if Path(source).is_dir():
        root = Path(source).resolve()
        files = find_audio_files(root)
        if not files:
            raise ValueError(f"no audio files under {root} (looked for {', '.join(AUDIO_EXTENSIONS)})")
        return root, files, {}, []
    from ..data.open import open_source

    manifest = open_source(source, "skip", check_audio=False)
    root = manifest.path.parent.resolve()
    captions: dict[str, str] = {}
    for row in manifest.rows:
        audio = Path(row.audio).resolve()
        try:
            rel = audio.relative_to(root).as_posix()
        except ValueError:
            rel = str(audio)
        captions.setdefault(rel, row.caption)
    bad = [(str(row.audio), row.reason) for row in manifest.bad]
    if not captions:
        raise ValueError(f"{source} lists no clips")
    return root, sorted(captions), captions, bad


def build_index(
    source: str | os.PathLike,
    model: ClarionModel | str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    rebuild: bool = False,
    progress: bool = False,
    windows: bool = False,
    chunk_files: int = CHUNK_FILES,
) -> dict:
    """Build or update the index ``out`` over the audio files under a folder (recursive), or the
    clips of a manifest / dataset spec (their first caption is kept with each file).

    ``model``: a :class:`ClarionModel` (its ``audio.long`` settings apply), or a run / export
    directory loaded on ``device``. ``windows`` keeps every window's embedding (and needs
    ``audio.long=windows``, set here when the model reads ``first``). An existing index is updated
    incrementally; it must have been built over the same source with the same model and settings
    (else :class:`SearchIndexError` / :class:`ModelMismatchError`), unless ``rebuild``, which
    embeds everything again. Files are embedded ``chunk_files`` at a time, each chunk committed
    to ``out/partial`` so that a killed build resumes (module docstring). Files that cannot be
    decoded are skipped, logged and listed in ``skipped.csv``. ``progress``: show a tqdm bar.

    Returns ``{"added", "updated", "unchanged", "removed", "skipped", "total", "resumed",
    "embedded", "windows", "index", "audio_root"}`` (counts of files; ``total`` = entries in the
    index now, ``resumed`` = taken from a killed build's chunks, ``embedded`` = embedded by this
    call, ``windows`` = window embeddings in the index).
    """
    if chunk_files < 1:
        raise ValueError(f"chunk_files must be at least 1, got {chunk_files}")
    out = Path(out)
    audio_root, files, captions, bad_rows = _source_files(source)
    source_id = str(audio_root) if Path(source).is_dir() else str(Path(source).resolve()) if Path(source).exists() else str(source)
    if not isinstance(model, ClarionModel):
        model = load(model, device)
    if windows and not model.windowed:
        model.set_long("windows")
    settings = {"long": model.long_settings, "windows": windows}

    previous: dict[str, _Indexed] = {}
    existing = (out / "index.json").is_file()
    if existing and not rebuild:
        stored = _read_index(out)
        info = stored.info
        if info.get("audio_root") != str(audio_root) or info.get("source", str(audio_root)) != source_id:
            raise SearchIndexError(f"{out} indexes {info.get('source', info.get('audio_root'))}, not {source_id}; "
                                   "pass --rebuild to replace it")
        if info.get("model_fingerprint") != model.fingerprint:
            raise ModelMismatchError(
                f"{out} was built with another model (fingerprint {str(info.get('model_fingerprint'))[:12]}, "
                f"this one {model.fingerprint[:12]}); pass --rebuild to embed everything with the new one"
            )
        old_settings = {"long": info.get("long", {"long": "first", "clip_seconds": model.cfg.audio.clip_seconds}),
                        "windows": bool(info.get("windows", False))}
        if old_settings != settings:
            raise SearchIndexError(f"{out} was built with {old_settings}, not {settings}; pass --rebuild to embed everything again")
        previous = _stored_items(stored)
    elif not existing and out.exists() and (not out.is_dir() or any(p.name != "partial" for p in out.iterdir())):
        raise SearchIndexError(f"{out} exists and is not a clarion index; choose an empty or new folder")

    current = {}
    missing = []
    for rel in files:
        problem = file_problem(audio_root / rel)  # a manifest may list files that are gone
        if problem is not None:
            log.warning("skipping %s: %s", rel, problem)
            missing.append((rel, problem))
            continue
        st = os.stat(audio_root / rel)
        current[rel] = _Entry(rel, st.st_size, st.st_mtime_ns)
    out.mkdir(parents=True, exist_ok=True)
    partial = _Partial(out, {"model_fingerprint": model.fingerprint, "source": source_id, **settings})
    committed, committed_skipped = partial.resume()
    reused = {rel: previous[rel] for rel, e in current.items() if rel in previous and previous[rel].entry == e}
    resumed = {rel: committed[rel] for rel, e in current.items() if rel not in reused and rel in committed
               and committed[rel].entry == e}
    resumed_skipped = {rel: r for rel, r in committed_skipped.items() if rel in current and rel not in reused}
    to_embed = [rel for rel in current if rel not in reused and rel not in resumed and rel not in resumed_skipped]
    removed = [rel for rel in previous if rel not in current]
    if resumed or resumed_skipped:
        log.warning("resuming an unfinished build: %d file(s) already embedded, %d to go", len(resumed) + len(resumed_skipped),
                    len(to_embed))

    fresh: dict[str, _Indexed] = {}
    skipped: list[tuple[str, str]] = [*bad_rows, *missing, *resumed_skipped.items()]
    bar = None
    if progress and to_embed:
        from tqdm import tqdm

        bar = tqdm(total=len(to_embed), unit="file", desc="embedding")
    try:
        for start in range(0, len(to_embed), chunk_files):
            chunk = to_embed[start : start + chunk_files]
            items, bad = _embed_chunk(model, audio_root, [current[rel] for rel in chunk], captions, batch_size, windows,
                                      bar.update if bar else None)
            partial.commit(items, bad, model.embed_dim, windows)
            fresh.update((x.entry.path, x) for x in items)
            skipped += bad
    finally:
        if bar is not None:
            bar.close()

    kept = sorted([*reused, *resumed, *fresh])
    if not kept:
        raise ValueError(f"none of the {len(files)} audio files of {source} could be decoded")
    items = [reused.get(rel) or resumed.get(rel) or fresh[rel] for rel in kept]
    for item in items:
        if item.thumb is None:  # from a version 1 index
            item.duration, item.thumb = _summary(audio_root / item.entry.path)
        item.caption = captions.get(item.entry.path, item.caption)

    if rebuild or not existing or not (out / "model" / "config.yaml").is_file():
        model.save(out / "model", overwrite=True)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "audio_root": str(audio_root),
        "source": source_id,
        "model_fingerprint": model.fingerprint,
        **settings,
        "embed_dim": model.embed_dim,
        "count": len(kept),
        "window_count": sum(len(x.starts) for x in items) if windows else 0,
        "skipped": len(skipped),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_index(out, info, items, sorted(skipped), windows)
    partial.remove()
    if skipped:
        log.warning("%d file(s) could not be decoded and are not in the index (listed in %s)", len(skipped), out / "skipped.csv")
    return {
        "added": sum(1 for rel in [*fresh, *resumed] if rel not in previous),
        "updated": sum(1 for rel in [*fresh, *resumed] if rel in previous),
        "unchanged": len(reused),
        "removed": len(removed),
        "skipped": len(skipped),
        "total": len(kept),
        "resumed": len(resumed) + len(resumed_skipped),
        "embedded": len(to_embed),
        "windows": info["window_count"],
        "index": str(out),
        "audio_root": str(audio_root),
    }


def _summary(path: Path) -> tuple[float | None, np.ndarray]:
    """Duration and thumbnail peaks of a file (None and zeros when it cannot be read)."""
    try:
        return file_summary(path)
    except AudioError as exc:
        log.warning("no thumbnail for %s", exc)
        return None, np.zeros(THUMB_BINS, np.uint8)


def _embed_chunk(
    model: ClarionModel, root: Path, entries: list[_Entry], captions: dict[str, str], batch_size: int, windows: bool, progress
) -> tuple[list[_Indexed], list[tuple[str, str]]]:
    """Embed and summarise one chunk of files: its indexed files and its skipped ones."""
    result = model.embed_files([root / e.path for e in entries], batch_size, progress, keep_windows=windows)
    items = []
    for row, i in enumerate(result.ok):
        e = entries[i]
        duration, thumb = _summary(root / e.path)
        items.append(_Indexed(e, result.embeddings[row].numpy(), duration, captions.get(e.path, ""), thumb,
                              result.windows[row].numpy() if windows else None, result.starts[row] if windows else None))
    by_path = {str(root / e.path): e.path for e in entries}
    bad = [(by_path.get(p, p), reason) for p, reason in result.bad]
    return items, bad


# ------------------------------------------------------------------------------------------
# searching


class SearchIndex:
    """An index opened for search; the model is loaded on first use (thread-safe)."""

    faiss_threshold = 100_000  # use FAISS (when installed) above this many entries

    def __init__(self, root: Path, stored: _Stored, device: str | torch.device):
        self.root = root
        self.info = stored.info
        self.audio_root = Path(stored.info["audio_root"])
        self.paths = [e.path for e in stored.entries]
        self.durations = stored.durations  # [N] seconds (None: unknown, version 1 index)
        self.captions = stored.captions  # [N] ("" when built from a folder)
        self.thumbs = stored.thumbs  # [N, THUMB_BINS] uint8 or None
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.embeddings = torch.from_numpy(np.array(stored.embeddings, dtype=np.float32)).to(self.device)  # [N, d]
        self.windows = self.window_entry = self.window_start = None
        if stored.windows is not None:
            self.windows = torch.from_numpy(np.array(stored.windows, dtype=np.float32)).to(self.device)  # [W, d]
            self.window_entry = torch.from_numpy(stored.window_map[:, 0].astype(np.int64)).to(self.device)  # [W]
            self.window_start = stored.window_map[:, 1].astype(np.float64)  # [W] seconds
        self._model: ClarionModel | None = None
        self._faiss = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SearchIndex:
        """Open the index at ``path`` (:class:`SearchIndexError` when it is not one)."""
        path = Path(path)
        return cls(path, _read_index(path), device)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"SearchIndex({str(self.root)!r}, {len(self)} entries over {str(self.audio_root)!r})"

    def absolute(self, id: int) -> Path:
        """The file of entry ``id`` (KeyError for an id that is not in the index)."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not 0 <= id < len(self.paths):
            raise KeyError(f"no entry {id!r} in the index (ids are 0..{len(self.paths) - 1})")
        return self.audio_root / self.paths[int(id)]

    @property
    def model(self) -> ClarionModel:
        """The index's model (``INDEX/model``), loaded on first use and checked against the index."""
        with self._lock:
            if self._model is None:
                model = load(self.root / "model", self.device)
                if model.fingerprint != self.info.get("model_fingerprint"):
                    raise SearchIndexError(f"{self.root / 'model'} is not the model this index was built with; rebuild it")
                long = self.info.get("long") or {}
                if long.get("long") == "windows":  # queries by example are read as the files were
                    model.set_long("windows", long["window_seconds"], long["hop_seconds"], long["pool"])
                self._model = model
            return self._model

    def search_text(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` files whose audio best matches the text ``query`` (ValueError when empty)."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("empty query: give some text to search for")
        _check_k(k)
        return self.search_embeddings(self.model.embed_text([query.strip()]), k)[0]

    def search_audio(self, wave: np.ndarray, sample_rate: int, k: int = 10) -> list[Hit]:
        """The ``k`` files that sound most like ``wave`` (1-D, at ``sample_rate`` Hz)."""
        _check_k(k)
        return self.search_embeddings(self.model.embed_audio([wave], sample_rate), k)[0]

    def search_audio_file(self, path: str | os.PathLike, k: int = 10) -> list[Hit]:
        """The ``k`` files that sound most like the file ``path`` (AudioError when it cannot be read)."""
        _check_k(k)
        return self.search_embeddings(self.model.embed_audio([path]), k)[0]

    def search_embeddings(self, queries: torch.Tensor, k: int = 10) -> list[list[Hit]]:
        """Per query embedding ([Q, d]), the ``min(k, N)`` best hits, best first."""
        _check_k(k)
        queries = torch.as_tensor(queries, dtype=torch.float32).cpu()
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"queries must be [Q, {self.embeddings.shape[1]}], got {tuple(queries.shape)}")
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        if self.windows is not None:
            return [self._window_hits(q, k) for q in queries]
        if self._use_faiss():
            scores, ids = self._faiss_index().search(np.ascontiguousarray(queries.numpy()), min(k, len(self)))
            scores, ids = torch.from_numpy(scores), torch.from_numpy(ids)
        else:
            scores, ids = top_k(queries, self.embeddings, k)
        return [
            [Hit(rank, i, self.paths[i], s) for rank, (i, s) in enumerate(zip(row_ids, row_scores), start=1)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]

    def _window_hits(self, query: torch.Tensor, k: int) -> list[Hit]:
        scores, windows = best_windows(query.to(self.device), self.windows, self.window_entry, len(self))
        top, ids = scores.sort(descending=True, stable=True)  # equal scores in id order, as top_k
        top, ids = top[:k], ids[:k]
        return [Hit(rank, i, self.paths[i], s, float(self.window_start[int(windows[i])]))
                for rank, (i, s) in enumerate(zip(ids.tolist(), top.tolist()), start=1)]

    def _use_faiss(self) -> bool:
        return len(self) > self.faiss_threshold and importlib.util.find_spec("faiss") is not None

    def _faiss_index(self):
        import faiss

        with self._lock:
            if self._faiss is None:
                index = faiss.IndexFlatIP(self.embeddings.shape[1])
                index.add(np.ascontiguousarray(self.embeddings.cpu().numpy()))
                self._faiss = index
            return self._faiss


def best_windows(
    query: torch.Tensor, windows: torch.Tensor, entry: torch.Tensor, n_entries: int, chunk_size: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, the best window score for one query: ``score[i] = max_{w: entry[w] = i} q · x_w`` [N]
    and the row of that window [N] (the first of equal ones). ``query`` [d], ``windows`` [W, d],
    ``entry`` [W] int64; windows are scanned ``chunk_size`` rows at a time (memory O(chunk + N))."""
    best = torch.full((n_entries,), float("-inf"), dtype=windows.dtype, device=windows.device)
    row = torch.full((n_entries,), -1, dtype=torch.long, device=windows.device)
    query = query.to(windows.dtype)
    for start in range(0, windows.shape[0], chunk_size):
        scores = windows[start : start + chunk_size] @ query  # [c]
        owner = entry[start : start + chunk_size]
        chunk_best = torch.full_like(best, float("-inf")).scatter_reduce(0, owner, scores, "amax")
        rows = torch.arange(start, start + scores.shape[0], device=windows.device)
        at_best = scores == chunk_best[owner]
        first = torch.full_like(row, windows.shape[0]).scatter_reduce(0, owner[at_best], rows[at_best], "amin")
        better = chunk_best > best  # strictly: an earlier chunk keeps ties
        best = torch.where(better, chunk_best, best)
        row = torch.where(better, first, row)
    return best, row


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
