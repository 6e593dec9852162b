"""What a synthetic clip will hold, before any sound is made: the knobs, held-out combinations,
scene specs (events, their attributes and order) and their layout in time (:mod:`.generate`
renders and writes them; docs/synthetic.md describes the benchmark)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from .sounds import PITCHES, SOUND_TYPES, fundamental

VERSION = "1.0"
SPLITS = ("train", "val", "test")
REPETITIONS = ("once", "twice", "three times", "repeatedly")
CAPTIONS_PER_CLIP = 5
COLUMNS = ("audio", "caption", "label", "lang")

SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}
SCENE_STREAM, RENDER_STREAM, CAPTION_STREAM = 0, 1, 2
_HELDOUT_STREAM, SINGLE_EVENT_STREAM = 7, 8  # seeded as [seed, stream]: disjoint from clip seeds
_TRIES = 1000
_MARGIN_S = 0.05  # silence kept at both ends of a clip
_SLOT_GAP_S = (0.1, 0.6)  # pause between consecutive (non-overlapping) events
_REPEAT_GAP_S = (0.1, 0.35)  # pause between repetitions of "twice" / "three times"
_RAPID_GAP_S = (0.08, 0.2)  # pause between repetitions of "repeatedly"
_RAPID_COUNT = (4, 6)  # occurrences of "repeatedly"
_OVERLAP_START = (0.1, 0.5)  # foreground onset, as a fraction into the background event
MAX_PEAK = 0.99


@dataclass(frozen=True)
class Knobs:
    """Difficulty settings of the generator, each with its default.

    Scene content: ``min_events``/``max_events`` events per clip (uniform, at most 3);
    ``overlap_rate``: probability that a multi-event clip has an overlapping pair;
    ``twin_rate``: probability that an odd-indexed clip is a "twin" of the clip before it
    (same events with exactly one attribute, the order or one type changed), the source of
    hard negatives; ``sound_types``: restrict to these type names (None: all).
    Rendering: ``loud_db``/``quiet_db`` peak level of loud/quiet events (dBFS) with a
    uniform ``level_jitter_db`` either side; ``short_seconds``/``long_seconds``: ranges of
    one occurrence; ``long_rate``: probability that a single-occurrence event is long;
    ``repetition_weights``: probabilities of once/twice/three times/repeatedly;
    ``noise_floor_db``: range of the background noise RMS (dBFS).
    Captions: ``caption_attribute_rate``: probability a caption names each attribute of an
    event; ``caption_event_dropout``: probability a caption leaves out each non-main event
    (caption 0 never does); ``caption_relation_rate``: probability a multi-event caption
    states the order/overlap rather than "A and B" (caption 0 always does).
    Held out: ``heldout_type_pitch`` (type, pitch) combinations and ``heldout_pairs``
    ordered type pairs never occur in train; every ``heldout_test_stride``-th test clip is
    forced to contain one of them.
    """

    min_events: int = 1
    max_events: int = 3
    overlap_rate: float = 0.3
    twin_rate: float = 0.5
    sound_types: tuple[str, ...] | None = None
    loud_db: float = -6.0
    quiet_db: float = -26.0
    level_jitter_db: float = 2.0
    short_seconds: tuple[float, float] = (0.2, 0.6)
    long_seconds: tuple[float, float] = (1.5, 3.0)
    long_rate: float = 0.5
    repetition_weights: tuple[float, float, float, float] = (0.55, 0.15, 0.15, 0.15)
    noise_floor_db: tuple[float, float] = (-60.0, -40.0)
    caption_attribute_rate: float = 0.5
    caption_event_dropout: float = 0.25
    caption_relation_rate: float = 0.8
    heldout_type_pitch: int = 3
    heldout_pairs: int = 3
    heldout_test_stride: int = 4

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self._check()

    def _check(self) -> None:
        if not 1 <= self.min_events <= self.max_events <= 3:
            raise ValueError("need 1 <= min_events <= max_events <= 3")
        rates = [f.name for f in fields(self) if f.name.endswith(("_rate", "_dropout"))]
        for name in rates:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        for name in ("short_seconds", "long_seconds", "noise_floor_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high)")
        if len(self.repetition_weights) != 4 or min(self.repetition_weights) < 0 or sum(self.repetition_weights) <= 0:
            raise ValueError("repetition_weights: 4 non-negative weights for once/twice/three times/repeatedly")
        unknown = set(self.types()) - set(SOUND_TYPES)
        if unknown:
            raise ValueError(f"unknown sound types {sorted(unknown)}; known: {sorted(SOUND_TYPES)}")
        if len(self.types()) < max(2, self.max_events):
            raise ValueError("need at least max(2, max_events) sound types")
        pitched = sum(SOUND_TYPES[t].pitched for t in self.types())
        pairs = len(self.types()) * (len(self.types()) - 1) // 2
        if not 0 <= self.heldout_type_pitch <= pitched or not 0 <= self.heldout_pairs <= pairs:
            raise ValueError(f"at most {pitched} held-out (type, pitch) and {pairs} held-out pairs")
        if self.heldout_test_stride < 1:
            raise ValueError("heldout_test_stride must be >= 1")

    def types(self) -> tuple[str, ...]:
        return tuple(self.sound_types) if self.sound_types else tuple(SOUND_TYPES)


@dataclass(frozen=True)
class Event:
    """The categorical description of one event."""

    type: str
    pitch: str | None
    loudness: str
    duration: str
    repetitions: str


@dataclass(frozen=True)
class Spec:
    """Events in time order and their slots: consecutive groups of event indices, one per
    event or two for an overlapping pair (background first, it is single and long)."""

    events: tuple[Event, ...]
    slots: tuple[tuple[int, ...], ...]

    def before(self) -> list[tuple[int, int]]:
        """Index pairs (i, j) such that event i ends before event j starts."""
        return [
            (i, j) for s, slot in enumerate(self.slots) for later in self.slots[s + 1 :] for i in slot for j in later
        ]


@dataclass(frozen=True)
class Placed:
    """An event placed in time: occurrence onsets and length (s), fundamental, peak level."""

    event: Event
    onsets: tuple[float, ...]
    seconds: float
    f0: float | None
    level_db: float


@dataclass(frozen=True)
class Scene:
    spec: Spec
    placed: tuple[Placed, ...]
    noise_floor_db: float
    twin_of: int | None = None
    change: str | None = None
    forced: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Heldout:
    """Combinations that never occur in train clips."""

    type_pitch: tuple[tuple[str, str], ...]
    pairs: tuple[tuple[str, str], ...]

    def combos(self) -> list[tuple[str, str, str]]:
        return [("type_pitch", *c) for c in self.type_pitch] + [("pair", *c) for c in self.pairs]

    def found_in(self, spec: Spec) -> list[tuple[str, str, str]]:
        """The held-out combinations that ``spec`` contains."""
        present = {("type_pitch", e.type, e.pitch) for e in spec.events if e.pitch}
        present |= {("pair", spec.events[i].type, spec.events[j].type) for i, j in spec.before()}
        return [c for c in self.combos() if c in present]

    def to_json(self) -> dict:
        return {"type_pitch": [list(c) for c in self.type_pitch], "ordered_pairs": [list(c) for c in self.pairs]}


@dataclass(frozen=True)
class Context:
    """Everything a worker needs to make any clip."""

    out_dir: str
    seed: int
    sample_rate: int
    clip_seconds: float
    knobs: Knobs
    heldout: Heldout


def clip_rng(seed: int, split: str, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index, *stream])


# ---------------------------------------------------------------------------- held out
def select_heldout(seed: int, knobs: Knobs) -> Heldout:
    """The held-out combinations for ``seed``: ``knobs.heldout_type_pitch`` pitched types
    each with one pitch, and ``knobs.heldout_pairs`` ordered pairs (a, b) of distinct types,
    never both (a, b) and (b, a), so train always has the reverse order of a held-out pair."""
    rng = np.random.default_rng([seed, _HELDOUT_STREAM])
    types = knobs.types()
    pitched = [t for t in types if SOUND_TYPES[t].pitched]
    chosen = rng.permutation(len(pitched))[: knobs.heldout_type_pitch]
    type_pitch = tuple((pitched[i], PITCHES[rng.integers(2)]) for i in sorted(chosen))
    unordered = [(a, b) for i, a in enumerate(types) for b in types[i + 1 :]]
    picked = rng.permutation(len(unordered))[: knobs.heldout_pairs]
    pairs = tuple(unordered[i][:: 1 if rng.random() < 0.5 else -1] for i in sorted(picked))
    return Heldout(type_pitch, pairs)


def _forced(ctx: Context, split: str, index: int) -> tuple[str, str, str] | None:
    combos = ctx.heldout.combos()
    if split != "test" or not combos or index % ctx.knobs.heldout_test_stride:
        return None
    return combos[(index // ctx.knobs.heldout_test_stride) % len(combos)]


# ---------------------------------------------------------------------------- scene specs
def _random_event(rng: np.random.Generator, name: str, knobs: Knobs, background: bool) -> Event:
    """An event of type ``name``; an overlap background occurs once and is long."""
    pitch = PITCHES[rng.integers(2)] if SOUND_TYPES[name].pitched else None
    loudness = "loud" if rng.random() < 0.5 else "quiet"
    if background:
        return Event(name, pitch, loudness, "long", "once")
    weights = np.asarray(knobs.repetition_weights, dtype=float)
    repetitions = REPETITIONS[rng.choice(4, p=weights / weights.sum())]
    long = repetitions == "once" and rng.random() < knobs.long_rate
    return Event(name, pitch, loudness, "long" if long else "short", repetitions)


def _random_slots(rng: np.random.Generator, n: int, overlap_rate: float) -> tuple[tuple[int, ...], ...]:
    """Slot structure for ``n`` events numbered in time order, maybe with one overlapping pair."""
    if n == 1 or rng.random() >= overlap_rate:
        return tuple((i,) for i in range(n))
    start = rng.integers(n - 1)
    return tuple((i, i + 1) if i == start else (i,) for i in range(n) if i != start + 1)


def _random_spec(rng: np.random.Generator, knobs: Knobs) -> Spec:
    types = knobs.types()
    n = int(rng.integers(knobs.min_events, knobs.max_events + 1))
    names = [types[i] for i in rng.permutation(len(types))[:n]]
    slots = _random_slots(rng, n, knobs.overlap_rate)
    backgrounds = {slot[0] for slot in slots if len(slot) == 2}
    for i in backgrounds:
        if SOUND_TYPES[names[i]].decays and not SOUND_TYPES[names[i + 1]].decays:
            names[i], names[i + 1] = names[i + 1], names[i]  # a sustained sound makes the background
    return Spec(tuple(_random_event(rng, name, knobs, i in backgrounds) for i, name in enumerate(names)), slots)


def _retype(event: Event, name: str, rng: np.random.Generator) -> Event:
    """``event`` with type ``name``; the pitch is kept if both types are pitched."""
    pitch = None
    if SOUND_TYPES[name].pitched:
        pitch = event.pitch or PITCHES[rng.integers(2)]
    return replace(event, type=name, pitch=pitch)


def _reorder(spec: Spec, order: list[int]) -> Spec:
    """``spec`` with its slots played in ``order``, events renumbered in time order."""
    events, slots = [], []
    for s in order:
        slots.append(tuple(range(len(events), len(events) + len(spec.slots[s]))))
        events += [spec.events[i] for i in spec.slots[s]]
    return Spec(tuple(events), tuple(slots))


def _perturb(spec: Spec, rng: np.random.Generator, knobs: Knobs) -> tuple[Spec, str]:
    """``spec`` with one change: the order of two adjacent slots, or one event's pitch,
    loudness, repetitions, duration or type."""
    backgrounds = {slot[0] for slot in spec.slots if len(slot) == 2}
    free = [i for i in range(len(spec.events)) if i not in backgrounds]
    unused = [t for t in knobs.types() if t not in {e.type for e in spec.events}]
    candidates = {
        "order": [0] if len(spec.slots) > 1 else [],
        "pitch": [i for i, e in enumerate(spec.events) if e.pitch],
        "loudness": list(range(len(spec.events))),
        "repetitions": free,
        "duration": [i for i in free if spec.events[i].repetitions == "once"],
        "type": list(range(len(spec.events))) if unused else [],
    }
    changes = [c for c, targets in candidates.items() if targets]
    change = changes[rng.integers(len(changes))]
    if change == "order":
        order = list(range(len(spec.slots)))
        s = int(rng.integers(len(order) - 1))
        order[s], order[s + 1] = order[s + 1], order[s]
        return _reorder(spec, order), change
    i = candidates[change][rng.integers(len(candidates[change]))]
    event = spec.events[i]
    if change == "pitch":
        event = replace(event, pitch="low" if event.pitch == "high" else "high")
    elif change == "loudness":
        event = replace(event, loudness="loud" if event.loudness == "quiet" else "quiet")
    elif change == "repetitions":
        repetitions = [r for r in REPETITIONS if r != event.repetitions][rng.integers(3)]
        event = replace(event, repetitions=repetitions, duration="short")
    elif change == "duration":
        event = replace(event, duration="long" if event.duration == "short" else "short")
    else:
        event = _retype(event, unused[rng.integers(len(unused))], rng)
    return Spec(spec.events[:i] + (event,) + spec.events[i + 1 :], spec.slots), change


def _force(spec: Spec, combo: tuple[str, str, str], rng: np.random.Generator) -> Spec | None:
    """``spec`` changed to contain the held-out ``combo``, or None if it cannot."""
    kind, a, b = combo
    events = list(spec.events)
    if kind == "type_pitch":
        same = [i for i, e in enumerate(events) if e.type == a]
        i = same[0] if same else int(rng.integers(len(events)))
        events[i] = replace(_retype(events[i], a, rng), pitch=b)
        return Spec(tuple(events), spec.slots)
    if len(spec.slots) < 2:
        return None
    first, second = sorted(rng.permutation(len(spec.slots))[:2])
    i = spec.slots[first][rng.integers(len(spec.slots[first]))]
    j = spec.slots[second][rng.integers(len(spec.slots[second]))]
    if any(e.type in (a, b) for k, e in enumerate(events) if k not in (i, j)):
        return None
    events[i], events[j] = _retype(events[i], a, rng), _retype(events[j], b, rng)
    return Spec(tuple(events), spec.slots)


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class _Timing:
    """Occurrence count, and (shortest, drawn) occurrence length and gap of one event;
    ``t`` in [0, 1] moves from the shortest to the drawn values."""

    count: int
    seconds: tuple[float, float]
    gap: tuple[float, float]

    def at(self, t: float) -> tuple[float, float]:
        return _lerp(self.seconds, t), _lerp(self.gap, t)

    def span(self, t: float) -> float:
        seconds, gap = self.at(t)
        return self.count * seconds + (self.count - 1) * gap


def _lerp(bounds: tuple[float, float], t: float) -> float:
    return bounds[0] + t * (bounds[1] - bounds[0])


def _draw(bounds: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
    return bounds[0], float(rng.uniform(*bounds))


def _timing(event: Event, rng: np.random.Generator, knobs: Knobs) -> _Timing:
    short = knobs.short_seconds
    if event.repetitions == "repeatedly":
        rapid = (short[0], (short[0] + short[1]) / 2)
        count = int(rng.integers(_RAPID_COUNT[0], _RAPID_COUNT[1] + 1))
        return _Timing(count, _draw(rapid, rng), _draw(_RAPID_GAP_S, rng))
    count = REPETITIONS.index(event.repetitions) + 1
    bounds = knobs.long_seconds if event.duration == "long" else short
    return _Timing(count, _draw(bounds, rng), _draw(_REPEAT_GAP_S, rng))


def place_events(spec: Spec, rng: np.random.Generator, knobs: Knobs, clip_seconds: float) -> tuple[Placed, ...] | None:
    """Onsets, fundamentals and levels of the events of ``spec``, or None if they cannot fit.

    Lengths and gaps are drawn, then shrunk towards their lower bounds just enough for
    everything to fit between the margins; the remaining slack is spread randomly before,
    between and after the slots.
    """
    timings = [_timing(e, rng, knobs) for e in spec.events]
    slot_gaps = [_draw(_SLOT_GAP_S, rng) for _ in spec.slots[1:]]
    starts = rng.uniform(*_OVERLAP_START, len(spec.events))

    def slot_span(slot: tuple[int, ...], t: float) -> float:
        if len(slot) == 1:
            return timings[slot[0]].span(t)
        background, foreground = slot
        offset = starts[foreground] * timings[background].at(t)[0]
        return max(timings[background].span(t), offset + timings[foreground].span(t))

    def total(t: float) -> float:
        return sum(slot_span(s, t) for s in spec.slots) + sum(_lerp(g, t) for g in slot_gaps)

    room = clip_seconds - 2 * _MARGIN_S
    if total(0.0) > room:
        return None
    t = 1.0 if total(1.0) <= room else _bisect(lambda x: total(x) <= room)
    slack = (room - total(t)) * rng.dirichlet(np.ones(len(spec.slots) + 1))
    onsets: dict[int, float] = {}
    cursor = _MARGIN_S + slack[0]
    for s, slot in enumerate(spec.slots):
        onsets[slot[0]] = cursor
        if len(slot) == 2:
            onsets[slot[1]] = cursor + starts[slot[1]] * timings[slot[0]].at(t)[0]
        cursor += slot_span(slot, t) + slack[s + 1] + (_lerp(slot_gaps[s], t) if s < len(slot_gaps) else 0.0)
    return tuple(_placed(e, timings[i], onsets[i], t, rng, knobs) for i, e in enumerate(spec.events))


def _bisect(fits, steps: int = 30) -> float:
    """The largest t in [0, 1] (to 2**-steps) with fits(t), given fits(0) and not fits(1)."""
    low, high = 0.0, 1.0
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _placed(event: Event, timing: _Timing, onset: float, t: float, rng: np.random.Generator, knobs: Knobs) -> Placed:
    seconds, gap = timing.at(t)
    level = knobs.loud_db if event.loudness == "loud" else knobs.quiet_db
    return Placed(
        event,
        tuple(onset + k * (seconds + gap) for k in range(timing.count)),
        seconds,
        fundamental(event.type, event.pitch, rng),
        level + float(rng.uniform(-knobs.level_jitter_db, knobs.level_jitter_db)),
    )


# ---------------------------------------------------------------------------- scenes
def plan_scene(ctx: Context, split: str, index: int) -> Scene:
    """The scene of clip ``index`` of ``split``: random, a twin of clip ``index - 1``, or
    forced to hold a held-out combination (test); train scenes never hold one."""
    knobs = ctx.knobs
    rng = clip_rng(ctx.seed, split, index, SCENE_STREAM)
    forced = _forced(ctx, split, index)
    twin = forced is None and index % 2 == 1 and rng.random() < knobs.twin_rate
    base = plan_scene(ctx, split, index - 1).spec if twin else None
    for _ in range(_TRIES):
        spec, change = _perturb(base, rng, knobs) if base else (_random_spec(rng, knobs), None)
        if forced:
            spec = _force(spec, forced, rng)
        if spec is None or (split == "train" and ctx.heldout.found_in(spec)):
            continue
        placed = place_events(spec, rng, knobs, ctx.clip_seconds)
        if placed is not None:
            noise = float(rng.uniform(*knobs.noise_floor_db))
            return Scene(spec, placed, noise, index - 1 if twin else None, change, forced)
    raise RuntimeError(f"no valid scene for {split} clip {index} in {_TRIES} tries; relax the knobs")


def main_event(placed: tuple[Placed, ...]) -> int:
    """The label rule: the loudest event (loud before quiet), then the one sounding
    longest in total, then the earliest."""
    def rank(p: Placed) -> tuple[bool, float, float]:
        return p.event.loudness == "loud", len(p.onsets) * p.seconds, -p.onsets[0]

    return max(range(len(placed)), key=lambda i: rank(placed[i]))
