"""The synthetic scene generator: layout, determinism, sound types, attributes, captions,
held-out combinations."""

from __future__ import annotations

import csv
import json
import re
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clarion.synth.generate import (
    LANGUAGES,
    REPETITIONS,
    SOUND_TYPES,
    generate,
    plan_holds,
    render_event,
    retrieval_ceiling,
)
from clarion.synth.captions import caption_clip, type_terms

SR = 16000
SIZES = {"n_train": 24, "n_val": 6, "n_test": 24}
PITCHED = [name for name, sound in SOUND_TYPES.items() if sound.pitched]
ORDER_WORDS = re.compile(r"\b(then|followed|after|before|first|finally)\b", re.I)
OVERLAP_WORDS = re.compile(r"\b(while|same time|over|together)\b", re.I)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    generate(out, seed=0, workers=1, **SIZES)
    return out


@pytest.fixture(scope="module")
def pairs_data(tmp_path_factory) -> Path:
    """Only two-event clips, always one after the other."""
    out = tmp_path_factory.mktemp("synth") / "pairs"
    generate(out, n_train=40, n_val=0, n_test=0, seed=3, workers=2, min_events=2, max_events=2, overlap_rate=0.0)
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def read_meta(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "meta.jsonl").read_text(encoding="utf-8").splitlines()]


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[spectrum.argmax()])


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x**2))


def active_seconds(x: np.ndarray, below_peak_db: float = 30.0) -> float:
    """Total length of 10 ms frames within ``below_peak_db`` of the loudest frame."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    energy = np.mean(frames**2, axis=1)
    return float(np.sum(energy > energy.max() * 10 ** (-below_peak_db / 10)) * 0.01)


def first_position(caption: str, type_name: str) -> int | None:
    hits = [caption.lower().find(term) for term in type_terms("en", type_name)]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def test_layout_columns_and_row_counts(data):
    clips = {"train": SIZES["n_train"], "val": SIZES["n_val"], "test": SIZES["n_test"]}
    expected = {f"audio/{s}/{s}_{i:05d}.wav" for s, n in clips.items() for i in range(n)}
    assert {str(p.relative_to(data)) for p in (data / "audio").rglob("*.wav")} == expected
    manifests = {f"{s}.csv": (clips[s], ("en",)) for s in clips}
    manifests["train_multilingual.csv"] = (clips["train"], LANGUAGES)
    manifests |= {f"{s}_{lang}.csv": (clips[s], (lang,)) for s in ("val", "test") for lang in LANGUAGES}
    for name, (n_clips, langs) in manifests.items():
        columns, rows = read_csv(data / name)
        assert columns == ["audio", "caption", "label", "lang"], name
        assert len(rows) == 5 * n_clips * len(langs), name
        assert {r["lang"] for r in rows} == set(langs), name
        for lang in langs:
            per_clip = {}
            for r in rows:
                if r["lang"] == lang:
                    per_clip.setdefault(r["audio"], []).append(r["caption"])
            assert len(per_clip) == n_clips and all(len(c) == 5 for c in per_clip.values()), name
    assert (data / "test.csv").read_bytes() == (data / "test_en.csv").read_bytes()
    for path in sorted(expected)[::7]:
        audio, sr = sf.read(data / path)
        info = sf.info(data / path)
        assert sr == SR and audio.shape == (4 * SR,) and info.subtype == "PCM_16"
    summary = json.loads((data / "synth.json").read_text())
    assert summary["seed"] == 0 and summary["clips"] == clips and summary["version"]
    assert len(read_meta(data)) == sum(clips.values())


def test_same_seed_same_bytes_whatever_the_workers(data, tmp_path):
    generate(tmp_path / "again", seed=0, workers=2, **SIZES)
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (data / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_other_seed_differs(data, tmp_path):
    generate(tmp_path / "other", seed=1, workers=1, **SIZES)
    assert (data / "train.csv").read_bytes() != (tmp_path / "other" / "train.csv").read_bytes()
    for name in ("train/train_00000.wav", "test/test_00003.wav"):
        assert (data / "audio" / name).read_bytes() != (tmp_path / "other" / "audio" / name).read_bytes()


def test_at_least_twelve_types_render_every_attribute_setting():
    assert len(SOUND_TYPES) >= 12
    for name, sound in SOUND_TYPES.items():
        pitches = ("low", "high") if sound.pitched else (None,)
        settings = product(pitches, ("loud", "quiet"), ("short", "long"), REPETITIONS)
        for pitch, loudness, duration, repetitions in settings:
            if duration == "long" and repetitions != "once":
                continue  # repeated events are always short
            x, event = render_event(name, pitch=pitch, loudness=loudness, duration=duration, repetitions=repetitions)
            setting = (name, pitch, loudness, duration, repetitions)
            assert x.shape == (4 * SR,) and np.isfinite(x).all(), setting
            assert 0.02 < np.abs(x).max() <= 1.0, setting
            expected_count = {"once": 1, "twice": 2, "three times": 3}.get(repetitions)
            assert event["count"] == expected_count if expected_count else event["count"] >= 4, setting


@pytest.mark.parametrize("name", PITCHED)
def test_high_pitch_has_higher_dominant_frequency(name):
    for seed in range(6):
        for duration in ("short", "long"):
            low, _ = render_event(name, pitch="low", duration=duration, seed=seed)
            high, _ = render_event(name, pitch="high", duration=duration, seed=seed)
            assert dominant_hz(high) > 1.5 * dominant_hz(low), (name, seed, duration)


def test_loud_and_quiet_differ_clearly():
    for name, sound in SOUND_TYPES.items():
        pitch = "low" if sound.pitched else None
        for seed in range(3):
            loud, _ = render_event(name, pitch=pitch, loudness="loud", duration="long", seed=seed)
            quiet, _ = render_event(name, pitch=pitch, loudness="quiet", duration="long", seed=seed)
            assert rms_db(loud) - rms_db(quiet) > 14, (name, seed)


def test_long_events_sound_longer_than_short_ones():
    for name, sound in SOUND_TYPES.items():
        pitch = "high" if sound.pitched else None
        for seed in range(3):
            short, short_event = render_event(name, pitch=pitch, duration="short", seed=seed)
            long, long_event = render_event(name, pitch=pitch, duration="long", seed=seed)
            assert short_event["offset"] - short_event["onset"] <= 0.6 + 1e-6
            assert long_event["offset"] - long_event["onset"] >= 1.5 - 1e-6
            assert active_seconds(long) > 2 * active_seconds(short), (name, seed)


def test_captions_distinct_and_name_the_label(data):
    for split in ("train", "val", "test"):
        _, rows = read_csv(data / ("train_multilingual.csv" if split == "train" else f"{split}_de.csv"))
        by_clip: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            by_clip.setdefault((r["audio"], r["lang"]), []).append(r["caption"])
        assert all(len(set(c)) == 5 for c in by_clip.values())
    _, multilingual = read_csv(data / "train_multilingual.csv")
    assert {r["lang"] for r in multilingual} >= {"en", "de", "fr", "es"}
    _, english = read_csv(data / "train.csv")
    for audio in {r["audio"] for r in english}:
        captions = [r for r in english if r["audio"] == audio]
        assert any(first_position(r["caption"], r["label"]) is not None for r in captions), audio
        assert all(r["label"] in SOUND_TYPES for r in captions)


def test_captions_name_no_other_type():
    """English wording is unambiguous: a one-event clip's captions name no other type."""
    events = []
    for name, sound in SOUND_TYPES.items():
        for pitch, repetitions in product(("low", "high") if sound.pitched else (None,), REPETITIONS):
            event = {"type": name, "pitch": pitch, "loudness": "quiet", "duration": "long", "repetitions": repetitions}
            events.append(event)
    for k, event in enumerate(events):
        rngs = {"en": np.random.default_rng([k, 1])}
        captions, _ = caption_clip([event], [[0]], 0, np.random.default_rng(k), rngs, attribute_rate=0.7)
        for caption in captions["en"]:
            named = {t for t in SOUND_TYPES if first_position(caption, t) is not None}
            assert named == {event["type"]}, caption


def test_every_language_names_every_type_and_follows_its_spelling_rules(data):
    for lang, name in product(LANGUAGES, SOUND_TYPES):
        assert type_terms(lang, name), (lang, name)
    _, rows = read_csv(data / "train_multilingual.csv")
    for r in rows:
        caption = r["caption"]
        assert caption[0].isupper() and caption.endswith(".") and "  " not in caption, caption
        if r["lang"] == "fr":
            assert not re.search(r"\b(que|de) [aeiouéèê]", caption), caption
        if r["lang"] == "es":
            assert not re.search(r"\by i", caption), caption
        if r["lang"] == "en":
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou ]", caption), caption


def test_label_follows_the_main_event_rule(data):
    labels = {r["audio"]: r["label"] for r in read_csv(data / "train_multilingual.csv")[1]}
    for meta in read_meta(data):

        def rank(i, events=meta["events"]):
            e = events[i]
            return (e["loudness"] == "loud", sum(b - a for a, b in e["occurrences"]), -e["onset"])

        main = max(range(len(meta["events"])), key=rank)
        assert meta["main"] == main and meta["label"] == meta["events"][main]["type"]
        if meta["split"] == "train":
            assert labels[meta["audio"]] == meta["label"]


def test_heldout_never_in_train_and_all_in_test(data):
    heldout = json.loads((data / "heldout.json").read_text())
    type_pitch = {tuple(c) for c in heldout["type_pitch"]}
    pairs = {tuple(c) for c in heldout["ordered_pairs"]}
    assert type_pitch and pairs
    seen = {"train": set(), "test": set()}
    for meta in read_meta(data):
        if meta["split"] not in seen:
            continue
        events = meta["events"]
        found = {("type_pitch", e["type"], e["pitch"]) for e in events if (e["type"], e["pitch"]) in type_pitch}
        found |= {
            ("pair", a["type"], b["type"])
            for a in events
            for b in events
            if (a["type"], b["type"]) in pairs and a["offset"] <= b["onset"]
        }
        seen[meta["split"]] |= found
    assert not seen["train"]
    assert {c[1:] for c in seen["test"] if c[0] == "type_pitch"} == type_pitch
    assert {c[1:] for c in seen["test"] if c[0] == "pair"} == pairs


def test_caption_plans_agree_with_events(data):
    english = {}
    for r in read_csv(data / "train.csv")[1]:
        english.setdefault(r["audio"], []).append(r["caption"])
    for meta in read_meta(data):
        events = meta["events"]
        plans = meta["caption_plans"]
        assert len(plans) == 5 and sorted(i for g in plans[0]["groups"] for i in g) == list(range(len(events)))
        for k, plan in enumerate(plans):
            for index, attributes in plan["attributes"].items():
                event = events[int(index)]
                assert all(event[a] == v for a, v in attributes.items())
                if meta["split"] == "train" and attributes.get("repetitions") == "twice":
                    assert re.search(r"twice|two times", english[meta["audio"]][k])


def test_every_caption_plan_holds_for_its_clip(data):
    for meta in read_meta(data):
        assert all(plan_holds(plan, meta["events"], meta["events"]) for plan in meta["caption_plans"])
    assert 0 < retrieval_ceiling(data, "test") <= 1


def test_plan_holds_checks_types_attributes_and_order():
    bell = {"type": "bell", "pitch": "low", "loudness": "loud", "duration": "short", "repetitions": "once"}
    knock = {**bell, "type": "knock", "pitch": None}
    bell_first = [{**bell, "onset": 0.0, "offset": 0.5}, {**knock, "onset": 1.0, "offset": 1.5}]
    knock_first = [{**bell, "onset": 1.0, "offset": 1.5}, {**knock, "onset": 0.0, "offset": 0.5}]
    plan = {"groups": [[0], [1]], "ordered": True, "attributes": {"0": {"pitch": "low"}, "1": {}}}
    assert plan_holds(plan, bell_first, bell_first)
    assert not plan_holds(plan, bell_first, knock_first)
    assert plan_holds({**plan, "ordered": False}, bell_first, knock_first)
    high_bell = [{**bell_first[0], "pitch": "high"}, bell_first[1]]
    assert not plan_holds(plan, bell_first, high_bell)


def test_order_in_captions_follows_time(pairs_data):
    english = {}
    for r in read_csv(pairs_data / "train.csv")[1]:
        english.setdefault(r["audio"], []).append(r["caption"])
    checked = 0
    for meta in read_meta(pairs_data):
        first, second = meta["events"]
        assert first["offset"] <= second["onset"]
        for caption in english[meta["audio"]]:
            assert not OVERLAP_WORDS.search(caption), caption
            a, b = first_position(caption, first["type"]), first_position(caption, second["type"])
            if a is None or b is None or not ORDER_WORDS.search(caption):
                continue
            after = re.search(r"\bafter\b", caption)
            reversed_order = after is not None and after.start() > 0
            assert (a > b) == reversed_order, caption
            checked += 1
    assert checked >= 60


def test_twins_differ_from_their_base(data):
    metas = {(m["split"], m["index"]): m for m in read_meta(data)}
    twins = [m for m in metas.values() if m["twin_of"] is not None]
    assert twins
    for twin in twins:
        base = metas[(twin["split"], twin["twin_of"])]
        keys = ("type", "pitch", "loudness", "duration", "repetitions")
        describe = lambda m: [[e[k] for k in keys] for e in m["events"]]  # noqa: E731
        assert describe(twin) != describe(base) or twin["slots"] != base["slots"], twin["audio"]


def test_no_clipping(data):
    for path in sorted((data / "audio").rglob("*.wav")):
        audio, _ = sf.read(path, dtype="int16")
        assert np.abs(audio.astype(int)).max() < 32767, path


def test_knobs_are_checked(tmp_path):
    with pytest.raises(TypeError):
        generate(tmp_path, n_train=1, n_val=0, n_test=0, no_such_knob=1)
    with pytest.raises(ValueError):
        generate(tmp_path, n_train=1, n_val=0, n_test=0, max_events=4)
    with pytest.raises(ValueError):
        generate(tmp_path, n_train=1, n_val=0, n_test=0, sound_types=("bell", "kazoo"))
