"""The on-disk format of webdataset shards, and reading their samples in order.

**Layout** (LAION-CLAP's): ``OUT/shard-000000.tar``, ``shard-000001.tar``, ... Each sample
is a group of consecutive tar members sharing a key: ``{key}.flac`` (or ``.wav``), mono,
and ``{key}.json`` holding ``{"text": [captions ...], "original_path": ...}`` plus
``label``, ``lang`` and ``fold`` when the manifest has them (``lang`` is a list parallel
to ``text`` when the captions' languages differ). Keys are the sample's running number
(``000000042``), unique across the shards. ``OUT/shards.json`` lists every shard with its
sample and caption counts, size and sha256, the totals, the source, the settings and the
skipped rows and clips, so a reader knows the sizes without scanning.

The stdlib :mod:`tarfile` is used rather than the ``webdataset`` package (not installed,
and it would add a dependency whose shard splitting and shuffling would have to be
re-derived anyway to make resume exact): writing is a dozen lines, reading is a
sequential scan of members, and every RNG here is one of ours.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import BadSampleError, ManifestError

logger = logging.getLogger("clarion.data")

INDEX = "shards.json"
LAION_INDEX = "sizes.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "FLOAT")}
AUDIO_EXTS = ("flac", "wav", "ogg", "mp3")
SPEC_NAMES = ("webdataset", "wds")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: the key ends at the basename's first dot
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
LOGGED = 20


class ShardError(ManifestError):
    """Shards that cannot be written or read at all (a folder holding shards, a torn shard, ...)."""


# --- writing ------------------------------------------------------------------------------


def member_bytes(n: int) -> int:
    """Bytes a member of ``n`` data bytes takes in a ustar archive (header + padded data)."""
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def tar_size(member_bytes: int) -> int:
    """File size of a tar whose members take ``member_bytes``: two zero blocks, padded to a record."""
    return -(-(member_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


# --- samples ----------------------------------------------------------------------


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


def read_records(path: Path, on_bad_sample: str, offset: int = 0) -> Iterator[Record]:
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


def parse_meta(data: bytes | None) -> dict[str, Any] | None:
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


def sample_problem(record: Record, meta: dict[str, Any] | None) -> str | None:
    if record.audio() is None:
        return f"no audio member ({'/'.join(AUDIO_EXTS)})"
    if meta is None:
        return "no readable JSON member" if "json" not in record.members else "invalid JSON member"
    if not meta["text"]:
        return "empty caption"
    return None


def parse_webdataset_spec(text: str | os.PathLike) -> tuple[Path, str | None]:
    """``webdataset:DIR[@SPLIT]`` (or ``wds:``) -> (absolute DIR, SPLIT or None); ``~`` is expanded,
    ``SPLIT`` is the text after the last ``@`` when it holds no path separator (as for every
    dataset spec, :func:`clarion.data.sources.parse_spec`)."""
    _, _, rest = os.fspath(text).partition(":")
    split = None
    head, at, tail = rest.rpartition("@")
    if at and head and tail and "/" not in tail and os.sep not in tail:
        rest, split = head, tail
        if not split.strip():
            raise ManifestError(f"webdataset: unknown split {split!r}; valid splits: a subfolder holding shards")
        split = split.strip()
    return Path(os.path.abspath(os.path.expanduser(rest))), split


def is_webdataset_spec(text: str | os.PathLike | None) -> bool:
    if text is None or os.path.isfile(text):
        return False
    name, sep, _ = os.fspath(text).partition(":")
    return bool(sep) and name.lower() in SPEC_NAMES
