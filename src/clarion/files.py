"""Crash-safe writes of files and folders, and checksums (no clarion imports: the bottom layer).

Every write that must never leave a torn result goes through one of two primitives:

- :class:`AtomicFile` (and its shorthands :func:`atomic_write`, :func:`atomic_write_text`,
  :func:`atomic_write_json`): bytes go to a hidden temp file beside the target
  (``.NAME.<random>.tmp``), which is fsynced and renamed over the target on :meth:`~AtomicFile.commit`.
- :func:`atomic_dir`: a folder is filled under a hidden temp name (``.NAME.<random>.tmp``),
  fsynced and renamed into place; an existing target is swapped out (``replace``) or kept
  (``keep``: another process made it first).

Both give what a plain ``open()`` / ``mkdir()`` would: mode ``0o666 & ~umask`` for files and
``0o777 & ~umask`` for folders, not ``mkstemp``'s / ``mkdtemp``'s private ``0o600`` / ``0o700``,
so shards, caches and runs shared between users or nodes stay readable by the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~_process_umask()


def dir_mode() -> int:
    """What ``mkdir(path)`` gives a new folder under the current umask."""
    return 0o777 & ~_process_umask()


FILE_MODE = file_mode()  # at import time; the writers below ask again at each write


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a crash after a rename finds its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file written under a hidden temp name beside ``path`` and renamed over it on :meth:`commit`.

    ``file`` is the open binary stream; :meth:`abort` (or an exception inside ``with``) removes
    the temp file and leaves an existing ``path`` untouched.
    """

    def __init__(self, path: Path, mode: str = "wb"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, file_mode())
        self.tmp = Path(tmp)
        self.file: IO[Any] = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))

    def commit(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the stream may be in any state; the file goes anyway
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path`` (for writers that want a path, such
    as ``safetensors.save_file``), fsync it, then rename over ``path``."""
    target = AtomicFile(path)
    try:
        target.file.close()
        write(target.tmp)
        target.file = open(target.tmp, "rb+")  # noqa: SIM115 (closed by commit)
        target.commit()
    except BaseException:
        target.abort()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with AtomicFile(path, "w") as f:
        f.file.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with AtomicFile(path) as f:
        f.file.write(data)


def atomic_write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    """``data`` as UTF-8 JSON (non-ASCII kept) and a final newline."""
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path, exists: Literal["replace", "keep"] = "replace", fsync: bool = False) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``path`` to fill; on a clean exit rename it to ``path``.

    ``exists="replace"``: an existing ``path`` is first moved into a hidden ``.old`` folder, then
    removed (two renames, never a moment with neither version on disk for long). ``"keep"``: an
    existing ``path`` wins (another process made the same folder first) and ours is dropped.
    ``fsync``: flush every file and the folders before and after the rename (checkpoints). On an
    exception the temp folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(dir_mode())
        yield tmp
        if fsync:
            for part in tmp.iterdir():
                fsync_path(part)
            fsync_path(tmp)
        old = None
        if path.exists():
            if exists == "keep":
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.rename(tmp, path)
        except OSError:
            if exists == "keep" and path.exists():  # another process renamed its folder first
                shutil.rmtree(tmp, ignore_errors=True)
                return
            raise
        if fsync:
            fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(out: Path, marker: str, what: str, overwrite: bool, error: type[Exception]) -> None:
    """Raise ``error`` unless ``out`` may be written by :func:`atomic_dir`: it is missing, an empty
    folder, or, with ``overwrite``, a folder holding ``marker`` (a file only ``what`` has), so
    ``--overwrite`` never replaces a folder of something else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise error(f"{out} exists and is not empty (overwrite it with --overwrite)")
    if not (out / marker).is_file():
        raise error(f"{out} is not {what}; refusing to replace it")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
