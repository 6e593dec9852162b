"""AudioCaps: ``{split}.csv`` and clips named after their YouTube id and start time (some never downloaded)."""

from __future__ import annotations

from pathlib import Path

from ..records import Entry, SplitData
from .common import AUDIO_EXTENSIONS, Adapter, alias_split, listing, read_csv

AUDIOCAPS_SPLITS = ("train", "val", "test")
_AUDIOCAPS_ALIASES = {
    **{s: s for s in AUDIOCAPS_SPLITS}, "development": "train", "validation": "val", "evaluation": "test",
}


def _audiocaps_csv(root: Path, split: str) -> Path | None:
    return next((p for p in (root / f"{split}.csv", root / "dataset" / f"{split}.csv") if p.is_file()), None)


def _audiocaps_splits(root: Path) -> list[str]:
    return [s for s in AUDIOCAPS_SPLITS if _audiocaps_csv(root, s) is not None]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def audiocaps_stems(youtube_id: str, start_time: str, audiocap_id: str = "") -> list[str]:
    """File names (without extension) an AudioCaps clip may have, most specific first."""
    stems = []
    try:
        start = float(start_time)
    except ValueError:
        start = None
    if start is not None:
        end = start + 10
        stems += [
            f"{youtube_id}_{_number(start)}_{_number(end)}",
            f"{youtube_id}_{start:.3f}_{end:.3f}",
            f"{youtube_id}_{_number(start * 1000)}_{_number(end * 1000)}",
            f"{youtube_id}_{_number(start)}",
        ]
    stems.append(youtube_id)
    stems = [*stems, *(f"Y{s}" for s in stems)]
    if audiocap_id:
        stems.append(audiocap_id)
    return list(dict.fromkeys(stems))


def _audiocaps_load(root: Path, split: str | None) -> SplitData:
    assert split is not None
    path = _audiocaps_csv(root, split)
    assert path is not None
    _, records = read_csv(path, ("audiocap_id", "youtube_id", "start_time", "caption"))
    folders = [root / "audio" / split, root / split, root / "audio"]
    listings = [(folder, listing(folder)) for folder in folders]
    entries, missing = [], []
    resolved: dict[tuple[str, str, str], Path | None] = {}
    for line, record in records:
        yid = record["youtube_id"]
        key = (yid, record["start_time"], record["audiocap_id"])
        if yid and key not in resolved:
            names = [stem + ext for stem in audiocaps_stems(*key) for ext in AUDIO_EXTENSIONS]
            resolved[key] = next((folder / n for folder, listed in listings for n in names if n in listed), None)
        found = resolved.get(key)
        entry = Entry(path, line, yid, found, record["caption"])
        if yid and found is None:
            missing.append(entry)
        else:
            entries.append(entry)
    searched = ", ".join(f"{f}/" for f in folders)
    return SplitData("audiocaps", split, path, entries, missing, searched)




ADAPTER = Adapter("audiocaps", _audiocaps_splits, _audiocaps_load, alias_split(_AUDIOCAPS_ALIASES),
                  "train (development), val (validation), test (evaluation)",
                  "{train,val,test}.csv in PATH or PATH/dataset", needs_split=True)
