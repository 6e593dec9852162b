"""Reading webdataset shards: the shard index, and a split as manifest rows.

**Reading as a manifest** (spec ``webdataset:DIR[@SPLIT]``, alias ``wds``; evaluation and
small data): each shard is extracted once into a cache folder (``$CLARION_SHARD_CACHE``,
default ``~/.cache/clarion/shards``) keyed by the shard's absolute path, size and mtime,
extracted into a temporary folder and renamed into place, so concurrent readers are
safe; the manifest's rows point at the extracted files and everything downstream (the
clip cache, ``data check``, evaluation) works on plain files. This was chosen over
teaching :mod:`clarion.audio` a ``tar://`` path: rows, the clip cache and the checks
all assume real files. ``SPLIT`` names a subfolder holding shards (LAION-CLAP's
``train/``, ``valid/``, ``test/``); a folder holding shards itself is one split named
after the folder. Besides ``shards.json``, LAION-CLAP's ``sizes.json`` (``{"0.tar": n}``)
is read; a folder with neither is counted by scanning (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...files import atomic_dir
from ..records import Entry, SplitData
from .format import INDEX, LAION_INDEX, ShardError, is_webdataset_spec, logger, parse_meta, parse_webdataset_spec, read_records


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
                            meta = parse_meta(tar.extractfile(member).read())
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


def open_shards(target: str | os.PathLike) -> ShardIndex:
    """The :class:`ShardIndex` of a spec ``webdataset:DIR[@SPLIT]``, a folder or its ``shards.json``."""
    if is_webdataset_spec(target):
        root, split = parse_webdataset_spec(target)
        if not root.exists():
            raise ShardError(f"webdataset: folder not found: {root}")
        folder = shard_folder(root, split)
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
        shards = [ShardInfo(p, sum(1 for _ in read_records(p, "skip"))) for p in paths]
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
    with atomic_dir(final, exists="keep") as tmp:  # another process may extract it at the same time
        samples = []
        for position, record in enumerate(read_records(path, "raise")):
            audio = record.audio()
            name = None
            if audio is not None:
                name = f"{position:06d}.{audio[0]}"
                (tmp / name).write_bytes(audio[1])
            samples.append({"key": record.key, "audio": name, "meta": parse_meta(record.members.get("json")),
                            "json": "json" in record.members})
        (tmp / "samples.json").write_text(json.dumps(samples, ensure_ascii=False), encoding="utf-8")
    if not (final / "samples.json").is_file():
        raise ShardError(f"{final}: extraction of {path} left no samples.json")
    return final, samples


def load_shard_split(root: Path, split: str | None) -> SplitData:
    """The unvalidated rows of a webdataset folder (one row per caption), for :mod:`clarion.data.sources`."""
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
