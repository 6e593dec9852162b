import json
import logging

import numpy as np
import pytest
from dataset_layouts import (
    ESC50_CLASSES,
    make_audiocaps,
    make_clotho,
    make_esc50,
    make_us8k,
    write_wavcaps_json,
)
from data_fixtures import write_sine

from clarion.data.open import open_source
from clarion.data.sources import DatasetSpec, dataset_splits, parse_spec
from clarion.data.sources.audiocaps import audiocaps_stems
from clarion.data.manifest import BadSampleError, ManifestError, write_manifest


# --- spec parsing --------------------------------------------------------------------------


def test_parse_spec(tmp_path):
    assert parse_spec(f"clotho:{tmp_path}@train") == DatasetSpec("clotho", tmp_path, "development")
    assert parse_spec(f"Clotho:{tmp_path}") == DatasetSpec("clotho", tmp_path, None)
    assert parse_spec(f"urbansound8k:{tmp_path}@3") == DatasetSpec("us8k", tmp_path, "fold3")
    assert parse_spec(f"esc50:{tmp_path}@fold5") == DatasetSpec("esc50", tmp_path, "fold5")
    assert parse_spec(f"audiocaps:{tmp_path}/a@b@validation") == DatasetSpec("audiocaps", tmp_path / "a@b", "val")
    assert parse_spec(f"wavcaps:{tmp_path}/user@host/x.json") == DatasetSpec("wavcaps", tmp_path / "user@host" / "x.json")
    for not_a_spec in ("train.csv", "/abs/train.csv", "C:/data/train.csv", "dir/x:y.csv"):
        assert parse_spec(not_a_spec) is None


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(ManifestError) as info:
        open_source(f"clothoo:{tmp_path}@development")
    message = str(info.value)
    assert "unknown dataset 'clothoo'" in message
    assert "audiocaps, clotho, esc50, us8k (urbansound8k), wavcaps" in message


@pytest.mark.parametrize("spec,valid", [
    ("clotho:{}@training", "development (train), validation (val), evaluation (test)"),
    ("audiocaps:{}@dev", "train (development), val (validation), test (evaluation)"),
    ("esc50:{}@fold6", "fold1 .. fold5"),
    ("us8k:{}@fold11", "fold1 .. fold10"),
])
def test_unknown_split_lists_the_valid_ones(tmp_path, spec, valid):
    with pytest.raises(ManifestError, match="unknown split") as info:
        open_source(spec.format(tmp_path))
    assert valid in str(info.value)


def test_existing_file_is_always_a_manifest(tmp_path, monkeypatch):
    write_sine(tmp_path / "a.wav", seconds=0.1)
    write_manifest(tmp_path / "clotho:x.csv", [{"audio": "a.wav", "caption": "a tone"}])
    monkeypatch.chdir(tmp_path)
    assert open_source("clotho:x.csv").captions == ["a tone"]


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(ManifestError, match=f"clotho: dataset not found: {tmp_path / 'nope'}"):
        open_source(f"clotho:{tmp_path / 'nope'}@development")
    with pytest.raises(ManifestError, match="no metadata found .* expected meta/esc50.csv"):
        open_source(f"esc50:{tmp_path}")


# --- Clotho --------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["{split}", "clotho_audio_{split}", "audio/{split}"])
def test_clotho_rows_captions_and_folders(tmp_path, folder):
    root = make_clotho(tmp_path / "clotho", folder=folder)
    m = open_source(f"clotho:{root}@development")
    assert m.path == root / "clotho_captions_development.csv"
    assert len(m) == 20 and len(m.clips) == 4 and m.bad == []
    assert m.clips == [root / folder.format(split="development") / f"development sound, number {i}.wav" for i in range(4)]
    np.testing.assert_array_equal(m.audio_ids, np.repeat(np.arange(4), 5))
    assert m.captions[:6] == [f"development clip 0 caption {k}" for k in range(1, 6)] + ["development clip 1 caption 1"]
    assert [r.line for r in m.rows[::5]] == [2, 3, 4, 5]
    assert all(r.label is None and r.fold is None and r.lang is None for r in m.rows)
    same = open_source(f"clotho:{root}@train")
    assert same.rows == m.rows
    assert open_source(f"clotho:{root}@val").captions[0] == "validation clip 0 caption 1"


def test_clotho_split_errors(tmp_path):
    root = make_clotho(tmp_path / "clotho")
    with pytest.raises(ManifestError) as info:
        open_source(f"clotho:{root}@evaluation")
    assert "split 'evaluation' not found" in str(info.value) and "splits found: development, validation" in str(info.value)
    with pytest.raises(ManifestError, match="clotho needs a split.*development, validation \\(found\\)"):
        open_source(f"clotho:{root}")
    assert dataset_splits(f"clotho:{root}") == ["development", "validation"]


def test_clotho_wrong_columns_name_the_file_and_the_columns(tmp_path):
    root = tmp_path / "clotho"
    write_sine(root / "development" / "a.wav", seconds=0.1)
    (root / "clotho_captions_development.csv").write_text("file,caption\na.wav,a tone\n")
    with pytest.raises(ManifestError) as info:
        open_source(f"clotho:{root}@development")
    message = str(info.value)
    assert str(root / "clotho_captions_development.csv") in message
    assert "missing required column(s) file_name, caption_1" in message
    assert "found columns: file, caption" in message


def test_clotho_without_audio_folder(tmp_path):
    root = tmp_path / "clotho"
    root.mkdir()
    (root / "clotho_captions_validation.csv").write_text("file_name,caption_1\na.wav,a tone\n")
    with pytest.raises(ManifestError, match="no audio folder .* validation/, clotho_audio_validation/, audio/validation/"):
        open_source(f"clotho:{root}@validation")


def test_clotho_bad_rows_follow_the_policy(tmp_path):
    root = make_clotho(tmp_path / "clotho", {"development": 2})
    path = root / "clotho_captions_development.csv"
    path.write_text(path.read_text() + "gone.wav,a,b,c,d,e\n")
    text = path.read_text().replace("development clip 1 caption 3", "")
    path.write_text(text)
    m = open_source(f"clotho:{root}@development")
    assert len(m) == 9 and len(m.bad) == 6
    assert m.summary() == "9 rows, 2 clips, 6 bad rows skipped: 5 missing file, 1 empty caption"
    assert {(b.manifest, b.line) for b in m.bad} == {(path, 3), (path, 4)}
    with pytest.raises(BadSampleError, match="clotho_captions_development.csv:3: empty caption"):
        open_source(f"clotho:{root}@development", on_bad_sample="fail")


# --- AudioCaps -----------------------------------------------------------------------------


@pytest.mark.parametrize("audio", [
    "audio/train/abc-_12.wav",
    "audio/train/Yabc-_12.flac",
    "train/abc-_12_30.ogg",
    "audio/abc-_12_30000_40000.wav",
    "audio/Yabc-_12_30.000_40.000.wav",
    "audio/train/abc-_12_30_40.wav",
    "audio/train/Yabc-_12_30.wav",
    "audio/train/1000.wav",
])
def test_audiocaps_file_naming_variants(tmp_path, audio):
    # a YouTube id may hold "-" and "_"; the clip starts at 30 s
    root = make_audiocaps(tmp_path / "ac", "train", [("abc-_12", 30, audio)])
    m = open_source(f"audiocaps:{root}@train")
    assert m.clips == [root / audio] and m.captions == ["clip abc-_12 caption 0"] and m.bad == []


def test_audiocaps_stems():
    stems = audiocaps_stems("x", "30", "7")
    assert stems[:4] == ["x_30_40", "x_30.000_40.000", "x_30000_40000", "x_30"]
    assert {"x", "Yx", "Yx_30", "7"} <= set(stems)


def test_audiocaps_groups_captions_and_counts_missing_clips(tmp_path, caplog):
    clips = [("a1", 0, "audio/test/a1.wav"), ("b2", 10, None), ("c3", 20, "test/c3_20.flac"), ("d4", 30, None),
             ("e5", 40, "audio/Ye5.wav")]
    root = make_audiocaps(tmp_path / "ac", "test", clips, captions=5, csv_dir="dataset")
    for policy in ("skip", "fail"):  # missing clips are expected: skipped under both policies
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clarion.data"):
            m = open_source(f"audiocaps:{root}@test", on_bad_sample=policy)
        assert m.path == root / "dataset" / "test.csv"
        assert len(m) == 15 and len(m.clips) == 3
        np.testing.assert_array_equal(m.audio_ids, np.repeat(np.arange(3), 5))
        assert len(m.bad) == 10 and {b.audio for b in m.bad} == {"b2", "d4"}
        assert m.summary() == "15 rows, 3 clips, 10 bad rows skipped: 10 missing clip"
        assert len(caplog.records) == 1  # one line, not one per clip
        message = caplog.records[0].getMessage()
        assert "audiocaps@test: 2 of 5 clips not found (10 rows skipped" in message and "e.g. b2, d4" in message


def test_audiocaps_other_bad_rows_follow_the_policy(tmp_path):
    root = make_audiocaps(tmp_path / "ac", "val", [("a1", 0, "audio/val/a1.wav"), ("b2", 0, None)])
    (root / "audio" / "val" / "c3.wav").write_bytes(b"not audio at all" * 100)
    with open(root / "val.csv", "a") as f:
        f.write("9,c3,0,junk clip\n")
    assert [b.reason.split(" (")[0] for b in open_source(f"audiocaps:{root}@val").bad] == [
        "missing clip", "unreadable audio"]
    with pytest.raises(BadSampleError, match="val.csv:4: unreadable audio"):
        open_source(f"audiocaps:{root}@val", on_bad_sample="fail")


def test_audiocaps_nothing_downloaded(tmp_path):
    root = make_audiocaps(tmp_path / "ac", "train", [("a1", 0, None), ("b2", 0, None)])
    with pytest.raises(ManifestError, match="no usable rows .*none of its 2 clips found in .*audio/train/"):
        open_source(f"audiocaps:{root}@train")


def test_audiocaps_wrong_columns(tmp_path):
    root = tmp_path / "ac"
    root.mkdir()
    (root / "train.csv").write_text("youtube_id,caption\nabc,x\n")
    with pytest.raises(ManifestError) as info:
        open_source(f"audiocaps:{root}@train")
    assert str(root / "train.csv") in str(info.value)
    assert "missing required column(s) audiocap_id, start_time" in str(info.value)


# --- ESC-50 and UrbanSound8K ---------------------------------------------------------------


def test_esc50_labels_folds_captions(tmp_path):
    root = make_esc50(tmp_path / "ESC-50-master", per_fold=2)
    m = open_source(f"esc50:{root}")
    assert m.path == root / "meta" / "esc50.csv"
    assert len(m) == 30 and len(m.clips) == 30
    assert m.labels[:6] == ["dog", "dog", "chirping_birds", "chirping_birds", "door_wood_knock", "door_wood_knock"]
    assert m.captions[2] == "This is a sound of chirping birds."
    assert m.folds == [str(f) for f in range(1, 6) for _ in range(6)]
    assert m.clips[0] == root / "audio" / "1-100-A-0.wav"
    fold2 = open_source(f"esc50:{root}@fold2")
    assert set(fold2.folds) == {"2"} and len(fold2) == 6 and sorted(set(fold2.labels)) == sorted(ESC50_CLASSES)
    assert open_source(f"esc50:{root}@2").rows == fold2.rows
    assert dataset_splits(f"esc50:{root}") == [f"fold{k}" for k in range(1, 6)]


def test_esc50_missing_fold(tmp_path):
    root = make_esc50(tmp_path / "esc", folds=3)
    with pytest.raises(ManifestError, match="split 'fold4' not found .* splits found: fold1, fold2, fold3"):
        open_source(f"esc50:{root}@fold4")


def test_esc50_wrong_columns(tmp_path):
    root = tmp_path / "esc"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("filename,target\n1-1-A-0.wav,0\n")
    with pytest.raises(ManifestError, match="esc50.csv: missing required column\\(s\\) fold, category"):
        open_source(f"esc50:{root}")


@pytest.mark.parametrize("name", ["us8k", "urbansound8k", "UrbanSound8K"])
def test_us8k(tmp_path, name):
    root = make_us8k(tmp_path / "UrbanSound8K")
    m = open_source(f"{name}:{root}")
    assert len(m) == 6
    assert m.labels == ["dog_bark", "street_music"] * 3
    assert m.captions[:2] == ["This is a sound of dog bark.", "This is a sound of street music."]
    assert m.folds == ["1", "1", "2", "2", "3", "3"]
    assert m.clips[2] == root / "audio" / "fold2" / "102-0-0-2.wav"
    assert open_source(f"{name}:{root}@fold3").folds == ["3", "3"]


# --- WavCaps -------------------------------------------------------------------------------


def test_wavcaps_audio_field_and_id_resolution(tmp_path):
    root = tmp_path / "wavcaps"
    write_sine(root / "clips" / "one.wav", seconds=0.2)
    write_sine(root / "audio" / "Yabc.flac", seconds=0.2)
    write_sine(root / "sb_final" / "42.ogg", seconds=0.2)
    items = [
        {"id": "1", "caption": " a first sound ", "audio": "clips/one.wav", "duration": 0.2},
        {"id": "Yabc.wav", "caption": "an AudioSet clip", "audio": "wav_path", "duration": 10.0},
        {"id": 42, "caption": "a SoundBible clip", "duration": 1},
        {"id": "gone", "caption": "never downloaded", "duration": 1},
    ]
    path = write_wavcaps_json(root / "sb_final.json", items)
    m = open_source(f"wavcaps:{path}")
    assert m.path == path
    assert m.clips == [root / "clips" / "one.wav", root / "audio" / "Yabc.flac", root / "sb_final" / "42.ogg"]
    assert m.captions == ["a first sound", "an AudioSet clip", "a SoundBible clip"]
    assert [r.line for r in m.rows] == [1, 2, 3]
    assert [(b.line, b.audio, b.reason) for b in m.bad] == [(4, "gone", "missing file")]


def test_wavcaps_folder_of_json_files(tmp_path):
    root = tmp_path / "json_files"
    for i, stem in enumerate(["as_final", "fsd_final"]):
        write_sine(root / stem / "audio" / f"{i}.flac", 300 + i, 0.2)
        write_wavcaps_json(root / stem / f"{stem}.json", [{"id": str(i), "caption": f"caption {i}"}])
    (root / "blacklist").mkdir()
    (root / "blacklist" / "blacklist_exclude_all_ac.json").write_text(json.dumps({"AudioSet": [], "FreeSound": []}))
    m = open_source(f"wavcaps:{root}")
    assert m.path == root and m.captions == ["caption 0", "caption 1"]
    assert dataset_splits(f"wavcaps:{root}") == ["as_final", "fsd_final"]
    one = open_source(f"wavcaps:{root}@fsd_final")
    assert one.path == root / "fsd_final" / "fsd_final.json" and one.captions == ["caption 1"]
    with pytest.raises(ManifestError, match='expected a WavCaps JSON object {"data": \\[...\\]}; found: AudioSet, FreeSound'):
        open_source(f"wavcaps:{root / 'blacklist' / 'blacklist_exclude_all_ac.json'}")
    (root / "fsd_final" / "fsd_final.json").write_text(json.dumps({"data": {"id": "0"}}))
    with pytest.raises(ManifestError, match="fsd_final.json: expected a WavCaps JSON object"):
        open_source(f"wavcaps:{root}")


# --- through the command line --------------------------------------------------------------


def test_train_and_evaluate_from_a_clotho_spec(tmp_path, capsys):
    from conftest import TINY

    from clarion.cli import main

    root = make_clotho(tmp_path / "clotho", {"development": 4, "validation": 2})
    run = tmp_path / "run"
    args = ["train", "--train", f"clotho:{root}@development", "--val", f"clotho:{root}@validation",
            "--out", str(run), "--epochs", "1", "--batch-size", "8", "-q", *TINY]
    assert main(args) == 0
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]
    assert len(epochs) == 1 and np.isfinite(epochs[0]["train_loss"])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", f"clotho:{root}@val", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["counts"]["bad_rows"] == 0 and "R@1" in metrics["t2a"]
    assert main(["evaluate", str(run), "--data", f"clotho:{root}@test", "-q"]) == 2
    assert "split 'evaluation' not found" in capsys.readouterr().err
