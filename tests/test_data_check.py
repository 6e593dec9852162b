import csv
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from dataset_layouts import make_audiocaps, make_clotho, make_esc50
from data_fixtures import write_empty_wav, write_junk, write_nan_wav, write_noise, write_sine

import clarion.data.check as check
from clarion.cli import main
from clarion.data.check import check_data, inspect_clip
from clarion.data.manifest import write_manifest


@pytest.fixture
def faulty(tmp_path):
    """A manifest with one planted fault per row; returns (path, {line: expected kind})."""
    root = tmp_path / "data"
    clips = root / "clips"
    write_noise(clips / "good.wav", 1.0, seed=1)
    write_noise(clips / "other.wav", 1.0, seed=2)
    shutil.copy(clips / "good.wav", clips / "copy.wav")
    write_noise(clips / "hifi.wav", 1.0, sample_rate=44100, seed=3)
    write_junk(clips / "junk.wav")
    write_empty_wav(clips / "empty.wav")
    write_nan_wav(clips / "nan.wav")
    sf.write(clips / "zeros.wav", np.zeros(8000, dtype=np.float32), 16000)
    sf.write(clips / "quiet.wav", 1e-5 * np.ones(8000, dtype=np.float32), 16000, subtype="FLOAT")
    write_noise(clips / "short.wav", 0.05, seed=4)
    write_noise(clips / "long.wav", 2.0, seed=5)
    rows = [  # line 2 onwards
        ("clips/good.wav", "a clean clip", None),
        ("clips/good.wav", "the same clip, another caption", None),
        ("clips/hifi.wav", "a clip at 44.1 kHz", None),
        ("clips/nope.wav", "a file that is not there", "missing_file"),
        ("clips/junk.wav", "random bytes", "corrupt"),
        ("clips/empty.wav", "no samples", "empty_audio"),
        ("clips/nan.wav", "a NaN sample", "nan_samples"),
        ("clips/zeros.wav", "digital silence", "silent"),
        ("clips/quiet.wav", "almost silence", "silent"),
        ("clips/short.wav", "fifty milliseconds", "too_short"),
        ("clips/long.wav", "two seconds", "too_long"),
        ("clips/other.wav", "   ", "empty_caption"),
        ("clips/good.wav", "a clean clip", "duplicate_row"),
        ("", "no audio path", "missing_audio_path"),
        ("clips/copy.wav", "a copy of the clean clip", "duplicate_audio"),
    ]
    path = root / "m.csv"
    write_manifest(path, [{"audio": a, "caption": c} for a, c, _ in rows])
    return path, {line: kind for line, (_, _, kind) in enumerate(rows, start=2) if kind}


def read_problems(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_planted_fault_is_reported(faulty, tmp_path, capsys):
    path, expected = faulty
    out = tmp_path / "problems.csv"
    args = ["data", "check", str(path), "--csv", str(out), "--max-seconds", "1.5"]
    assert main(args) == 0
    problems = read_problems(out)
    assert {int(p["line"]): p["kind"] for p in problems} == expected
    assert len(problems) == len(expected)
    assert set(problems[0]) == {"split", "file", "source", "line", "kind", "detail"}
    by_kind = {p["kind"]: p for p in problems}
    assert by_kind["missing_file"]["file"] == str(path.parent / "clips" / "nope.wav")
    assert by_kind["duplicate_row"]["detail"] == "same audio and caption as line 2"
    assert by_kind["duplicate_audio"]["detail"] == f"same samples as {path.parent / 'clips' / 'good.wav'}"
    assert by_kind["nan_samples"]["detail"] == "1 NaN/Inf samples"
    assert all(p["source"] == str(path) and p["split"] == "m.csv" for p in problems)
    details = sorted(p["detail"] for p in problems if p["kind"] == "silent")
    assert details[0] == "RMS -100.0 dBFS below -60 dBFS" and details[1] == "all samples are zero"

    text = capsys.readouterr().out
    assert "m.csv (" in text and "15 rows, 12 clips" in text
    assert "sample rates: 16000 Hz: 8, 44100 Hz: 1" in text
    assert "problems: 2 silent, 1 missing_audio_path, 1 empty_caption" in text
    assert f"{path}:5: missing_file: file not found" in text
    assert f"problems written to {out}" in text

    assert main([*args, "--strict"]) == 1
    assert main(["data", "check", str(path), "--strict", "--max-seconds", "1.5", "--min-seconds", "0"]) == 1


def test_clean_manifest_passes_strict(tmp_path, capsys):
    write_noise(tmp_path / "a.wav", 0.5, seed=1)
    write_manifest(tmp_path / "m.jsonl", [{"audio": "a.wav", "caption": "one"}, {"audio": "a.wav", "caption": "two"}])
    assert main(["data", "check", str(tmp_path / "m.jsonl"), "--strict"]) == 0
    text = capsys.readouterr().out
    assert "2 rows, 1 clips" in text and "no problems found" in text


def test_each_clip_is_decoded_once(tmp_path, monkeypatch):
    root = make_clotho(tmp_path / "clotho", {"development": 3, "validation": 2})
    shutil.copy(root / "clotho_captions_development.csv", root / "clotho_captions_evaluation.csv")
    shutil.copytree(root / "development", root / "evaluation")
    calls, opens = Counter(), Counter()
    inspect = check.inspect_clip

    def counting_inspect(path, *args, **kwargs):
        calls[path] += 1
        return inspect(path, *args, **kwargs)

    class CountingSoundFile(sf.SoundFile):
        def __init__(self, file, *args, **kwargs):
            opens[file] += 1
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(check, "inspect_clip", counting_inspect)
    monkeypatch.setattr(sf, "SoundFile", CountingSoundFile)
    result = check_data(f"clotho:{root}")
    assert [s.name for s in result.splits] == ["clotho@development", "clotho@validation", "clotho@evaluation"]
    assert [(s.rows, s.clips) for s in result.splits] == [(15, 3), (10, 2), (15, 3)]
    assert len(calls) == 8 and set(calls.values()) == {1}
    assert len(opens) == 8 and set(opens.values()) == {1}
    # the evaluation copy of the development clips is reported as duplicate content, in its own split
    assert Counter(p.kind for p in result.problems) == {"duplicate_audio": 3}
    assert {p.split for p in result.problems} == {"clotho@evaluation"}
    assert check_data(f"clotho:{root}", workers=2).problems == result.problems


def test_dataset_spec_split_by_split(tmp_path, capsys):
    root = make_esc50(tmp_path / "esc50", folds=3)
    (root / "audio" / "2-110-A-1.wav").unlink()
    out = tmp_path / "p.csv"
    assert main(["data", "check", f"esc50:{root}", "--csv", str(out), "--strict"]) == 1
    text = capsys.readouterr().out
    for fold in (1, 2, 3):
        assert f"esc50@fold{fold} ({root / 'meta' / 'esc50.csv'})\n  3 rows, 3 clips" in text
    assert text.count("problems: none") == 2 and "problems: 1 missing_file" in text
    [problem] = read_problems(out)
    assert (problem["split"], problem["line"], problem["kind"]) == ("esc50@fold2", "6", "missing_file")
    assert main(["data", "check", f"esc50:{root}@fold1", "--strict"]) == 0


def test_missing_audiocaps_clips_are_reported_but_not_strict(tmp_path, capsys):
    root = make_audiocaps(tmp_path / "ac", "val", [("a1", 0, "audio/val/a1.wav"), ("b2", 0, None)], captions=5)
    out = tmp_path / "p.csv"
    assert main(["data", "check", f"audiocaps:{root}", "--strict", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "audiocaps@val" in text and "10 rows, 2 clips" in text and "problems: 1 missing_clip" in text
    assert "not counted by --strict" in text
    [problem] = read_problems(out)
    assert (problem["kind"], problem["file"], problem["line"], problem["detail"]) == (
        "missing_clip", "b2", "7", "not downloaded (5 rows)")
    write_junk(root / "audio" / "val" / "a1.wav")
    assert main(["data", "check", f"audiocaps:{root}@val", "--strict"]) == 1


def test_headers_only(faulty):
    path, expected = faulty
    result = check_data(path, max_seconds=1.5, decode=False)
    found = {p.line: p.kind for p in result.problems}
    decoded_only = {"nan_samples", "silent", "duplicate_audio"}
    assert found == {line: kind for line, kind in expected.items() if kind not in decoded_only}


def test_inspect_clip_truncated_and_rates(tmp_path):
    write_sine(tmp_path / "a.flac", seconds=0.5, sample_rate=22050)
    info = inspect_clip(tmp_path / "a.flac")
    assert (info.sample_rate, info.channels, info.problems) == (22050, 1, [])
    assert info.seconds == pytest.approx(0.5)
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    kinds = [kind for kind, _ in inspect_clip(tmp_path / "cut.flac").problems]
    assert kinds and kinds[0] == "corrupt"


def test_structural_errors_exit_2(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,text\na.wav,x\n")
    assert main(["data", "check", str(tmp_path / "m.csv")]) == 2
    assert "missing required column(s) audio, caption" in capsys.readouterr().err
    assert main(["data", "check", f"nosuch:{tmp_path}"]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "none.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    make_clotho(tmp_path / "clotho", {"development": 1})
    assert main(["data", "check", f"clotho:{tmp_path / 'clotho'}@validation"]) == 2
    assert "split 'validation' not found" in capsys.readouterr().err
