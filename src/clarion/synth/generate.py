"""Procedural sound scenes with multilingual captions: a dataset that needs no download.

:func:`generate` writes train/val/test splits of short mono clips (default 4 s at 16 kHz).
A clip holds 1-3 events of the synthesised types in :data:`SOUND_TYPES`, each with a pitch
(pitched types), a loudness, a duration and a repetition count, placed one after the other
or as an overlapping pair, over a faint noise floor. Every clip gets 5 distinct captions per
language in :data:`LANGUAGES`, all true of the clip, and a label (its main event's type).
Some (type, pitch) combinations and ordered type pairs never occur in train but are forced
into test. The output is deterministic from ``seed``, whatever the number of workers.
See docs/synthetic.md for the full description.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from itertools import permutations
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf

from .captions import LANGUAGES, caption_clip
from .plan import (
    CAPTION_STREAM, CAPTIONS_PER_CLIP, COLUMNS, MAX_PEAK, RENDER_STREAM, REPETITIONS, SINGLE_EVENT_STREAM, SPLITS, VERSION,
    Context, Event, Heldout, Knobs, Placed, Scene, Spec, clip_rng, main_event, place_events, plan_scene, select_heldout,
)
from .sounds import SOUND_TYPES, pink_noise, render_sound

__all__ = [
    "LANGUAGES",
    "SOUND_TYPES",
    "Knobs",
    "generate",
    "plan_holds",
    "render_event",
    "retrieval_ceiling",
    "select_heldout",
]



# ---------------------------------------------------------------------------- rendering
def _render(
    scene: Scene, sample_rate: int, clip_seconds: float, rng: np.random.Generator, noise: bool = True
) -> np.ndarray:
    """The clip's waveform: every occurrence of every event at its level, plus the pink
    noise floor, scaled down only if its peak would exceed 0.99."""
    n = round(clip_seconds * sample_rate)
    audio = np.zeros(n)
    for p in scene.placed:
        wave = render_sound(p.event.type, p.seconds, sample_rate, rng, p.f0) * 10 ** (p.level_db / 20)
        for onset in p.onsets:
            start = round(onset * sample_rate)
            stop = min(n, start + len(wave))
            audio[start:stop] += wave[: stop - start]
    if noise:
        floor = pink_noise(rng, n, sample_rate)
        audio += floor * 10 ** (scene.noise_floor_db / 20) / np.sqrt(np.mean(floor**2))
    peak = np.abs(audio).max()
    return audio * (MAX_PEAK / peak) if peak > MAX_PEAK else audio


def _event_json(p: Placed) -> dict:
    return {
        **asdict(p.event),
        "count": len(p.onsets),
        "onset": round(p.onsets[0], 4),
        "offset": round(p.onsets[-1] + p.seconds, 4),
        "occurrences": [[round(o, 4), round(o + p.seconds, 4)] for o in p.onsets],
        "f0": None if p.f0 is None else round(p.f0, 2),
        "level_db": round(p.level_db, 2),
    }


def _make_clip(task: tuple[Context, str, int]) -> tuple[dict[str, list[str]], dict]:
    """Writes the WAV of one clip; returns its captions per language and its metadata."""
    ctx, split, index = task
    scene = plan_scene(ctx, split, index)
    audio_path = f"audio/{split}/{split}_{index:05d}.wav"
    audio = _render(scene, ctx.sample_rate, ctx.clip_seconds, clip_rng(ctx.seed, split, index, RENDER_STREAM))
    sf.write(Path(ctx.out_dir) / audio_path, audio, ctx.sample_rate, subtype="PCM_16")
    main = main_event(scene.placed)
    events = [asdict(e) for e in scene.spec.events]
    knobs = ctx.knobs
    captions, plans = caption_clip(
        events,
        scene.spec.slots,
        main,
        clip_rng(ctx.seed, split, index, CAPTION_STREAM),
        {lang: clip_rng(ctx.seed, split, index, CAPTION_STREAM, i + 1) for i, lang in enumerate(LANGUAGES)},
        n_captions=CAPTIONS_PER_CLIP,
        attribute_rate=knobs.caption_attribute_rate,
        event_dropout=knobs.caption_event_dropout,
        relation_rate=knobs.caption_relation_rate,
    )
    meta = {
        "audio": audio_path,
        "split": split,
        "index": index,
        "label": scene.spec.events[main].type,
        "main": main,
        "events": [_event_json(p) for p in scene.placed],
        "slots": [list(slot) for slot in scene.spec.slots],
        "noise_floor_db": round(scene.noise_floor_db, 2),
        "twin_of": scene.twin_of,
        "twin_change": scene.change,
        "forced_heldout": list(scene.forced) if scene.forced else None,
        "heldout": [list(c) for c in ctx.heldout.found_in(scene.spec)],
        "caption_plans": [plan.to_json() for plan in plans],
    }
    return captions, meta


def render_event(
    name: str,
    *,
    pitch: str | None = None,
    loudness: str = "loud",
    duration: str = "short",
    repetitions: str = "once",
    seed: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
    **knobs,
) -> tuple[np.ndarray, dict]:
    """A clip holding a single event with the given attributes and no noise floor, rendered
    exactly as :func:`generate` renders events; returns the waveform and the event's
    metadata (as in meta.jsonl)."""
    event = Event(name, pitch, loudness, duration, repetitions)
    if (pitch is not None) != SOUND_TYPES[name].pitched:
        raise ValueError(f"{name}: pitch must be {'low or high' if SOUND_TYPES[name].pitched else 'None'}")
    if loudness not in ("loud", "quiet") or duration not in ("short", "long") or repetitions not in REPETITIONS:
        raise ValueError(f"unknown attribute value in {event}")
    if duration == "long" and repetitions != "once":
        raise ValueError("repeated events are short: duration='long' needs repetitions='once'")
    settings = Knobs(**knobs)
    rng = np.random.default_rng([seed, SINGLE_EVENT_STREAM])
    placed = place_events(Spec((event,), ((0,),)), rng, settings, clip_seconds)
    if placed is None:
        raise ValueError(f"{event} does not fit in {clip_seconds} s")
    scene = Scene(Spec((event,), ((0,),)), placed, settings.noise_floor_db[0])
    return _render(scene, sample_rate, clip_seconds, rng, noise=False), _event_json(placed[0])


# ---------------------------------------------------------------------------- output
def _write_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def _rows(metas: list[dict], captions: list[dict[str, list[str]]], langs: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [
        (meta["audio"], text, meta["label"], lang)
        for meta, caps in zip(metas, captions)
        for lang in langs
        for text in caps[lang]
    ]


def _write_split(out: Path, split: str, results: list[tuple[dict, dict]]) -> None:
    captions = [c for c, _ in results]
    metas = [m for _, m in results]
    _write_csv(out / f"{split}.csv", _rows(metas, captions, ("en",)))
    if split == "train":
        _write_csv(out / "train_multilingual.csv", _rows(metas, captions, LANGUAGES))
    else:
        for lang in LANGUAGES:
            _write_csv(out / f"{split}_{lang}.csv", _rows(metas, captions, (lang,)))


def generate(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_val: int = 300,
    n_test: int = 300,
    seed: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
    workers: int | None = None,
    **knobs,
) -> dict:
    """Write the synthetic dataset to ``out_dir`` and return its summary (also written to
    ``synth.json``). ``knobs`` are fields of :class:`Knobs`. Layout: ``audio/{split}/
    {split}_{index:05d}.wav`` (16-bit PCM), ``{split}.csv`` (English), ``train_multilingual.csv``,
    ``{val,test}_{lang}.csv``, ``meta.jsonl``, ``heldout.json``, ``synth.json``. The files
    depend only on the arguments other than ``workers`` (default min(2, cpu count))."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    settings = Knobs(**knobs)
    heldout = select_heldout(seed, settings)
    out = Path(out_dir)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    ctx = Context(str(out), seed, sample_rate, clip_seconds, settings, heldout)
    tasks = [(ctx, split, i) for split in SPLITS for i in range(sizes[split])]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers == 1:
        results = list(map(_make_clip, tasks))
    else:
        with Pool(workers) as pool:
            results = pool.map(_make_clip, tasks, chunksize=max(1, min(32, len(tasks) // (4 * workers))))
    by_split = {split: [r for r, (_, s, _) in zip(results, tasks) if s == split] for split in SPLITS}
    for split in SPLITS:
        _write_split(out, split, by_split[split])
    with open(out / "meta.jsonl", "w", encoding="utf-8") as fh:
        for _, meta in results:
            fh.write(json.dumps(meta, ensure_ascii=False) + "\n")
    summary = _summary(ctx, sizes, heldout)
    (out / "heldout.json").write_text(json.dumps(summary["heldout"], indent=2) + "\n", encoding="utf-8")
    (out / "synth.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def plan_holds(plan: dict, described: list[dict], events: list[dict]) -> bool:
    """Whether a caption plan (as in meta.jsonl) written for the clip with events
    ``described`` is true of a clip with ``events``: its mentioned events map to distinct
    events of the same type and the named attribute values, and, if the plan states the
    order, each pair overlaps and each group ends before the next begins."""
    mentioned = [i for group in plan["groups"] for i in group]
    named = {int(i): attrs for i, attrs in plan["attributes"].items()}
    for chosen in permutations(range(len(events)), len(mentioned)):
        match = dict(zip(mentioned, (events[j] for j in chosen)))
        if all(
            match[i]["type"] == described[i]["type"] and all(match[i][a] == v for a, v in named[i].items())
            for i in mentioned
        ) and (not plan["ordered"] or _timing_holds(plan["groups"], match)):
            return True
    return False


def _timing_holds(groups: list[list[int]], match: dict[int, dict]) -> bool:
    for g, group in enumerate(groups):
        if len(group) == 2:
            a, b = (match[i] for i in group)
            if not (a["onset"] < b["offset"] and b["onset"] < a["offset"]):
                return False
        for later in groups[g + 1 :]:
            if any(match[i]["offset"] > match[j]["onset"] for i in group for j in later):
                return False
    return True


def retrieval_ceiling(out_dir: str | os.PathLike, split: str = "test") -> float:
    """Text-to-audio R@1 on ``split`` of an oracle that knows exactly what each caption
    says and ranks the clips it is true of (:func:`plan_holds`) in random order: the
    expected 1/(number of such clips), averaged over captions. No model can beat it in
    expectation; the caption and scene knobs move it."""
    with open(Path(out_dir) / "meta.jsonl", encoding="utf-8") as fh:
        metas = [m for m in map(json.loads, fh) if m["split"] == split]
    scores = [
        1 / sum(plan_holds(plan, query["events"], clip["events"]) for clip in metas)
        for query in metas
        for plan in query["caption_plans"]
    ]
    return float(np.mean(scores))


def _summary(ctx: Context, sizes: dict[str, int], heldout: Heldout) -> dict:
    return {
        "generator": "clarion.synth",
        "version": VERSION,
        "seed": ctx.seed,
        "sample_rate": ctx.sample_rate,
        "clip_seconds": ctx.clip_seconds,
        "clips": sizes,
        "captions_per_clip": CAPTIONS_PER_CLIP,
        "languages": list(LANGUAGES),
        "sound_types": {
            name: {"pitched": sound.pitched, "description": sound.description}
            for name, sound in SOUND_TYPES.items()
            if name in ctx.knobs.types()
        },
        "knobs": asdict(ctx.knobs),
        "heldout": {
            **heldout.to_json(),
            "test_stride": ctx.knobs.heldout_test_stride,
            "rule": (
                "no train clip has an event of a held-out (type, pitch), nor an event of type a that "
                "ends before an event of type b starts for a held-out ordered pair (a, b); every "
                "test clip whose index is a multiple of test_stride is forced to contain one of them "
                "(cycling through type_pitch then ordered_pairs); val is sampled without restriction"
            ),
        },
    }
