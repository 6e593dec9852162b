"""WavCaps: JSON files ``{"data": [...]}``, one split per file."""

from __future__ import annotations

import json
import logging
import mmap
import os
from pathlib import Path

from ...audio import file_problem
from ..records import Entry, ManifestError, SplitData
from .common import AUDIO_EXTENSIONS, Adapter, listing

logger = logging.getLogger("clarion.data")

def _wavcaps_files(root: Path) -> list[Path]:
    """The WavCaps JSON files under ``root``: itself, or ``*.json`` in it, else ``*/*.json``,
    leaving out files that hold no ``"data"`` key at all (WavCaps' blacklists)."""
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.json")) or sorted(root.glob("*/*.json"))
    kept = [p for p in files if _mentions_data(p)]
    for p in files:
        if p not in kept:
            logger.info("wavcaps: %s has no 'data' key; not a split, skipped", p)
    return kept


def _mentions_data(path: Path) -> bool:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b'"data"') >= 0
    except (OSError, ValueError):  # unreadable or empty: let the reader report it
        return True


def _wavcaps_data(path: Path) -> list:
    """The ``data`` list of a WavCaps JSON file."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: cannot decode as UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    except RecursionError:
        raise ManifestError(f"{path}: invalid JSON (nested too deeply)") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e})") from e
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        found = ", ".join(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise ManifestError(f'{path}: expected a WavCaps JSON object {{"data": [...]}}; found: {found or "(empty)"}')
    return data


def _wavcaps_splits(root: Path) -> list[str]:
    return list(dict.fromkeys(p.stem for p in _wavcaps_files(root)))


def _wavcaps_load(root: Path, split: str | None) -> SplitData:
    files = [p for p in _wavcaps_files(root) if split is None or p.stem == split]
    entries = []
    for path in files:
        data = _wavcaps_data(path)
        base = path.parent
        folders = [base, base / "audio", base / "audio" / path.stem, base / path.stem]
        listings: list[tuple[Path, set[str]]] | None = None  # listed on first need
        for index, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ManifestError(f"{path}: entry {index} of 'data' is a {type(item).__name__}, expected an object")
            caption = "" if item.get("caption") is None else str(item["caption"]).strip()
            ident = "" if item.get("id") is None else str(item["id"]).strip()
            value = "" if item.get("audio") is None else str(item["audio"]).strip()
            audio = None
            if value and file_problem(base / value) is None:
                audio = Path(os.path.abspath(base / value))
            elif ident:
                if listings is None:
                    listings = [(f, listing(f)) for f in folders]
                stem = ident[: -len(Path(ident).suffix)] if Path(ident).suffix.lower() in AUDIO_EXTENSIONS else ident
                names = [ident] if ident != stem else []
                names += [stem + ext for ext in AUDIO_EXTENSIONS]
                audio = next((f / n for f, listed in listings for n in names if n in listed), None)
            entries.append(Entry(path, index, value or ident, audio, caption))
    source = files[0] if len(files) == 1 else root
    return SplitData("wavcaps", split, source, entries)




def stripped_split(split: str) -> str | None:
    """A split named by a file or folder: as written, stripped (None when empty)."""
    return split.strip() or None


ADAPTER = Adapter("wavcaps", _wavcaps_splits, _wavcaps_load, stripped_split,
                  "the stem of a JSON file (or none: all of them)", "a JSON file, or *.json or */*.json in PATH")
