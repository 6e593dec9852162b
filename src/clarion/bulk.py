"""Embed a whole folder or manifest to ``FILE.npy`` + ``FILE.csv`` (the ``clarion embed`` command).

    FILE.npy          float32 [N, d], unit-norm rows
    FILE.csv          row,path[,caption]: what row i of FILE.npy embeds; path relative to the
                      input folder (the folder itself, or the manifest's folder) when under it
    FILE.skipped.csv  path,reason: inputs that could not be used (only when there are some)

Audio mode embeds every audio file under a folder (recursive) or every distinct clip of a
manifest / dataset spec, read as the model's ``audio.long`` says (its first clip_seconds, or
the whole file as pooled windows: :meth:`clarion.api.ClarionModel.set_long`); text mode
(``text=True``) embeds every caption row of a manifest.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .api import ClarionModel, find_audio_files
from .data.open import open_source

log = logging.getLogger("clarion.api")


@dataclass
class Embedded:
    """``embeddings`` [N, d] float32; ``rows`` [N] of (path[, caption]); ``bad`` (path, reason)."""

    embeddings: np.ndarray
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    bad: list[tuple[str, str]]


def _relative(path: str | os.PathLike, base: Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def embed_source(
    source: str | os.PathLike, model: ClarionModel, text: bool = False, batch_size: int = 32, progress: bool = False
) -> Embedded:
    """Embed the audio files under a folder, the clips of a manifest / dataset spec, or (``text``)
    the captions of a manifest. Bad files and rows are skipped, logged and returned in ``bad``."""
    folder = Path(source).is_dir()
    if folder and text:
        raise ValueError(f"{source} is a folder: --text needs a manifest with a caption column")
    if folder:
        base = Path(source)
        paths, bad = [base / rel for rel in find_audio_files(base)], []
        if not paths:
            raise ValueError(f"no audio files under {source}")
    else:
        manifest = open_source(source, "skip", check_audio=not text)
        base = manifest.path.parent
        bad = [(row.audio, row.reason) for row in manifest.bad]
        if text:
            rows = [(_relative(row.audio, base), row.caption) for row in manifest.rows]
            embeddings = model.embed_text([row.caption for row in manifest.rows], batch_size)
            return Embedded(embeddings.numpy(), ("path", "caption"), rows, bad)
        paths = manifest.clips

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="file", desc="embedding")
    try:
        result = model.embed_files(paths, batch_size, bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    rows = [(_relative(paths[i], base),) for i in result.ok]
    bad += [(_relative(p, base), reason) for p, reason in result.bad]
    if not rows:
        raise ValueError(f"none of the {len(paths)} audio files of {source} could be decoded")
    return Embedded(result.embeddings.numpy(), ("path",), rows, bad)


def output_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``FILE.npy``, ``FILE.csv`` and ``FILE.skipped.csv`` for ``--out FILE[.npy]``."""
    out = Path(out)
    npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return npy, npy.with_suffix(".csv"), npy.with_suffix(".skipped.csv")


def write_embedded(out: str | os.PathLike, data: Embedded) -> tuple[Path, Path, Path | None]:
    """Write ``FILE.npy``, ``FILE.csv`` and (when there are bad inputs) ``FILE.skipped.csv``."""
    npy, index, skipped = output_paths(out)
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, data.embeddings.astype(np.float32, copy=False), allow_pickle=False)
    with open(index, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("row", *data.columns))
        writer.writerows((i, *row) for i, row in enumerate(data.rows))
    if not data.bad:
        skipped.unlink(missing_ok=True)
        return npy, index, None
    with open(skipped, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "reason"))
        writer.writerows(data.bad)
    return npy, index, skipped
