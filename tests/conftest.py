"""Shared fixtures: a tiny tone dataset in the manifest layout and a tiny model config.

Under ``CI=true`` a skipped test is a failure, except for the reasons in ``MAY_SKIP_IN_CI``
(no GPU on CI machines; no mount rights): CI installs Chromium, Playwright, FAISS and the
MiniLM package, so the browser, FAISS and MiniLM tests must run there, not skip.
"""

from __future__ import annotations

import os

import torch

# The fused Triton kernels (tests/test_fused.py) run on CPU tensors under Triton's interpreter,
# which Triton reads when the kernels are defined, i.e. when clarion is first imported: so it is
# set here, before any test module imports clarion. On a CUDA machine they run natively.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import csv  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

PITCHES = {"low": 220.0, "middle": 660.0, "high": 1980.0, "very high": 4000.0}
TINY = [
    "audio.clip_seconds=1.0",
    "model.audio_channels=[8,16,32]",
    "model.text_width=32",
    "model.text_layers=1",
    "model.text_heads=2",
    "model.embed_dim=32",
    "model.vocab_size=200",
    "train.warmup_steps=2",
    "train.lr=0.003",
    "data.num_workers=0",
]


def write_tone_split(root: Path, split: str, n_clips: int, seed: int) -> Path:
    """``n_clips`` one-second clips, each a tone of one of four pitches, beeping once or twice,
    with two captions per clip; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(16000) / 16000
    rows = []
    for i in range(n_clips):
        name = list(PITCHES)[i % 4]
        beeps = 1 + (i // 4) % 2
        gate = np.zeros_like(t)
        for b in range(beeps):
            gate[(t >= 0.1 + 0.45 * b) & (t < 0.4 + 0.45 * b)] = 1.0
        wave = 0.5 * gate * np.sin(2 * np.pi * PITCHES[name] * t) + 0.01 * rng.standard_normal(len(t))
        path = f"audio/{split}_{i:03d}.wav"
        sf.write(root / path, wave.astype(np.float32), 16000)
        count = "once" if beeps == 1 else "twice"
        rows.append({"audio": path, "caption": f"a {name} tone beeps {count}", "label": name})
        rows.append({"audio": path, "caption": f"{count} a {name} pitched beep", "label": name})
    manifest = root / f"{split}.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["audio", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


IN_CI = os.environ.get("CI") == "true"
MAY_SKIP_IN_CI = ("needs CUDA", "cannot mount a tmpfs")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_forbidden_skip(report) -> None:
    """Turn a skip into a failure under CI=true unless its reason may legitimately occur there."""
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(allowed in reason for allowed in MAY_SKIP_IN_CI):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where it must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


@pytest.fixture(scope="session")
def tone_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tones")
    return {"train": write_tone_split(root, "train", 32, 0), "val": write_tone_split(root, "val", 8, 1)}
