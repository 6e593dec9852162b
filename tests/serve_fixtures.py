"""Tiny models, audio folders and search indexes for the API, index and server tests.

``tiny_index(tmp_path)`` is the one-call fixture: 12 one-second clips in a folder with
subfolders, a random-init tiny model run, and the index built over them (a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from conftest import TINY

from clarion.config import load_config
from clarion.models import build_model, train_tokenizer
from clarion.rundir import build_run_objective, save_model

# the shared tiny model (conftest.TINY) without its training settings
TINY_MODEL = [o for o in TINY if o.startswith(("audio.", "model."))] + ["objective.name=infonce"]
CAPTIONS = [
    "a low tone beeps once", "a high tone beeps twice", "a dog barks", "rain on a roof",
    "white noise hiss", "a bird chirps", "a very high whistle", "a middle pitched beep",
]
# (relative path, kind, frequency): tones at several pitches, noise, chirps; nested folders
CLIPS = [
    ("tones/low_220.wav", "tone", 220.0),
    ("tones/mid_660.wav", "tone", 660.0),
    ("tones/high_1980.wav", "tone", 1980.0),
    ("tones/vhigh_4000.wav", "tone", 4000.0),
    ("tones/deep/sub_110.wav", "tone", 110.0),
    ("noise/white_0.wav", "noise", 0.0),
    ("noise/white_1.flac", "noise", 1.0),
    ("noise/soft_2.wav", "noise", 2.0),
    ("chirps/up_300.wav", "chirp", 300.0),
    ("chirps/up_1200.wav", "chirp", 1200.0),
    ("beeps_440_44k.wav", "beep", 440.0),
    ("beeps_880.ogg", "beep", 880.0),
]


def clip_wave(kind: str, freq: float, seconds: float = 1.0, sample_rate: int = 16000) -> np.ndarray:
    """float32 [seconds * sample_rate] test signal: a tone, seeded noise, an upward chirp or beeps."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    if kind == "tone":
        wave = 0.5 * np.sin(2 * np.pi * freq * t)
    elif kind == "noise":
        wave = np.random.default_rng(int(freq)).uniform(-0.4, 0.4, t.shape) * (0.3 if freq == 2 else 1.0)
    elif kind == "chirp":
        wave = 0.5 * np.sin(2 * np.pi * freq * t * (1 + 2 * t))
    else:
        wave = 0.5 * np.sin(2 * np.pi * freq * t) * ((t * 4) % 1 < 0.5)
    return wave.astype(np.float32)


def write_clips(root: Path) -> list[str]:
    """Write :data:`CLIPS` under ``root`` (one at 44.1 kHz, the rest at 16 kHz); returns their
    relative paths, sorted."""
    for rel, kind, freq in CLIPS:
        rate = 44100 if "44k" in rel else 16000
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, clip_wave(kind, freq, 1.0, rate), rate)
    return sorted(rel for rel, _, _ in CLIPS)


def tiny_run(run: Path, seed: int = 0, *overrides: str) -> Path:
    """A random-init tiny model saved as a run directory (what ``clarion.load`` reads)."""
    torch.manual_seed(seed)
    cfg = load_config(None, [*TINY_MODEL, f"train.seed={seed}", *overrides])
    tokenizer = train_tokenizer(CAPTIONS, cfg.model.vocab_size)
    model = build_model(cfg, tokenizer).eval()
    run.mkdir(parents=True)
    cfg.save(run / "config.yaml")
    tokenizer.save(str(run / "tokenizer.json"))
    save_model(run, model, build_run_objective(cfg), {"epoch": 0})
    return run


def tiny_index(tmp_path: Path) -> Path:
    """12 synthetic clips under ``tmp_path/audio`` (in subfolders), a tiny model under
    ``tmp_path/run`` and their search index at ``tmp_path/index``; returns the index path."""
    from clarion.serve.index import build_index

    write_clips(tmp_path / "audio")
    tiny_run(tmp_path / "run")
    build_index(tmp_path / "audio", tmp_path / "run", tmp_path / "index", device="cpu")
    return tmp_path / "index"
