"""A search index over a folder of audio files: text-to-audio and audio-to-audio search.

Layout of an index directory (everything a search needs; the training run is not):

    INDEX/index.json      {"format": "clarion-index", "version": 1, "audio_root": "/abs/folder",
                           "model_fingerprint": sha256, "embed_dim": d, "count": N, "skipped": n,
                           "updated": ISO time}; written last, so it describes complete files
    INDEX/entries.csv     id,path,size,mtime_ns: one row per indexed file, path relative to
                          audio_root (POSIX), id = row = position in embeddings.npy
    INDEX/embeddings.npy  float32 [N, d], unit-norm rows
    INDEX/skipped.csv     path,reason: files of the last build that could not be decoded
    INDEX/model/          the model export (:meth:`clarion.api.ClarionModel.save`)

:func:`build_index` is incremental: a file whose size and mtime are unchanged keeps its
embedding, new and changed files are embedded, removed files are dropped. Ids are positions in
the sorted list of paths, so they may shift when files come and go. An index is tied to one model
(:attr:`clarion.api.ClarionModel.fingerprint`) and one folder; changing either needs ``rebuild``.

Search is exact: cosine top-k by chunked matrix products (:func:`top_k`, memory
O(Q · (chunk + k))), or FAISS ``IndexFlatIP`` (also exact) when ``faiss`` is installed and the
index holds more than :attr:`SearchIndex.faiss_threshold` entries.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..api import AUDIO_EXTENSIONS, ClarionModel, find_audio_files, load
from ..rundir import RunError, atomic_write, atomic_write_text
from ..runtime import resolve_device

log = logging.getLogger("clarion.serve")

FORMAT = "clarion-index"
VERSION = 1
ENTRY_COLUMNS = ("id", "path", "size", "mtime_ns")


class SearchIndexError(RunError):
    """A directory that is not a (complete, consistent) clarion index, or a build that cannot go on."""


class ModelMismatchError(SearchIndexError):
    """The model given to :func:`build_index` is not the one the index was built with."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    id: int  # entry id (row of embeddings.npy)
    path: str  # relative to the index's audio root
    score: float  # cosine similarity


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int
    mtime_ns: int


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


def _read_index(path: Path) -> tuple[dict, list[_Entry], np.ndarray]:
    """``index.json``, the entries and the embeddings (memory-mapped) of the index at ``path``."""
    info_path = path / "index.json"
    if not info_path.is_file():
        raise SearchIndexError(f"{path} is not a clarion index: index.json is missing (build one with `clarion index build`)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{info_path}: unreadable ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise SearchIndexError(f"{info_path} is not a clarion index file")
    if info.get("version") != VERSION:
        raise SearchIndexError(f"{info_path}: index format version {info.get('version')}, this clarion reads {VERSION}")
    try:
        with open(path / "entries.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != ENTRY_COLUMNS:
                raise SearchIndexError(f"{path / 'entries.csv'}: expected columns {','.join(ENTRY_COLUMNS)}")
            rows = list(reader)
        entries = [_Entry(r["path"], int(r["size"]), int(r["mtime_ns"])) for r in rows]
        if [int(r["id"]) for r in rows] != list(range(len(rows))):
            raise SearchIndexError(f"{path / 'entries.csv'}: ids are not 0..{len(rows) - 1} in order")
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, SearchIndexError):
            raise
        raise SearchIndexError(f"{path}: damaged index ({exc}); rebuild it with --rebuild") from exc
    count = info.get("count")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(entries) or len(entries) != count:
        raise SearchIndexError(
            f"{path}: inconsistent index ({count} in index.json, {len(entries)} entries, embeddings "
            f"{tuple(embeddings.shape)}); rebuild it with --rebuild"
        )
    return info, entries, embeddings


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_index(
    out: Path, info: dict, entries: list[_Entry], embeddings: np.ndarray, skipped: list[tuple[str, str]]
) -> None:
    def save_npy(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, embeddings.astype(np.float32, copy=False), allow_pickle=False)

    atomic_write(out / "embeddings.npy", save_npy)
    rows = [(i, e.path, e.size, e.mtime_ns) for i, e in enumerate(entries)]
    atomic_write_text(out / "entries.csv", _csv_text(ENTRY_COLUMNS, rows))
    atomic_write_text(out / "skipped.csv", _csv_text(("path", "reason"), skipped))
    atomic_write_text(out / "index.json", json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------------------------------
# building


def build_index(
    audio_dir: str | os.PathLike,
    model: ClarionModel | str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    rebuild: bool = False,
    progress: bool = False,
) -> dict:
    """Build or update the index ``out`` over the audio files under ``audio_dir`` (recursive).

    ``model``: a :class:`ClarionModel`, or a run / export directory loaded on ``device``. An
    existing index is updated incrementally; it must have been built over the same folder with
    the same model (else :class:`SearchIndexError` / :class:`ModelMismatchError`), unless
    ``rebuild``, which embeds everything again. Files that cannot be decoded are skipped, logged
    and listed in ``skipped.csv``. ``progress``: show a tqdm bar.

    Returns ``{"added", "updated", "unchanged", "removed", "skipped", "total", "index",
    "audio_root"}`` (counts of files; ``total`` = entries in the index now).
    """
    audio_dir, out = Path(audio_dir).resolve(), Path(out)
    files = find_audio_files(audio_dir)
    if not files:
        raise ValueError(f"no audio files under {audio_dir} (looked for {', '.join(AUDIO_EXTENSIONS)})")
    if not isinstance(model, ClarionModel):
        model = load(model, device)

    previous: dict[str, tuple[_Entry, int]] = {}
    old_embeddings = None
    existing = (out / "index.json").is_file()
    if existing and not rebuild:
        info, entries, old_embeddings = _read_index(out)
        if info.get("audio_root") != str(audio_dir):
            raise SearchIndexError(f"{out} indexes {info.get('audio_root')}, not {audio_dir}; pass --rebuild to replace it")
        if info.get("model_fingerprint") != model.fingerprint:
            raise ModelMismatchError(
                f"{out} was built with another model (fingerprint {str(info.get('model_fingerprint'))[:12]}, "
                f"this one {model.fingerprint[:12]}); pass --rebuild to embed everything with the new one"
            )
        previous = {e.path: (e, i) for i, e in enumerate(entries)}
    elif not existing and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SearchIndexError(f"{out} exists and is not a clarion index; choose an empty or new folder")

    current = {}
    for rel in files:
        st = os.stat(audio_dir / rel)
        current[rel] = _Entry(rel, st.st_size, st.st_mtime_ns)
    reused = {rel: previous[rel][1] for rel, e in current.items() if rel in previous and previous[rel][0] == e}
    to_embed = [rel for rel in files if rel not in reused]
    removed = [rel for rel in previous if rel not in current]

    bar = None
    if progress and to_embed:
        from tqdm import tqdm

        bar = tqdm(total=len(to_embed), unit="file", desc="embedding")
    try:
        result = model.embed_files([audio_dir / rel for rel in to_embed], batch_size, bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    fresh = {to_embed[i]: row for row, i in enumerate(result.ok)}
    skipped = [(Path(p).relative_to(audio_dir).as_posix(), reason) for p, reason in result.bad]

    kept = sorted([*reused, *fresh])
    if not kept:
        raise ValueError(f"none of the {len(files)} audio files under {audio_dir} could be decoded")
    embeddings = np.empty((len(kept), model.embed_dim), dtype=np.float32)
    new = result.embeddings.numpy()
    for i, rel in enumerate(kept):
        embeddings[i] = old_embeddings[reused[rel]] if rel in reused else new[fresh[rel]]

    out.mkdir(parents=True, exist_ok=True)
    if rebuild or not existing or not (out / "model" / "config.yaml").is_file():
        model.save(out / "model", overwrite=True)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "audio_root": str(audio_dir),
        "model_fingerprint": model.fingerprint,
        "embed_dim": model.embed_dim,
        "count": len(kept),
        "skipped": len(skipped),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_index(out, info, [current[rel] for rel in kept], embeddings, skipped)
    if skipped:
        log.warning("%d file(s) could not be decoded and are not in the index (listed in %s)", len(skipped), out / "skipped.csv")
    return {
        "added": sum(1 for rel in fresh if rel not in previous),
        "updated": sum(1 for rel in fresh if rel in previous),
        "unchanged": len(reused),
        "removed": len(removed),
        "skipped": len(skipped),
        "total": len(kept),
        "index": str(out),
        "audio_root": str(audio_dir),
    }


# ------------------------------------------------------------------------------------------
# searching


class SearchIndex:
    """An index opened for search; the model is loaded on first use (thread-safe)."""

    faiss_threshold = 100_000  # use FAISS (when installed) above this many entries

    def __init__(self, root: Path, info: dict, entries: list[_Entry], embeddings: np.ndarray, device: str | torch.device):
        self.root = root
        self.info = info
        self.audio_root = Path(info["audio_root"])
        self.paths = [e.path for e in entries]
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.embeddings = torch.from_numpy(np.array(embeddings, dtype=np.float32)).to(self.device)  # [N, d]
        self._model: ClarionModel | None = None
        self._faiss = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SearchIndex:
        """Open the index at ``path`` (:class:`SearchIndexError` when it is not one)."""
        path = Path(path)
        info, entries, embeddings = _read_index(path)
        return cls(path, info, entries, embeddings, device)

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
        if self._use_faiss():
            scores, ids = self._faiss_index().search(np.ascontiguousarray(queries.numpy()), min(k, len(self)))
            scores, ids = torch.from_numpy(scores), torch.from_numpy(ids)
        else:
            scores, ids = top_k(queries, self.embeddings, k)
        return [
            [Hit(rank, i, self.paths[i], s) for rank, (i, s) in enumerate(zip(row_ids, row_scores), start=1)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]

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


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
