"""Sound renderers for the synthetic scenes of :mod:`clarion.synth.generate`.

Each sound type renders one occurrence of an event: a float64 waveform of a requested
length, peak-normalised to 1 and faded in and out so that it starts and stops without a
click. Pitched types take a fundamental drawn from a "low" or a "high" range; the two
ranges of a type are far enough apart that every "high" rendering has a higher dominant
frequency than every "low" one. Everything is vectorised numpy; the only randomness is the
generator passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Renderer = Callable[[np.random.Generator, int, int, "float | None"], np.ndarray]
PITCHES = ("low", "high")


@dataclass(frozen=True)
class SoundType:
    """A synthesised sound type: its class label ``name``, how it is made, its pitch ranges.

    ``pitch_hz`` maps "low" and "high" to the (min, max) fundamental in Hz, and is empty for
    unpitched types. ``attack_s`` is the fade-in of an occurrence (short for percussive
    sounds). ``decays``: the sound dies away over its length instead of sustaining.
    """

    name: str
    description: str
    render: Renderer
    pitch_hz: dict[str, tuple[float, float]]
    attack_s: float = 0.015
    decays: bool = False

    @property
    def pitched(self) -> bool:
        return bool(self.pitch_hz)


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _phase(freq: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Phase of an oscillator following the instantaneous frequency ``freq`` (Hz)."""
    return 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)


def _harmonics(phase: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of ``amps[k-1] * sin(k * phase)`` for k = 1..len(amps)."""
    ks = np.arange(1, len(amps) + 1)[:, None]
    return amps @ np.sin(ks * phase[None, :])


def _filter(x: np.ndarray, sr: int, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Zero-phase band-pass in the frequency domain with 4th-order Butterworth-like skirts."""
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    gain = np.ones_like(freqs)
    if low is not None:
        gain /= np.sqrt(1 + (low / np.maximum(freqs, 1e-3)) ** 8)
    if high is not None:
        gain /= np.sqrt(1 + (freqs / high) ** 8)
    return np.fft.irfft(np.fft.rfft(x) * gain, n=len(x))


def pink_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """``n`` samples of noise whose power falls as 1/f above 20 Hz (unnormalised)."""
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(freqs, 20.0))
    return np.fft.irfft(spectrum, n=n)


def _max_harmonics(f0: float, sr: int, limit: int) -> int:
    return max(1, min(limit, int(0.45 * sr / f0)))


def _tone(rng, n, sr, f0):
    return np.sin(_phase(np.full(n, f0), sr, rng))


def _sweep(rng, n, sr, f0, rising: bool):
    ratio = rng.uniform(1.8, 2.5)
    position = _time(n, sr) / (n / sr)
    exponent = position if rising else 1 - position
    return np.sin(_phase(f0 * ratio**exponent, sr, rng))


def _rising_chirp(rng, n, sr, f0):
    return _sweep(rng, n, sr, f0, rising=True)


def _falling_chirp(rng, n, sr, f0):
    return _sweep(rng, n, sr, f0, rising=False)


def _siren(rng, n, sr, f0):
    t = _time(n, sr)
    if rng.random() < 0.5:
        half_period = rng.uniform(0.3, 0.6)
        freq = f0 * (1 + 0.33 * (np.floor(t / half_period) % 2))
    else:
        rate = rng.uniform(0.5, 1.5)
        freq = f0 * (1 + 0.25 * (1 - np.cos(2 * np.pi * rate * t)))
    return _harmonics(_phase(freq, sr, rng), np.array([1.0, 0.35, 0.2]))


def _white_noise(rng, n, sr, f0):
    return rng.standard_normal(n)


def _pink_noise(rng, n, sr, f0):
    return pink_noise(rng, n, sr)


def _impulses(rng, n: int, sr: int, times: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """An impulse train at ``times`` (s) with ``amps``, convolved with ``kernel``."""
    train = np.zeros(n + len(kernel))
    np.add.at(train, np.clip((times * sr).astype(int), 0, n - 1), amps)
    return np.convolve(train, kernel)[:n]


def _rain(rng, n, sr, f0):
    seconds = n / sr
    drops = rng.poisson(rng.uniform(60, 200) * seconds) + 1
    times = rng.uniform(0, seconds, drops)
    amps = rng.exponential(1.0, drops) * rng.choice([-1, 1], drops)
    kernel = rng.standard_normal(64) * np.exp(-np.arange(64) / 10)
    crackle = _filter(_impulses(rng, n, sr, times, amps, kernel), sr, low=800, high=6500)
    bed = _filter(rng.standard_normal(n), sr, low=1500) * 0.02
    return crackle / (np.abs(crackle).max() + 1e-9) + bed


def _clicks(rng, n, sr, f0):
    seconds = n / sr
    period = 1 / rng.uniform(6, 18)
    times = np.arange(rng.uniform(0, period / 2), seconds, period)
    times = times + rng.normal(0, 0.03 * period, len(times))
    click_hz = rng.uniform(2500, 4500)
    k = np.arange(int(0.003 * sr))
    kernel = np.sin(2 * np.pi * click_hz * k / sr) * np.exp(-k / (0.0006 * sr))
    return _impulses(rng, n, sr, times, np.ones(len(times)), kernel)


def _buzz(rng, n, sr, f0):
    count = _max_harmonics(f0, sr, 40)
    ks = np.arange(1, count + 1)
    amps = 1 / ks if rng.random() < 0.5 else np.where(ks % 2 == 1, 1 / ks, 0.0)
    return _harmonics(_phase(np.full(n, f0), sr, rng), amps)


def _tremolo(rng, n, sr, f0):
    t = _time(n, sr)
    depth = rng.uniform(0.6, 0.95)
    gain = 1 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 9) * t))
    return gain * _harmonics(_phase(np.full(n, f0), sr, rng), np.array([1.0, 0.2]))


_BELL_RATIOS = np.array([1.0, 2.0, 2.76, 5.40, 8.93])
_BELL_AMPS = np.array([1.0, 0.55, 0.45, 0.25, 0.15])


def _bell(rng, n, sr, f0):
    t = _time(n, sr)
    tau = n / sr / 3
    out = np.zeros(n)
    for i, (ratio, amp) in enumerate(zip(_BELL_RATIOS, _BELL_AMPS)):
        if f0 * ratio < 0.45 * sr:
            decay = np.exp(-t * (1 + 0.8 * i) / tau)
            out += amp * decay * np.sin(_phase(np.full(n, f0 * ratio), sr, rng))
    return out


def _knock(rng, n, sr, f0):
    t = _time(n, sr)
    body_hz = rng.uniform(70, 130) * (1 + 0.5 * np.exp(-t / 0.01))
    tau = max(0.03, n / sr / 4)
    body = np.sin(_phase(body_hz, sr, rng)) * np.exp(-t / tau)
    strike = _filter(rng.standard_normal(n), sr, high=2000) * np.exp(-t / 0.004)
    return body + 0.5 * strike / (np.abs(strike).max() + 1e-9)


def _whistle(rng, n, sr, f0):
    t = _time(n, sr)
    vibrato = 1 + rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * rng.uniform(4.5, 7) * t)
    glide = 1 - 0.06 * np.exp(-t / 0.05)
    tone = np.sin(_phase(f0 * vibrato * glide, sr, rng))
    breath = _filter(rng.standard_normal(n), sr, low=0.8 * f0, high=1.25 * f0)
    return tone + 0.15 * breath / (np.abs(breath).max() + 1e-9)


def _engine(rng, n, sr, f0):
    t = _time(n, sr)
    wobble = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t)
    count = _max_harmonics(f0, sr, 12)
    hum = _harmonics(_phase(f0 * wobble, sr, rng), 1 / np.arange(1, count + 1) ** 0.8)
    firing = 1 + 0.2 * np.sin(np.pi * f0 * t)
    rumble = _filter(rng.standard_normal(n), sr, high=6 * f0)
    return firing * hum / np.abs(hum).max() + 0.3 * rumble / (np.abs(rumble).max() + 1e-9)


def _dog_bark(rng, n, sr, f0):
    t = _time(n, sr)
    contour = 0.85 + 0.4 * np.sin(np.pi * (t / (n / sr)) ** 0.6)
    count = _max_harmonics(1.25 * f0, sr, 30)
    ks = np.arange(1, count + 1)
    amps = (1 + 1.5 * np.exp(-(((ks - 2.5) / 1.2) ** 2))) / ks
    voice = _harmonics(_phase(f0 * contour, sr, rng), amps)
    rasp = _filter(rng.standard_normal(n), sr, low=500, high=3000)
    shape = np.exp(-t / max(0.05, n / sr / 2.5))
    return shape * (voice / np.abs(voice).max() + 0.3 * rasp / (np.abs(rasp).max() + 1e-9))


def _wind(rng, n, sr, f0):
    t = _time(n, sr)
    rates = rng.uniform(0.15, 0.9, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    gusts = np.sin(2 * np.pi * rates[:, None] * t[None, :] + phases[:, None]).mean(axis=0)
    band = _filter(rng.standard_normal(n), sr, low=rng.uniform(150, 300), high=rng.uniform(800, 1500))
    return (0.6 + 0.4 * gusts) * band


def _registry(*types: SoundType) -> dict[str, SoundType]:
    return {sound.name: sound for sound in types}


SOUND_TYPES: dict[str, SoundType] = _registry(
    SoundType("tone", "steady sine tone", _tone, {"low": (150, 300), "high": (800, 1600)}),
    SoundType(
        "rising chirp",
        "exponential sine sweep up by a factor 1.8-2.5 from the fundamental",
        _rising_chirp,
        {"low": (120, 250), "high": (700, 1400)},
    ),
    SoundType(
        "falling chirp",
        "exponential sine sweep down by a factor 1.8-2.5 to the fundamental",
        _falling_chirp,
        {"low": (120, 250), "high": (700, 1400)},
    ),
    SoundType(
        "siren",
        "two-tone (f, 1.33 f) or wailing (f to 1.5 f) siren with 2nd and 3rd harmonics",
        _siren,
        {"low": (300, 450), "high": (1000, 1500)},
    ),
    SoundType("white noise", "white noise burst", _white_noise, {}),
    SoundType("pink noise", "pink (1/f) noise burst", _pink_noise, {}),
    SoundType(
        "rain",
        "sparse random impulses (60-200/s) through a 0.8-6.5 kHz band-pass, over faint hiss",
        _rain,
        {},
        attack_s=0.003,
    ),
    SoundType("clicks", "regular click train at 6-18 clicks/s", _clicks, {}, attack_s=0.002),
    SoundType(
        "buzz",
        "band-limited sawtooth or square wave",
        _buzz,
        {"low": (70, 120), "high": (280, 450)},
    ),
    SoundType(
        "tremolo",
        "sine tone with 4-9 Hz amplitude modulation of depth 0.6-0.95",
        _tremolo,
        {"low": (180, 320), "high": (800, 1400)},
    ),
    SoundType(
        "bell",
        "inharmonic partials (1, 2, 2.76, 5.4, 8.93 x f) with exponential decays",
        _bell,
        {"low": (180, 320), "high": (800, 1400)},
        attack_s=0.003,
        decays=True,
    ),
    SoundType(
        "knock",
        "70-130 Hz damped sine with a downward pitch drop plus a low-passed noise strike",
        _knock,
        {},
        attack_s=0.002,
        decays=True,
    ),
    SoundType(
        "whistle",
        "sine with vibrato and an initial glide, plus band-passed breath noise",
        _whistle,
        {"low": (500, 800), "high": (1600, 2600)},
    ),
    SoundType(
        "engine",
        "12 harmonics with slow speed wobble and firing modulation, plus low rumble",
        _engine,
        {"low": (30, 50), "high": (90, 150)},
    ),
    SoundType(
        "dog bark",
        "harmonic voice with a rise-fall pitch contour and a formant bump, plus rasp noise",
        _dog_bark,
        {"low": (120, 200), "high": (500, 800)},
        attack_s=0.005,
        decays=True,
    ),
    SoundType("wind", "band-passed noise with slow gusting amplitude", _wind, {}, attack_s=0.1),
)


def fundamental(name: str, pitch: str | None, rng: np.random.Generator) -> float | None:
    """A fundamental frequency (Hz) for ``pitch`` of type ``name``, log-uniform in its range;
    None for an unpitched type."""
    sound = SOUND_TYPES[name]
    if not sound.pitched:
        return None
    if pitch not in PITCHES:
        raise ValueError(f"{name} is pitched: pitch must be one of {PITCHES}, got {pitch!r}")
    low, high = sound.pitch_hz[pitch]
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def render_sound(
    name: str, seconds: float, sample_rate: int, rng: np.random.Generator, f0: float | None = None
) -> np.ndarray:
    """One occurrence of sound type ``name``: ``round(seconds * sample_rate)`` samples,
    peak 1, with a fade-in of the type's attack time and a fade-out of up to 40 ms."""
    sound = SOUND_TYPES[name]
    if sound.pitched and f0 is None:
        raise ValueError(f"{name} is pitched and needs a fundamental f0")
    n = max(1, round(seconds * sample_rate))
    wave = sound.render(rng, n, sample_rate, f0)
    wave = wave / (np.abs(wave).max() + 1e-12)
    return wave * _fades(n, sample_rate, sound.attack_s)


def _ramp(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(length) / max(length, 1))


def _fades(n: int, sr: int, attack_s: float) -> np.ndarray:
    """Raised-cosine fade-in of ``attack_s`` and fade-out of min(40 ms, n/4)."""
    gain = np.ones(n)
    attack = min(int(attack_s * sr), n // 4)
    release = min(int(0.04 * sr), n // 4)
    gain[:attack] *= _ramp(attack)
    gain[n - release :] *= _ramp(release)[::-1]
    return gain
