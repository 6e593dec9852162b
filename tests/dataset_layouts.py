"""Tiny copies of public datasets in their published layouts (short generated clips)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from data_fixtures import write_noise, write_sine


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_clotho(root: Path, clips: dict[str, int] | None = None, folder: str = "{split}", seconds: float = 1.0) -> Path:
    """Clotho v2.1: ``clotho_captions_{split}.csv`` + audio folders; clip i of a split has
    captions ``"{split} clip {i} caption {k}"``, k = 1..5. File names have spaces and commas."""
    clips = clips if clips is not None else {"development": 4, "validation": 2}
    for split_index, (s, n) in enumerate(clips.items()):
        rows = []
        for i in range(n):
            name = f"{s} sound, number {i}.wav"
            write_noise(root / folder.format(split=s) / name, seconds, sample_rate=16000, seed=100 * split_index + i)
            rows.append([name, *(f"{s} clip {i} caption {k}" for k in range(1, 6))])
        _write_csv(root / f"clotho_captions_{s}.csv", ["file_name", *(f"caption_{k}" for k in range(1, 6))], rows)
    return root


AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def make_audiocaps(root: Path, split: str, clips: list[tuple[str, int, str | None]], captions: int = 1,
                   csv_dir: str = ".") -> Path:
    """AudioCaps: ``{split}.csv`` with ``captions`` rows per clip; ``clips`` holds (youtube id,
    start time, audio file relative to root or None when the clip was never downloaded)."""
    rows = []
    for i, (yid, start, audio) in enumerate(clips):
        for k in range(captions):
            rows.append([1000 * (i + 1) + k, yid, start, f"clip {yid} caption {k}"])
        if audio is not None:
            write_sine(root / audio, 200 + 50 * i, 0.5)
    _write_csv(root / csv_dir / f"{split}.csv", AUDIOCAPS_HEADER, rows)
    return root


ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC50_CLASSES = ["dog", "chirping_birds", "door_wood_knock"]


def make_esc50(root: Path, per_fold: int = 1, folds: int = 5) -> Path:
    """ESC-50: ``meta/esc50.csv`` + ``audio/``; ``per_fold`` clips of each class in each fold."""
    rows = []
    for fold in range(1, folds + 1):
        for target, category in enumerate(ESC50_CLASSES):
            for j in range(per_fold):
                name = f"{fold}-{100 + 10 * target + j}-A-{target}.wav"
                write_sine(root / "audio" / name, 200 * (target + 1) + fold, 0.25)
                rows.append([name, fold, target, category, "False", 100 + target, "A"])
    _write_csv(root / "meta" / "esc50.csv", ESC50_HEADER, rows)
    return root


US8K_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
US8K_CLASSES = ["dog_bark", "street_music"]


def make_us8k(root: Path, folds: int = 3) -> Path:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv`` + ``audio/fold{k}/``, one clip per class and fold."""
    rows = []
    for fold in range(1, folds + 1):
        for class_id, name in enumerate(US8K_CLASSES):
            file = f"{100 + fold}-{class_id}-0-{fold}.wav"
            write_sine(root / "audio" / f"fold{fold}" / file, 300 * (class_id + 1) + fold, 0.25)
            rows.append([file, 100 + fold, 0.5, 1.0, 1, fold, class_id, name])
    _write_csv(root / "metadata" / "UrbanSound8K.csv", US8K_HEADER, rows)
    return root


def write_wavcaps_json(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"num_captions_per_audio": 1, "data": items}))
    return path
