import json
import logging
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_empty_wav, write_junk, write_sine

from clarion.data.manifest import (
    BadRow,
    BadSampleError,
    Manifest,
    ManifestError,
    Row,
    read_manifest,
    write_manifest,
)


@pytest.fixture
def data_dir(tmp_path):
    """tmp/data with clips/a.wav, clips/b.wav, clips/c.wav; manifests go in tmp/data."""
    root = tmp_path / "data"
    for name in "abc":
        write_sine(root / "clips" / f"{name}.wav", seconds=0.1)
    return root


def test_read_csv(data_dir, tmp_path):
    outside = tmp_path / "elsewhere" / "d.wav"
    write_sine(outside, seconds=0.1)
    (data_dir / "m.csv").write_text(
        "audio,caption,label,lang,extra\n"
        "clips/a.wav,  a dog barks  ,dog,en,x\n"
        'clips/b.wav,"rain\non a roof",,,\n'
        f"{outside},birds sing,bird,,\n"
    )
    m = read_manifest(data_dir / "m.csv")
    assert m.rows == [
        Row(data_dir / "clips" / "a.wav", "a dog barks", "dog", "en", 2),
        Row(data_dir / "clips" / "b.wav", "rain\non a roof", None, None, 3),
        Row(outside, "birds sing", "bird", None, 5),
    ]
    assert m.bad == [] and len(m) == 3
    assert m.path == data_dir / "m.csv"


@pytest.mark.parametrize("name", ["m.jsonl", "m.json"])
def test_read_jsonl(data_dir, name):
    lines = [
        json.dumps({"audio": "clips/a.wav", "caption": " a dog barks ", "label": 3, "meta": {"x": 1}}),
        "",
        json.dumps({"audio": "clips/b.wav", "caption": "rain", "lang": "de", "label": None}),
    ]
    (data_dir / name).write_text("\n".join(lines) + "\n")
    m = read_manifest(data_dir / name)
    assert m.rows == [
        Row(data_dir / "clips" / "a.wav", "a dog barks", "3", None, 1),
        Row(data_dir / "clips" / "b.wav", "rain", None, "de", 3),
    ]


def test_grouping_by_audio(data_dir):
    order = ["b", "a", "b", "c", "a", "c", "b", "a", "c", "a", "b", "c", "c", "a", "b"]
    rows = [
        {"audio": f"clips/{name}.wav", "caption": f"{name} caption {i}", "label": f"{name}-{i}"}
        for i, name in enumerate(order)
    ]
    write_manifest(data_dir / "m.csv", rows)
    m = read_manifest(data_dir / "m.csv")
    assert m.clips == [data_dir / "clips" / f"{name}.wav" for name in "bac"]
    ids = m.audio_ids
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ["bac".index(name) for name in order])
    np.testing.assert_array_equal(np.bincount(ids), [5, 5, 5])
    assert m.captions == [r["caption"] for r in rows]
    assert m.labels == ["b-0", "a-1", "c-3"]
    assert m.summary() == "15 rows, 3 clips, 0 bad rows skipped"


def _bad_case(data_dir, case):
    """A manifest with good rows on lines 2 and 4 and one bad row on line 3; returns (path, reason)."""
    bad = {
        "missing file": ("clips/nope.wav", "a caption"),
        "unreadable audio": ("junk.wav", "a caption"),
        "empty audio": ("empty.wav", "a caption"),
        "empty caption": ("clips/a.wav", "   "),
        "missing audio path": ("", "a caption"),
    }[case]
    write_junk(data_dir / "junk.wav")
    write_empty_wav(data_dir / "empty.wav")
    rows = [{"audio": "clips/a.wav", "caption": "first"}, {"audio": bad[0], "caption": bad[1]}]
    rows.append({"audio": "clips/b.wav", "caption": "last"})
    write_manifest(data_dir / "m.csv", rows)
    return data_dir / "m.csv", bad[0]


CASES = ["missing file", "unreadable audio", "empty audio", "empty caption", "missing audio path"]
REASONS = {
    "missing file": "missing file",
    "unreadable audio": "unreadable audio (",
    "empty audio": "empty audio (0 samples)",
    "empty caption": "empty caption",
    "missing audio path": "missing audio path",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_row_is_skipped_and_counted(data_dir, case, caplog):
    path, audio = _bad_case(data_dir, case)
    with caplog.at_level(logging.WARNING, logger="clarion.data"):
        m = read_manifest(path, on_bad_sample="skip")
    assert [row.line for row in m.rows] == [2, 4]
    assert len(m.bad) == 1
    bad = m.bad[0]
    assert (bad.manifest, bad.line, bad.audio) == (path, 3, audio)
    assert bad.reason.startswith(REASONS[case])
    assert str(bad) == f"{path}:3: {bad.reason} ({audio})"
    assert m.summary() == f"2 rows, 2 clips, 1 bad rows skipped: 1 {case}"
    assert [r.name for r in caplog.records] == ["clarion.data"]
    assert f"{path}:3: {REASONS[case]}" in caplog.records[0].getMessage()


@pytest.mark.parametrize("case", CASES)
def test_bad_row_fails_under_fail_policy(data_dir, case):
    path, _ = _bad_case(data_dir, case)
    with pytest.raises(BadSampleError) as info:
        read_manifest(path, on_bad_sample="fail")
    assert str(info.value).startswith(f"{path}:3: {REASONS[case]}")
    assert "--on-bad-sample skip" in str(info.value)
    assert info.value.bad.line == 3


def test_check_audio_false_only_checks_existence(data_dir):
    path, _ = _bad_case(data_dir, "unreadable audio")
    assert len(read_manifest(path, check_audio=False)) == 3
    path, _ = _bad_case(data_dir, "missing file")
    assert read_manifest(path, check_audio=False).bad[0].reason == "missing file"


def test_many_bad_rows_log_twenty_then_a_summary(data_dir, caplog):
    rows = [{"audio": f"clips/missing{i}.wav", "caption": "x"} for i in range(25)]
    rows += [{"audio": "clips/a.wav", "caption": ""}, {"audio": "clips/a.wav", "caption": "ok"}]
    write_manifest(data_dir / "m.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="clarion.data"):
        m = read_manifest(data_dir / "m.jsonl")
    assert len(m.bad) == 26 and len(m) == 1
    assert len(caplog.records) == 21
    assert "6 more bad rows" in caplog.records[-1].getMessage()
    assert "25 missing file, 1 empty caption" in caplog.records[-1].getMessage()
    assert m.summary() == "1 rows, 1 clips, 26 bad rows skipped: 25 missing file, 1 empty caption"


def test_missing_caption_column(data_dir):
    (data_dir / "m.csv").write_text("audio,label\nclips/a.wav,dog\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(data_dir / "m.csv")
    message = str(info.value)
    assert str(data_dir / "m.csv") in message
    assert "missing required column(s) caption" in message
    assert "found columns: audio, label" in message
    assert "required: audio, caption" in message
    assert not isinstance(info.value, BadSampleError)


def test_invalid_json_line(data_dir):
    good = json.dumps({"audio": "clips/a.wav", "caption": "x"})
    (data_dir / "m.jsonl").write_text(f"{good}\n{good}\n{{'audio': oops}}\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: invalid JSON"):
        read_manifest(data_dir / "m.jsonl")
    (data_dir / "m.jsonl").write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: expected a JSON object"):
        read_manifest(data_dir / "m.jsonl")


def test_structural_errors(data_dir):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(data_dir / "none.csv")
    (data_dir / "m.tsv").write_text("audio\tcaption\n")
    with pytest.raises(ManifestError, match="unknown manifest extension"):
        read_manifest(data_dir / "m.tsv")
    (data_dir / "m.csv").write_bytes(b"audio,caption\nclips/a.wav,caf\xe9\n")
    with pytest.raises(ManifestError, match="cannot decode"):
        read_manifest(data_dir / "m.csv")
    (data_dir / "m.csv").write_text("")
    with pytest.raises(ManifestError, match=r"found columns: \(none\)"):
        read_manifest(data_dir / "m.csv")


def test_unknown_policy(data_dir):
    """The policy is checked once, where every command opens its data (open_source)."""
    from clarion.data.open import open_source

    write_manifest(data_dir / "m.csv", [{"audio": "clips/a.wav", "caption": "x"}])
    with pytest.raises(ValueError, match="on_bad_sample"):
        open_source(data_dir / "m.csv", on_bad_sample="ignore")


def test_all_rows_bad(data_dir):
    rows = [{"audio": "clips/nope.wav", "caption": "x"}, {"audio": "clips/nope2.wav", "caption": "y"}]
    write_manifest(data_dir / "m.csv", rows)
    with pytest.raises(ManifestError, match="no usable rows in .*m.csv: 2 missing file"):
        read_manifest(data_dir / "m.csv")
    (data_dir / "h.csv").write_text("audio,caption\n")
    with pytest.raises(ManifestError, match="no usable rows"):
        read_manifest(data_dir / "h.csv")


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl"])
def test_write_manifest_round_trip(data_dir, name):
    rows = [
        {"audio": data_dir / "clips" / "a.wav", "caption": 'say "hi", twice', "lang": "en"},
        {"audio": "../clips/b.wav", "caption": "rain", "other": 1},
    ]
    write_manifest(data_dir / "out" / name, rows)
    if name.endswith(".csv"):
        assert (data_dir / "out" / name).read_text().splitlines()[0] == "audio,caption,lang"
    m = read_manifest(data_dir / "out" / name)
    assert [r.caption for r in m.rows] == ['say "hi", twice', "rain"]
    assert [r.lang for r in m.rows] == ["en", None]
    assert [r.audio for r in m.rows] == [data_dir / "clips" / "a.wav", data_dir / "clips" / "b.wav"]


def test_subset_by_lang(data_dir):
    rows = [
        {"audio": "clips/a.wav", "caption": "a dog", "lang": "en"},
        {"audio": "clips/a.wav", "caption": "ein Hund", "lang": "de"},
        {"audio": "clips/b.wav", "caption": "rain", "lang": "en"},
    ]
    write_manifest(data_dir / "m.csv", rows)
    m = read_manifest(data_dir / "m.csv")
    en = m.subset("en")
    assert isinstance(en, Manifest)
    assert en.captions == ["a dog", "rain"]
    assert en.clips == m.clips
    assert m.subset("de").captions == ["ein Hund"]
    assert len(m.subset("fr")) == 0


def test_bad_row_str():
    bad = BadRow(manifest=Path("/x/m.csv"), line=7, audio="a.wav", reason="missing file")
    assert str(bad) == "/x/m.csv:7: missing file (a.wav)"
