"""Whole recordings at inference (audio.long=windows): windows, streaming decode, pooling, the
windowed index (best window, offset), and a resumable index build killed with SIGKILL."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import clarion.audio.windows as windows_module
from clarion.api import load
from clarion.audio import AudioError, WindowPlan, file_summary, file_windows, read_audio, wave_windows
from clarion.config import ConfigError, load_config
from clarion.data.manifest import read_manifest
from clarion.evaluate.embed import embed_clips
from clarion.serve.index import SearchIndex, best_windows, build_index

from serve_fixtures import clip_wave, tiny_run, write_clips

CPU = torch.device("cpu")
RATE = 16000
EVENT_AT = 40  # seconds: where the only sound of the long file sits


def event_wave() -> np.ndarray:
    """One second of a sound no library clip has: a falling chirp with a tremolo."""
    t = np.arange(RATE) / RATE
    return (0.6 * np.sin(2 * np.pi * 3000 * t * (1 - 0.4 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 7 * t))).astype(np.float32)


def long_wave(seconds: int = 60) -> np.ndarray:
    wave = np.zeros(seconds * RATE, np.float32)  # silence around the event
    wave[EVENT_AT * RATE : (EVENT_AT + 1) * RATE] += event_wave()
    return wave


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("long")
    write_clips(root / "audio")
    (root / "audio" / "long").mkdir()
    sf.write(root / "audio" / "long" / "field_recording.wav", long_wave(), RATE, subtype="FLOAT")
    run = tiny_run(root / "run", 0)
    return {"root": root, "audio": root / "audio", "run": run, "long": root / "audio" / "long" / "field_recording.wav"}


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("window,hop", [(4, 4), (4, 3), (4, 6), (5, 1)])
def test_window_starts_cover_the_signal(window, hop):
    plan = WindowPlan(window, hop)
    for n in range(1, 30):
        starts, s = [], 0
        while True:  # the reference: windows until one reaches the end
            starts.append(s)
            if s + window >= n:
                break
            s += hop
        assert plan.starts(n) == starts
        assert plan.count(n) == len(starts)


def test_window_plan_from_config():
    cfg = load_config(None, ["audio.clip_seconds=2.0", "audio.long=windows"]).audio
    assert WindowPlan.from_config(cfg) == WindowPlan(32000, 32000)
    cfg = load_config(None, ["audio.long=windows", "audio.window_seconds=1.5", "audio.hop_seconds=0.5"]).audio
    assert WindowPlan.from_config(cfg) == WindowPlan(24000, 8000)
    with pytest.raises(ConfigError, match="audio.long"):
        load_config(None, ["audio.long=random"])
    with pytest.raises(ConfigError, match="audio.hop_seconds"):
        load_config(None, ["audio.hop_seconds=0"])


@pytest.mark.parametrize("rate,channels", [(RATE, 1), (44100, 2), (8000, 3)])
def test_streamed_windows_equal_windows_of_the_whole_decode(tmp_path, monkeypatch, rate, channels):
    """Blocks much smaller than a window (so windows straddle blocks), at and off the model's rate."""
    monkeypatch.setattr(windows_module, "BLOCK_FRAMES", 1000)
    signal = np.random.default_rng(rate).uniform(-0.5, 0.5, (int(7.3 * rate), channels)).astype(np.float32)
    sf.write(tmp_path / "x.wav", signal, rate, subtype="FLOAT")
    whole = read_audio(tmp_path / "x.wav", RATE, None)
    plan = WindowPlan(2 * RATE, 1500 * RATE // 1000)
    streamed = list(file_windows(tmp_path / "x.wav", RATE, plan))
    reference = list(wave_windows(whole, plan))
    assert [s for s, _ in streamed] == [s for s, _ in reference] == plan.starts(len(whole))
    for (_, a), (_, b) in zip(streamed, reference):
        assert a.shape == (2 * RATE,)
        np.testing.assert_allclose(a, b, atol=1e-4)  # soxr in pieces vs at once


def test_bad_files_raise_audio_errors(tmp_path):
    plan = WindowPlan(RATE, RATE)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * RATE, np.float32), RATE, subtype="FLOAT")
    for name, reason in [("missing.wav", "file not found"), ("junk.wav", "cannot decode"),
                         ("empty.wav", "empty audio"), ("nan.wav", "non-finite")]:
        with pytest.raises(AudioError, match=reason):
            list(file_windows(tmp_path / name, RATE, plan))


def test_file_summary_duration_and_peaks(tmp_path):
    wave = np.zeros(10 * 8000, np.float32)
    wave[4 * 8000 : 5 * 8000] = 0.5  # loud only in the 5th second
    sf.write(tmp_path / "x.wav", wave, 8000, subtype="FLOAT")
    duration, peaks = file_summary(tmp_path / "x.wav", bins=10)
    assert duration == pytest.approx(10.0)
    np.testing.assert_array_equal(peaks, [0, 0, 0, 0, 128, 0, 0, 0, 0, 0])


# --- embedding whole files ----------------------------------------------------------------


def test_windowed_embedding_is_the_pooled_window_embeddings(setup):
    model = load(setup["run"], "cpu", long="windows", window_seconds=1.0, hop_seconds=0.75)
    wave = read_audio(setup["long"], RATE, None)
    pieces, s = [], 0
    while True:  # the reference: one window at a time until one reaches the end
        pieces.append(np.pad(wave[s : s + RATE], (0, max(0, s + RATE - len(wave)))))
        if s + RATE >= len(wave):
            break
        s += 12000
    with torch.no_grad():
        per_window = torch.cat([model.model.embed_audio(torch.from_numpy(p)[None]) for p in pieces])
    assert len(per_window) == WindowPlan(RATE, 12000).count(len(wave)) == 80
    expected_mean = torch.nn.functional.normalize(per_window.mean(0), dim=0)
    got = model.embed_audio(setup["long"], batch_size=7)[0]
    torch.testing.assert_close(got, expected_mean, atol=1e-5, rtol=0)
    model.set_long(pool="max")
    expected_max = torch.nn.functional.normalize(per_window.max(0).values, dim=0)
    torch.testing.assert_close(model.embed_audio(setup["long"])[0], expected_max, atol=1e-5, rtol=0)


def test_the_same_file_always_gives_the_same_embedding(setup):
    model = load(setup["run"], "cpu", long="windows")
    first = model.embed_audio(setup["long"])
    for _ in range(2):
        assert torch.equal(model.embed_audio(setup["long"]), first)
    # a waveform and the file agree
    torch.testing.assert_close(model.embed_audio(long_wave()), first, atol=1e-5, rtol=0)


def test_embed_files_windowed_skips_bad_files_and_matches_evaluation(setup, tmp_path):
    model = load(setup["run"], "cpu", long="windows", window_seconds=1.0, hop_seconds=0.5)
    (tmp_path / "bad.wav").write_bytes(b"junk" * 50)
    paths = [setup["audio"] / "tones/low_220.wav", tmp_path / "bad.wav", setup["long"], setup["audio"] / "beeps_880.ogg"]
    result = model.embed_files(paths, batch_size=3, keep_windows=True)
    assert result.ok == [0, 2, 3] and [p for p, _ in result.bad] == [str(tmp_path / "bad.wav")]
    assert [len(s) for s in result.starts] == [1, 119, 1] and result.starts[1][80] == 40.0
    for row, i in enumerate(result.ok):
        torch.testing.assert_close(result.embeddings[row], model.embed_audio(paths[i])[0], atol=1e-5, rtol=0)
    with pytest.raises(AudioError, match="cannot decode"):
        model.embed_audio(paths)
    # evaluation embeds the clips of a manifest the same way
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,caption\n" + "".join(f"{p},clip {i}\n" for i, p in enumerate(paths)))
    cfg = model.cfg
    emb, clip_index, bad = embed_clips(model.model, read_manifest(manifest, "skip", False), cfg, CPU)
    assert clip_index.tolist() == [0, 2, 3] and len(bad) == 1
    torch.testing.assert_close(emb, result.embeddings, atol=1e-5, rtol=0)


def test_memory_stays_bounded_for_a_one_hour_file(setup, tmp_path):
    """An hour at 16 kHz is 230 MB of float32; streaming holds a block and a window. The file is
    written at 4 kHz (28 MB on disk) and upsampled while it is read."""
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", 4000, 1, subtype="PCM_16") as f:
        for minute in range(60):
            f.write(0.1 * np.sin(np.arange(minute * 240000, (minute + 1) * 240000) * 0.01).astype(np.float32))
    model = load(setup["run"], "cpu", long="windows", window_seconds=20.0)
    tracemalloc.start()
    try:
        result = model.embed_files([path], batch_size=4, keep_windows=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok == [0] and len(result.starts[0]) == 180
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB of numpy/Python memory for a one-hour file"


# --- the windowed index -------------------------------------------------------------------


def test_best_windows_match_an_explicit_loop():
    gen = torch.Generator().manual_seed(0)
    windows = torch.nn.functional.normalize(torch.randn(500, 8, generator=gen), dim=1)
    windows[10] = windows[3]  # a tie within entry 0: the first row wins
    entry = torch.randint(0, 40, (500,), generator=gen)
    entry[3] = entry[10] = 0
    query = windows[3].clone()
    best, row = best_windows(query, windows, entry, 41, chunk_size=37)
    for i in range(41):
        rows = [w for w in range(500) if entry[w] == i]
        if not rows:
            assert best[i] == float("-inf") and row[i] == -1
            continue
        scores = [float(windows[w] @ query) for w in rows]
        assert best[i].item() == pytest.approx(max(scores), abs=1e-6)
        assert row[i].item() == rows[int(np.argmax(scores))]
    assert row[0].item() == 3


def test_event_at_40_s_is_found_with_windows_and_not_with_first(setup, tmp_path):
    """Query by the event's own sound (the tiny random-init model has no trained text side)."""
    build_index(setup["audio"], setup["run"], tmp_path / "first", device="cpu")
    summary = build_index(setup["audio"], load(setup["run"], "cpu"), tmp_path / "windows", windows=True)
    assert summary["total"] == 13 and summary["windows"] == 12 + 60
    first, windowed = SearchIndex.open(tmp_path / "first"), SearchIndex.open(tmp_path / "windows")
    hits = windowed.search_audio(event_wave(), RATE, 3)
    assert hits[0].path == "long/field_recording.wav" and hits[0].offset == EVENT_AT
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.offset == 0 for h in hits[1:])  # one-second clips have one window
    missed = first.search_audio(event_wave(), RATE, 13)
    assert missed[0].path != "long/field_recording.wav" and all(h.offset is None for h in missed)
    long_hit = next(h for h in missed if h.path == "long/field_recording.wav")
    assert long_hit.rank > 1 and long_hit.score < missed[0].score
    # the pooled embeddings kept beside the windows are the model's windowed embeddings
    j = windowed.paths.index("long/field_recording.wav")
    model = load(setup["run"], "cpu", long="windows")
    torch.testing.assert_close(windowed.embeddings[j], model.embed_audio(setup["long"])[0], atol=1e-5, rtol=0)
    assert windowed.durations[j] == pytest.approx(60.0)
    bin_seconds = 60 / 64  # the thumbnail is loud only in the bins the event covers
    assert np.flatnonzero(windowed.thumbs[j]).tolist() == list(range(int(EVENT_AT / bin_seconds), int((EVENT_AT + 1) / bin_seconds) + 1))


def test_a_text_query_finds_the_event_at_40_s_only_with_windows(tone_data, tmp_path):
    """A tiny model trained for a few seconds on the tone clips of conftest (captions such as "a
    very high tone beeps twice"); the library holds one-beep clips and a silent 60 s file whose
    only sound, at 40 s, beeps twice."""
    from conftest import PITCHES, TINY

    from clarion.train.loop import train

    cfg = load_config(None, [*TINY, f"data.train={tone_data['train']}", "train.batch_size=16", "train.epochs=6",
                             "train.device=cpu"])
    train(cfg, tmp_path / "run")
    t = np.arange(RATE) / RATE
    library = tmp_path / "library"
    library.mkdir()
    for name, freq in PITCHES.items():
        for beeps in (1, 2):
            gate = sum(((t >= 0.1 + 0.45 * b) & (t < 0.4 + 0.45 * b)).astype(np.float32) for b in range(beeps))
            wave = (0.5 * gate * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            if beeps == 1:
                sf.write(library / f"{name.replace(' ', '_')}_once.wav", wave, RATE)
            elif name == "very high":
                recording = np.zeros(60 * RATE, np.float32)
                recording[EVENT_AT * RATE : (EVENT_AT + 1) * RATE] = wave
                sf.write(library / "recording.wav", recording, RATE)
    build_index(library, tmp_path / "run", tmp_path / "first", device="cpu")
    build_index(library, tmp_path / "run", tmp_path / "windows", device="cpu", windows=True)
    query = "a very high tone beeps twice"
    hit = SearchIndex.open(tmp_path / "windows").search_text(query, 1)[0]
    assert (hit.path, hit.offset) == ("recording.wav", EVENT_AT)
    assert SearchIndex.open(tmp_path / "first").search_text(query, 5)[-1].path == "recording.wav"  # silence ranks last


def test_settings_are_part_of_the_index(setup, tmp_path):
    build_index(setup["audio"], setup["run"], tmp_path / "index", device="cpu", windows=True)
    with pytest.raises(Exception, match="--rebuild"):
        build_index(setup["audio"], setup["run"], tmp_path / "index", device="cpu")
    again = build_index(setup["audio"], setup["run"], tmp_path / "index", device="cpu", windows=True)
    assert again["unchanged"] == 13 and again["embedded"] == 0


def test_manifest_index_keeps_captions(setup, tmp_path):
    manifest = setup["root"] / "captions.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "caption"])
        writer.writerow(["audio/tones/low_220.wav", "a low hum"])
        writer.writerow(["audio/tones/low_220.wav", "a second caption"])
        writer.writerow(["audio/long/field_recording.wav", "a quiet field, then a chirp"])
        writer.writerow(["audio/gone.wav", "a file that is not there"])
    summary = build_index(manifest, setup["run"], tmp_path / "index", device="cpu")
    assert summary["total"] == 2 and summary["skipped"] == 1
    assert (tmp_path / "index" / "skipped.csv").read_text() == "path,reason\naudio/gone.wav,missing file\n"
    index = SearchIndex.open(tmp_path / "index")
    assert index.paths == ["audio/long/field_recording.wav", "audio/tones/low_220.wav"]
    assert index.captions == ["a quiet field, then a chirp", "a low hum"]
    assert index.durations == pytest.approx([60.0, 1.0])


# --- resumable build ----------------------------------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
HANG_GUARD_S = 600  # a hung build becomes a failure; never a speed assumption


def _build_cmd(audio: Path, run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "clarion.cli", "index", "build", str(audio), "--model", str(run), "--out", str(out),
            "--device", "cpu", "--chunk-files", "3", "--batch-size", "2", "--windows", "--window-seconds", "0.5", "-q"]


def test_killed_index_build_resumes_and_equals_an_uninterrupted_one(setup, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(60):  # 20 chunks of 3 files
        sf.write(audio / f"clip_{i:03d}.wav", clip_wave("tone", 200.0 + 37 * i, 1.0 + (i % 3) * 0.5), RATE)
    out = tmp_path / "index"
    proc = subprocess.Popen(_build_cmd(audio, setup["run"], out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    guard = time.monotonic() + HANG_GUARD_S
    while proc.poll() is None and not (out / "partial" / "chunk-00001.json").exists():
        assert time.monotonic() < guard, "no chunk committed"
        time.sleep(0.0005)
    assert proc.poll() is None, f"the build ended before it was killed: {proc.stderr.read().decode()}"
    proc.kill()
    proc.wait()
    assert not (out / "index.json").exists()
    committed = sum(len(json.loads(p.read_text())["files"]) for p in (out / "partial").glob("chunk-*.json"))
    assert 6 <= committed <= 60

    done = subprocess.run(_build_cmd(audio, setup["run"], out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{60 - committed} embedded now, {committed} resumed" in done.stdout
    assert not (out / "partial").exists()

    clean = tmp_path / "clean"
    subprocess.run(_build_cmd(audio, setup["run"], clean), env=ENV, check=True, capture_output=True)
    for name in ("entries.csv", "skipped.csv"):
        assert (out / name).read_text() == (clean / name).read_text()
    for name in ("embeddings.npy", "thumbs.npy", "windows.npy", "window_map.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(clean / name), err_msg=name)


def test_a_partial_build_of_other_settings_is_discarded(setup, tmp_path, caplog):
    out = tmp_path / "index"
    model = load(setup["run"], "cpu")
    from clarion.serve.index import _Partial

    partial = _Partial(out, {"model_fingerprint": "another", "source": "x", "long": {}, "windows": False})
    partial.resume()
    partial.commit([], [("gone.wav", "file not found")], model.embed_dim, False)
    summary = build_index(setup["audio"], model, out)
    assert summary["resumed"] == 0 and summary["embedded"] == 13
    assert "discarding the unfinished build" in caplog.text


# --- compatibility and commands -----------------------------------------------------------


def test_long_settings_leave_the_fingerprint_and_old_configs_alone(setup):
    model = load(setup["run"], "cpu")
    before = model.fingerprint
    assert load(setup["run"], "cpu", long="windows", hop_seconds=0.5).fingerprint == before
    assert model.long_settings == {"long": "first", "clip_seconds": 1.0}
    with pytest.raises(ConfigError, match="audio.pool"):
        model.set_long(pool="median")
    # a config.yaml written before these keys existed still loads, reading `first`
    text = (setup["run"] / "config.yaml").read_text()
    assert "long: first" in text
    old = setup["root"] / "old_run"
    old.mkdir()
    for name in os.listdir(setup["run"]):
        (old / name).write_bytes((setup["run"] / name).read_bytes())
    (old / "config.yaml").write_text("".join(line for line in text.splitlines(keepends=True)
                                             if not line.strip().startswith(("long:", "window_seconds:", "hop_seconds:", "pool:"))))
    assert load(old, "cpu").cfg.audio.long == "first" and load(old, "cpu").fingerprint == before


def test_a_version_1_index_is_read_and_upgraded(setup, tmp_path):
    out = tmp_path / "index"
    build_index(setup["audio"], setup["run"], out, device="cpu")
    info = json.loads((out / "index.json").read_text())
    rows = list(csv.reader(open(out / "entries.csv")))
    with open(out / "entries.csv", "w", newline="") as fh:  # the version 1 layout
        csv.writer(fh, lineterminator="\n").writerows([r[:4] for r in rows])
    (out / "thumbs.npy").unlink()
    info = {k: v for k, v in info.items() if k not in ("long", "windows", "window_count", "source")}
    (out / "index.json").write_text(json.dumps({**info, "version": 1}))
    old = SearchIndex.open(out)
    assert old.thumbs is None and old.durations == [None] * 13
    assert old.search_text("a tone", 2)[0].offset is None
    summary = build_index(setup["audio"], setup["run"], out, device="cpu")
    assert summary["unchanged"] == 13 and summary["embedded"] == 0
    new = SearchIndex.open(out)
    assert new.info["version"] == 2 and new.thumbs.shape == (13, 64) and new.durations[0] == pytest.approx(1.0)


def test_index_build_windows_and_search_commands(setup, tmp_path, capsys):
    from clarion.cli import main

    sf.write(tmp_path / "event.wav", event_wave(), RATE)
    assert main(["index", "build", str(setup["audio"]), "--model", str(setup["run"]), "--out", str(tmp_path / "index"),
                 "--device", "cpu", "--windows", "-q"]) == 0
    assert "13 files, 72 windows" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "index"), "--audio", str(tmp_path / "event.wav"), "-k", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("long/field_recording.wav  at 0:40")
    assert main(["embed", str(setup["audio"]), "--model", str(setup["run"]), "--out", str(tmp_path / "emb.npy"),
                 "--device", "cpu", "--long", "windows", "--hop-seconds", "0.5", "-q"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "emb.csv")))
    j = [r["path"] for r in rows].index("long/field_recording.wav")
    expected = load(setup["run"], "cpu", long="windows", hop_seconds=0.5).embed_audio(setup["long"])[0]
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy")[j], expected.numpy(), atol=1e-5)
    with pytest.raises(SystemExit):
        main(["embed", str(setup["audio"]), "--model", str(setup["run"]), "--out", str(tmp_path / "x.npy"), "--long", "all"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windowed_search_on_cuda(setup, tmp_path):
    build_index(setup["audio"], setup["run"], tmp_path / "index", device="cpu", windows=True)
    cpu, gpu = SearchIndex.open(tmp_path / "index"), SearchIndex.open(tmp_path / "index", device="cuda")
    assert gpu.windows.device.type == "cuda" and gpu.model.device.type == "cuda"
    hit = gpu.search_audio(event_wave(), RATE, 1)[0]
    assert (hit.path, hit.offset) == ("long/field_recording.wav", EVENT_AT)
    want, got = cpu.search_text("a chirp", 13), gpu.search_text("a chirp", 13)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-2)  # cuDNN may use TF32
    torch.testing.assert_close(gpu.model.embed_audio(setup["long"]), cpu.model.embed_audio(setup["long"]), atol=1e-2, rtol=0)


def test_evaluate_command_reads_whole_clips_with_long_windows(setup, tmp_path, capsys):
    from clarion.cli import main
    from clarion.evaluate.embed import evaluate_retrieval
    from clarion.rundir import load_model

    manifest = tmp_path / "m.csv"
    rels = ["tones/low_220.wav", "noise/white_0.wav", "long/field_recording.wav", "chirps/up_300.wav"]
    manifest.write_text("audio,caption\n" + "".join(f"{setup['audio'] / r},a clip {i}\n" for i, r in enumerate(rels)))
    geometry = []
    for extra in ([], ["--long", "windows", "--hop-seconds", "0.5", "--pool", "max"]):
        assert main(["evaluate", str(setup["run"]), "--data", str(manifest), "--json", str(tmp_path / "m.json"),
                     "--device", "cpu", "-q", *extra]) == 0
        got = json.loads((tmp_path / "m.json").read_text())
        cfg, model = load_model(setup["run"], CPU)
        if extra:
            cfg.audio = load_config(None, ["audio.clip_seconds=1.0", "audio.long=windows", "audio.hop_seconds=0.5",
                                           "audio.pool=max"]).audio
        want = evaluate_retrieval(model, read_manifest(manifest), cfg, CPU)
        assert got["t2a"] == pytest.approx(want["t2a"]) and got["geometry"] == pytest.approx(want["geometry"])
        geometry.append(got["geometry"])
    assert geometry[0] != pytest.approx(geometry[1])  # the long clip is read whole the second time
    assert main(["evaluate", str(setup["run"]), "--data", str(manifest), "--long", "windows", "--hop-seconds", "0", "-q"]) == 2
    assert "--hop-seconds must be positive" in capsys.readouterr().err
