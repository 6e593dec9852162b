"""Hostile and broken inputs: property-based tests (hypothesis) and byte fuzzing of the audio
decoder, the manifest parser and the dataset adapters.

The contract under test: every input gives a usable result, a clear clarion error
(:class:`AudioError` with the file and reason, :class:`ManifestError` naming the file) or a
counted skip; nothing else escapes, nothing hangs (a per-test hang guard far above any machine's
need, never a speed assertion; FIFOs are refused before they are opened) and memory follows what is decoded, never what a header declares
(``tracemalloc`` peaks; numpy's buffers are traced).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion.audio import AudioError, decode_audio, read_audio
from clarion.data.check import check_data, inspect_clip, write_problems
from clarion.data.manifest import ManifestError, csv_safe, read_manifest, write_manifest
from clarion.data.open import open_source

SR = 16000
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MiB = 1 << 20
HANG_GUARD_S = 600


def _hung(signum, frame):
    raise TimeoutError(f"a test of hostile inputs ran for {HANG_GUARD_S} s: something hangs")


@pytest.fixture(autouse=True)
def hang_guard():
    """Turn a hang (e.g. a blocking open) into a failure; far above what any machine needs."""
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(HANG_GUARD_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def wav_header(channels: int, rate: int, bits: int, data_bytes: int, fmt: int = 1) -> bytes:
    """A canonical 44-byte RIFF/WAVE header; every field is whatever the caller says."""
    block = (channels * bits // 8) & 0xFFFF
    return (b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
            + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def decode_bounded(data: bytes, max_seconds: float | None = 600.0, peak_limit: int = 64 * MiB) -> np.ndarray | None:
    """decode_audio on bytes: a finite mono float32 array or None (AudioError); peak memory checked."""
    tracemalloc.start()
    try:
        wave = decode_audio(io.BytesIO(data), SR, max_seconds, name="fuzz.wav")
    except AudioError as e:
        assert e.path == "fuzz.wav" and e.reason
        wave = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < peak_limit, f"decoding {len(data)} bytes peaked at {peak / MiB:.0f} MiB"
    if wave is not None:
        assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) > 0 and np.isfinite(wave).all()
    return wave


# --- audio ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_audio(data):
    decode_bounded(data)


@FUZZ
@given(
    channels=st.integers(0, 0xFFFF), rate=st.integers(0, 0xFFFFFFFF), bits=st.sampled_from([0, 8, 16, 24, 32, 64, 7, 4096]),
    fmt=st.sampled_from([1, 3, 0, 0xFFFE, 0x55]), declared=st.integers(0, 0xFFFFFFFF), payload=st.binary(max_size=2048),
)
def test_wav_header_with_hostile_fields(channels, rate, bits, fmt, declared, payload):
    """Random channel counts, rates, widths and declared sizes (up to 4 GiB, i.e. billions of
    frames) over a small payload: memory stays bounded by the bytes actually present."""
    wave = decode_bounded(wav_header(channels, rate, bits, declared, fmt) + payload)
    assert wave is None or len(wave) <= 600 * SR  # the max_seconds cap


@pytest.mark.parametrize("channels, rate", [(8, 192000), (1, 8000), (2, 44100)])
def test_header_declaring_billions_of_frames(channels, rate):
    frames = 1000
    pcm = (np.random.default_rng(0).uniform(-0.5, 0.5, (frames, channels)) * 32767).astype("<i2").tobytes()
    data = wav_header(channels, rate, 16, 0xFFFFFFF0) + pcm  # declares ~4 GiB of samples
    wave = decode_bounded(data, peak_limit=16 * MiB)
    assert wave is not None and abs(len(wave) - round(frames * SR / rate)) <= 1
    wave = decode_bounded(data, max_seconds=None, peak_limit=16 * MiB)  # no cap: still only what is there
    assert wave is not None and abs(len(wave) - round(frames * SR / rate)) <= 1


def test_truncated_headers_and_files(tmp_path):
    sf.write(tmp_path / "ok.wav", np.sin(np.arange(4000) / 5).astype(np.float32), SR, subtype="PCM_16")
    full = (tmp_path / "ok.wav").read_bytes()
    for cut in [*range(0, 60), 100, 1000, len(full) - 1]:
        wave = decode_bounded(full[:cut])
        assert wave is None or len(wave) <= 4000
    assert decode_bounded(full[:44]) is None  # a header and no samples: "empty audio"


@pytest.mark.parametrize("channels, rate", [(8, 16000), (8, 8000), (1, 8000), (2, 192000), (8, 192000)])
def test_channels_and_rates_decode_to_mono_at_the_model_rate(tmp_path, channels, rate):
    t = np.arange(rate // 2) / rate  # 0.5 s
    columns = [0.1 * (c + 1) * np.sin(2 * np.pi * 440 * t) for c in range(channels)]
    sf.write(tmp_path / "x.wav", np.stack(columns, axis=1).astype(np.float32), rate, subtype="FLOAT")
    wave = read_audio(tmp_path / "x.wav", SR)
    assert wave.shape == (SR // 2,)
    expected_peak = np.mean([0.1 * (c + 1) for c in range(channels)])  # channels are averaged
    assert abs(np.abs(wave).max() - expected_peak) < 0.02


def test_one_hour_file_is_capped_by_max_seconds(tmp_path):
    """A 1-hour file (8 kHz, written in chunks) decodes to exactly audio.max_seconds of samples,
    and memory peaks near the capped result, not the hour."""
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        chunk = (np.sin(np.arange(8000 * 60) / 3) * 0.3).astype(np.float32)
        for _ in range(60):
            f.write(chunk)
    assert sf.info(str(path)).duration == 3600
    from clarion.config import Config

    cap = Config().audio.max_seconds
    tracemalloc.start()
    wave = read_audio(path, SR, cap)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert wave.shape == (round(cap * SR),)
    hour_at_16k = 3600 * SR * 4
    assert peak < 2 * wave.nbytes and peak < hour_at_16k / 4, f"peak {peak / MiB:.0f} MiB"


def test_empty_file_and_fifo_are_clear_errors(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="empty audio"):
        read_audio(tmp_path / "empty.wav", SR)
    os.mkfifo(tmp_path / "fifo.wav")  # opening it would block forever
    with pytest.raises(AudioError, match="not a regular file"):
        read_audio(tmp_path / "fifo.wav", SR)
    (tmp_path / "m.csv").write_text(f"audio,caption\nfifo.wav,a pipe\nempty.wav,nothing\n{tmp_path / 'x.wav'},x\n")
    with pytest.raises(ManifestError, match="no usable rows"):
        read_manifest(tmp_path / "m.csv")


def test_data_check_survives_a_header_declaring_billions_of_frames(tmp_path):
    path = tmp_path / "liar.wav"
    path.write_bytes(wav_header(8, 192000, 16, 0xFFFFFFF0) + bytes(16 * 1000))
    info = inspect_clip(path)
    assert info.problems and info.problems[0][0] in {"corrupt", "silent"}


# --- manifests ---------------------------------------------------------------------------------

CAPTIONS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", 'quote " and, comma', "line\nbreak",
                     "x" * 10_000, "ünïcödé 音 🎵", "\x00nul"]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True,
          database=None)
@given(
    columns=st.lists(st.sampled_from(["audio", "caption", "label", "lang", "fold", "extra", "Caption"]), unique=True,
                     min_size=0, max_size=7),
    rows=st.lists(st.tuples(st.sampled_from(["ok.wav", "missing.wav", "", "=evil.wav"]), CAPTIONS, st.text(max_size=5)),
                  max_size=12),
    kind=st.sampled_from(["csv", "jsonl"]),
)
def test_manifest_round_trip_or_clear_error(tmp_path, columns, rows, kind):
    """Random columns (missing, extra) and captions (formulas, quotes, newlines, NUL, 10,000
    characters, non-ASCII): a row is usable iff its audio exists and its caption is not blank, its
    caption comes back exactly (stripped), and anything unusable is a ManifestError."""
    sf.write(tmp_path / "ok.wav", np.full(1600, 0.1, dtype=np.float32), SR)
    path = tmp_path / f"m.{kind}"
    records = [{"audio": a, "caption": c, "label": lab, "lang": lab, "fold": lab, "extra": lab, "Caption": c}
               for a, c, lab in rows]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if kind == "csv":
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([[r[c] for c in columns] for r in records])
        else:
            fh.writelines(json.dumps({c: r[c] for c in columns}) + "\n" for r in records)
    expected = [r["caption"].strip() for r in records
                if "audio" in columns and "caption" in columns and r["audio"] == "ok.wav" and r["caption"].strip()]
    try:
        manifest = read_manifest(path)
    except ManifestError as e:
        assert str(path) in str(e)
        assert not expected or "audio" not in columns or "caption" not in columns
        return
    assert manifest.captions == expected
    assert len(manifest.bad) == len(records) - len(expected)


@FUZZ
@given(data=st.binary(max_size=2048), kind=st.sampled_from(["csv", "jsonl"]))
def test_random_bytes_as_manifest(tmp_path, data, kind):
    path = tmp_path / f"m.{kind}"
    path.write_bytes(data)
    try:
        read_manifest(path)
    except ManifestError as e:
        assert str(path) in str(e)


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["audio", "caption", "label", "x"]), JSON, max_size=4) | JSON, max_size=6))
def test_random_json_lines_as_manifest(tmp_path, lines):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    try:
        read_manifest(path, check_audio=False)
    except ManifestError as e:
        assert str(path) in str(e)


def test_pathological_manifests_are_clear_errors(tmp_path):
    sf.write(tmp_path / "ok.wav", np.full(1600, 0.1, dtype=np.float32), SR)
    cases = {
        "latin1.csv": "audio,caption\nok.wav,caf\xe9 sounds\n".encode("latin-1"),
        "nested.jsonl": b"[" * 100_000 + b"\n",
        "huge_field.csv": b'audio,caption\nok.wav,"' + b"x" * 200_000 + b'"\n',
        "no_caption.csv": b"audio,label\nok.wav,x\n",
        "empty.csv": b"",
    }
    reasons = {"latin1.csv": "cannot decode as UTF-8", "nested.jsonl": "nested too deeply", "huge_field.csv": "invalid CSV",
               "no_caption.csv": "missing required column(s) caption", "empty.csv": "missing required column"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ManifestError, match=re.escape(reasons[name])) as info:
            read_manifest(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_lone_surrogate_caption_is_a_counted_bad_row(tmp_path):
    sf.write(tmp_path / "ok.wav", np.full(1600, 0.1, dtype=np.float32), SR)
    (tmp_path / "m.jsonl").write_text('{"audio": "ok.wav", "caption": "bad \\ud800 text"}\n'
                                      '{"audio": "ok.wav", "caption": "fine"}\n')
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert manifest.captions == ["fine"] and "not valid Unicode" in manifest.bad[0].reason
    assert manifest.bad[0].line == 1


def test_long_caption_is_kept_and_truncated_by_the_tokenizer(tmp_path):
    from clarion.config import load_config
    from clarion.models import build_model, train_tokenizer

    sf.write(tmp_path / "ok.wav", np.full(1600, 0.1, dtype=np.float32), SR)
    long = " ".join(["sound"] * 2000)  # 11,999 characters
    write_manifest(tmp_path / "m.csv", [{"audio": "ok.wav", "caption": long}, {"audio": "ok.wav", "caption": "short"}])
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.captions[0] == long
    cfg = load_config(None, ["model.text_width=32", "model.text_layers=1", "model.text_heads=2", "model.embed_dim=16",
                             "model.audio_channels=[8]", "model.max_tokens=48"])
    model = build_model(cfg, train_tokenizer(manifest.captions, 100))
    ids, mask = model.text_encoder.tokenize(manifest.captions)
    assert ids.shape[1] <= 48
    assert model.embed_text(manifest.captions).isfinite().all()


def test_csv_injection_round_trips_in_manifests_and_is_neutralised_for_people(tmp_path):
    """Formula-like text stays verbatim in manifests (data), and gets a leading ' in the CSVs
    clarion writes for people: the data-check problems list and RUN/noisy_pairs.csv."""
    from clarion.data.noise import CorruptedPair, write_corrupted_pairs

    sf.write(tmp_path / "ok.wav", np.full(1600, 0.1, dtype=np.float32), SR)
    formula = "=cmd|' /C calc'!A0"
    write_manifest(tmp_path / "m.csv", [{"audio": "ok.wav", "caption": formula}])
    assert read_manifest(tmp_path / "m.csv").captions == [formula]  # data stays data

    (tmp_path / "ac").mkdir()  # an AudioCaps clip id as written lands in the problems CSV verbatim
    (tmp_path / "ac" / "train.csv").write_text(f'audiocap_id,youtube_id,start_time,caption\n1,"{formula}",0,+1 dog\n')
    report = write_problems(tmp_path / "problems.csv", check_data(f"audiocaps:{tmp_path / 'ac'}@train"))
    cells = [cell for row in csv.reader(open(report, encoding="utf-8")) for cell in row]
    assert "'" + formula in cells and not any(c.startswith(("=", "+", "-", "@")) for c in cells)

    write_corrupted_pairs(tmp_path / "noisy.csv", [CorruptedPair(0, "@a.wav", formula, "-x", 1)])
    cells = [cell for row in csv.reader(open(tmp_path / "noisy.csv", encoding="utf-8")) for cell in row]
    assert cells[5:] == ["0", "'@a.wav", "'" + formula, "'-x", "1"]
    assert [csv_safe(x) for x in ["=1", "+1", "-1", "@x", "\tx", "\rx", "safe", ""]] == \
        ["'=1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "safe", ""]


# --- dataset adapters ------------------------------------------------------------------------------

ADAPTER_FILES = {
    "clotho": "clotho_captions_development.csv",
    "audiocaps": "train.csv",
    "esc50": "meta/esc50.csv",
    "us8k": "metadata/UrbanSound8K.csv",
    "wavcaps": "x.json",
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True,
          database=None)
@given(name=st.sampled_from(sorted(ADAPTER_FILES)), data=st.binary(max_size=1024) | st.text(max_size=300).map(str.encode))
def test_random_metadata_in_dataset_layouts(tmp_path, name, data):
    root = tmp_path / name
    meta = root / ADAPTER_FILES[name]
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_bytes(data)
    (root / "development").mkdir(exist_ok=True)
    split = {"clotho": "@development", "audiocaps": "@train"}.get(name, "")
    try:
        open_source(f"{name}:{root}{split}")
    except ManifestError as e:
        assert name in str(e) or str(root) in str(e)


def test_wavcaps_deeply_nested_json_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_bytes(b'{"data": ' + b"[" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        open_source(f"wavcaps:{tmp_path / 'x.json'}")
