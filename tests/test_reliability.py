"""Reliability under faults: kill -9 at random points, interrupted and failing checkpoint writes,
disk full, non-finite losses and gradients, untrusted model files, --validate-data.

Every fault is real: training runs in ``clarion train`` subprocesses that are SIGKILLed, run
under ``RLIMIT_FSIZE`` (writes fail with EFBIG) or write to a tiny or read-only tmpfs (ENOSPC,
EROFS; those tests need root and are skipped elsewhere). docs/reliability.md lists what each
test proves.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clarion.config import load_config
from clarion.rundir import RunError, load_model, sha256
from clarion.train.checkpoint import TrainingState, find_checkpoint, save_checkpoint

from conftest import TINY

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMING = {"data_wait_s", "step_s", "time_s", "data_wait_share"}
STEPS = 15  # synth data below: 8 clips x 5 captions = 40 rows, batch 8 -> 5 steps/epoch, 3 epochs


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """``clarion synth`` with few clips (seconds to make)."""
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "clarion.cli", "synth", str(out), "--clips", "8", "--val-clips", "4",
                    "--test-clips", "4", "--workers", "1", "-q"], check=True, env=ENV, timeout=300, capture_output=True)
    return out


def train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clarion.cli", "train", "--train", str(data / "train.csv"), "--val", str(data / "val.csv"),
            "--out", str(run), "-q", *TINY, "train.batch_size=8", "train.epochs=3", "train.checkpoint_every_steps=1",
            *extra]


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory) -> Path:
    """An uninterrupted run of the config the fault tests use."""
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(train_cmd(synth, run), check=True, env=ENV, timeout=600, capture_output=True)
    return run


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, ref: Path) -> None:
    assert sha256(run / "model.safetensors") == sha256(ref / "model.safetensors")
    assert records(run) == records(ref)  # every step and epoch record, once, in order
    assert find_checkpoint(run)[2]["training"]["step"] == STEPS
    assert not list((run / "checkpoints").glob(".*")), "temporary files left behind"


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


# --- kill -9 ------------------------------------------------------------------------------


def _newest_step(run: Path) -> int:
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step_*")] if (run / "checkpoints").is_dir() else []
    return max(steps, default=-1)


def _latest_step(run: Path) -> int:
    """The step of the checkpoint ``checkpoints/latest`` names (the last one completed), or -1."""
    try:
        return int((run / "checkpoints" / "latest").read_text().strip()[5:])
    except (OSError, ValueError):
        return -1


def _writes(run: Path) -> set[str]:
    """Names of the checkpoint folders being written (``.step_XXXXXXXX.<random>``; a killed
    write's folder stays until the next save removes it)."""
    root = run / "checkpoints"
    if not root.is_dir():
        return set()
    return {e.name for e in os.scandir(root) if e.name.startswith(".step_") and not e.name.endswith(".old")}


# A hang guard, not a speed assumption: no run of these tiny configs gets near it on any machine.
HANG_GUARD_S = 600


def wait_until(proc: subprocess.Popen, reached, what: str) -> bool:
    """Poll until ``reached()`` is true (return True) or ``proc`` exits (return False). Fault
    injection is driven by observed progress (files appearing), never by elapsed time; the
    guard only turns a hung process into a failure."""
    guard = time.monotonic() + HANG_GUARD_S
    while proc.poll() is None:
        if reached():
            return True
        assert time.monotonic() < guard, f"no progress in {HANG_GUARD_S} s while waiting for {what}"
        time.sleep(0.0005)
    return False


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_matches_uninterrupted_run(synth, reference, tmp_path):
    """SIGKILL ``clarion train --resume`` 5 times and resume each time; the run ends exactly
    where the uninterrupted one ends. Each kill is placed by observed progress: alternately
    right after a seeded random number (1-2) of new checkpoints has been written (mid-step), or
    the moment the next checkpoint's write starts (mid-write). 15 steps leave room for 5 kills
    on any machine, however slow or loaded."""
    ref = reference
    run, rng = tmp_path / "run", random.Random(10)
    log = []
    for attempt in range(5):
        done, stale = _newest_step(run), _writes(run)
        proc = subprocess.Popen(train_cmd(synth, run, "--resume"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt % 2:
            landed = wait_until(proc, lambda: bool(_writes(run) - stale), "a checkpoint write to start")
        else:
            target = done + rng.randint(1, 2)
            landed = wait_until(proc, lambda: _latest_step(run) >= target, f"checkpoint step {target}")
        assert landed, f"the run exited before kill {attempt + 1} (rc {proc.returncode}): {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        log.append(_newest_step(run))
        assert log[-1] > done or attempt % 2, f"no progress before kill {attempt + 1}: {log}"
    assert log[-1] < STEPS, f"the kills came after training ended: {log}"
    final = subprocess.run(train_cmd(synth, run, "--resume"), env=ENV, timeout=HANG_GUARD_S, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert_same_run(run, ref)


_WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from clarion.train.checkpoint import TrainingState, find_checkpoint, save_checkpoint
    run = Path(sys.argv[1])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    found = find_checkpoint(run)
    step = 0 if found is None else found[2]["training"]["step"] + 1
    print("ready", flush=True)
    while True:  # back-to-back 4 MB checkpoints whose every weight equals their step
        state = TrainingState(epoch=0, step=step, step_in_epoch=0, best_score=0.0, best_epoch=0)
        save_checkpoint(run, {"w": torch.full((1_000_000,), float(step))}, opt, sched, state)
        step += 1
""")


def test_kill9_during_checkpoint_writes_never_leaves_a_torn_checkpoint(tmp_path):
    """A process that does nothing but write checkpoints is SIGKILLed 6 times, each time once it
    has completed a seeded random number (1-3) of new checkpoints and, on alternate kills, the
    moment the following write has started: the checkpoint found afterwards is always complete
    and self-consistent, and the next writer carries on from it."""
    run, rng = tmp_path / "run", random.Random(3)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    mid_write, last = 0, -1
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(run)], env=ENV, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        target = last + rng.randint(1, 3)
        assert wait_until(proc, lambda: _latest_step(run) >= target, f"checkpoint step {target}")
        if attempt % 2:
            before = _writes(run)
            assert wait_until(proc, lambda: bool(_writes(run) - before), "the next checkpoint write to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        mid_write += bool(_writes(run))  # the stale folders of earlier kills were removed by this writer's saves
        path, tensors, meta = find_checkpoint(run)
        step = meta["training"]["step"]
        assert path.name == f"step_{step:08d}" and torch.equal(tensors["w"], torch.full((1_000_000,), float(step)))
        assert step > last  # progress across restarts
        last = step
    assert mid_write >= 1, "no kill landed inside a checkpoint write"


# --- corrupted, truncated and failing checkpoints ----------------------------------------------


def _checkpoints(run: Path, steps: int) -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in range(1, steps + 1):
        state = TrainingState(epoch=0, step=step, step_in_epoch=step, best_score=0.0, best_epoch=0)
        save_checkpoint(run, {"w": torch.full((64,), float(step))}, opt, sched, state, keep=3)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/clarion-pwned-marker")


def _evil_pickle(path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({"model": _Evil()}, fh)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated_weights", "flipped_bytes", "truncated_json", "missing_weights",
                                    "pickle_with_forged_checksum", "latest_points_nowhere"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage, caplog):
    run = tmp_path / "run"
    _checkpoints(run, 3)
    newest = run / "checkpoints" / "step_00000003"
    weights = newest / "state.safetensors"
    if damage == "truncated_weights":
        _truncate(weights)
    elif damage == "flipped_bytes":
        with open(weights, "r+b") as fh:
            fh.seek(len(weights.read_bytes()) - 20)
            fh.write(b"\xff" * 8)
    elif damage == "truncated_json":
        _truncate(newest / "state.json")
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "pickle_with_forged_checksum":
        _evil_pickle(weights)
        meta = json.loads((newest / "state.json").read_text())
        (newest / "state.json").write_text(json.dumps({**meta, "sha256": sha256(weights)}))
    else:
        shutil.rmtree(newest)
    with caplog.at_level(logging.WARNING, logger="clarion.train"):
        path, tensors, meta = find_checkpoint(run)
    assert path.name == "step_00000002" and meta["training"]["step"] == 2
    assert torch.equal(tensors["w"], torch.full((64,), 2.0))
    assert not MARKER.exists()
    if damage != "latest_points_nowhere":
        assert any("skipping unusable checkpoint" in r.message and "step_00000003" in r.message for r in caplog.records)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _kill_after_step(cmd: list[str], run: Path, step: int) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(proc, lambda: _newest_step(run) >= step, f"checkpoint step {step}"), "the run exited early"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert _newest_step(run) < STEPS, "the run finished before it was killed"


@pytest.mark.slow
def test_file_too_large_fails_at_the_write_and_keeps_the_previous_checkpoint(synth, reference, tmp_path):
    """Resume under RLIMIT_FSIZE=64 KiB (a checkpoint is ~550 KB): the first checkpoint write fails
    with EFBIG; the CLI prints one clear error (exit 2), the earlier checkpoint is untouched and no
    temporary file is left; resuming without the limit then ends where the uninterrupted run ends."""
    run = tmp_path / "run"
    _kill_after_step(train_cmd(synth, run), run, 3)
    before = find_checkpoint(run)[0]
    digest = sha256(before / "state.safetensors")
    failed = subprocess.run(train_cmd(synth, run, "--resume"), env=ENV, timeout=600, capture_output=True, text=True,
                            preexec_fn=_limit_file_size(64 * 1024))
    assert failed.returncode == 2, failed.stderr
    no_traceback(failed.stderr)
    assert "cannot write checkpoint" in failed.stderr and "File too large" in failed.stderr
    assert find_checkpoint(run)[0] == before and sha256(before / "state.safetensors") == digest
    assert not list((run / "checkpoints").glob(".*"))
    done = subprocess.run(train_cmd(synth, run, "--resume"), env=ENV, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_run(run, reference)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the requested size (and options) under tmp_path; needs root."""
    mounted = []

    def mount(size: str, options: str = "") -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.slow
def test_disk_full_fails_at_the_write_and_keeps_the_previous_checkpoint(synth, tmpfs):
    """A real ENOSPC: train into a 1.5 MB tmpfs, which holds two checkpoints (~550 KB each) but not three."""
    run = tmpfs("1500k") / "run"
    result = subprocess.run(train_cmd(synth, run), env=ENV, timeout=600, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    assert "No space left on device" in result.stderr and "cannot write" in result.stderr
    path, _, meta = find_checkpoint(run)  # the newest intact checkpoint, checksum verified
    assert 0 < meta["training"]["step"] < STEPS


def test_small_disk_or_read_only_run_dir_is_refused_before_training(synth, tmpfs):
    run = tmpfs("200k") / "run"
    small = subprocess.run(train_cmd(synth, run), env=ENV, timeout=600, capture_output=True, text=True)
    assert small.returncode == 2 and "not enough disk space" in small.stderr, small.stderr
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    read_only = subprocess.run(train_cmd(synth, tmpfs("1m", "ro") / "run"), env=ENV, timeout=600, capture_output=True,
                               text=True)
    assert read_only.returncode == 2 and "not writable" in read_only.stderr, read_only.stderr
    no_traceback(small.stderr + read_only.stderr)


# --- numerical safety ----------------------------------------------------------------------


def _trainer(synth: Path, tmp_path: Path, *extra: str):
    from clarion.data.manifest import read_manifest
    from clarion.models import build_model, train_tokenizer
    from clarion.rundir import build_run_objective
    from clarion.train.loop import Trainer, seed_everything

    cfg = load_config(None, [*TINY, f"data.train={synth / 'train.csv'}", "train.batch_size=8", *extra])
    seed_everything(0)
    train_set = read_manifest(cfg.data.train)
    model = build_model(cfg, train_tokenizer(train_set.captions, cfg.model.vocab_size))
    return Trainer(cfg, tmp_path, model, build_run_objective(cfg), train_set, None, torch.device("cpu"), None)


def _batch(trainer, rows: list[int]) -> dict:
    from clarion.data.loaders import collate

    return collate([trainer.dataset[i] for i in rows])


def _snapshot(trainer) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}  # weights and BatchNorm buffers
    state.update({f"objective.{k}": v.clone() for k, v in trainer.objective.state_dict().items()})
    return state


def _assert_unchanged(trainer, before: dict[str, torch.Tensor]) -> None:
    after = _snapshot(trainer)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"a skipped step changed {changed[:5]}"


@pytest.mark.parametrize("fault", ["nan_audio", "nan_gradient"])
def test_nonfinite_step_is_skipped_counted_and_logged_with_its_rows(synth, tmp_path, fault, caplog):
    """A NaN reaching the loss (NaN samples in the batch) or only the gradient (a hook poisons one
    parameter's gradient) skips the step: weights, BatchNorm statistics, optimiser and scheduler
    are unchanged, the step is counted and the log names the manifest lines and audio files."""
    trainer = _trainer(synth, tmp_path)
    rows = [0, 5, 10, 15, 20, 25, 30, 35]
    assert trainer.train_step(_batch(trainer, rows)) is not None  # one good step: optimiser state exists
    before, opt_state = _snapshot(trainer), json.dumps(trainer.optimizer.state_dict()["param_groups"])
    lr = trainer.scheduler.get_last_lr()
    batch = _batch(trainer, rows)
    hook = None
    if fault == "nan_audio":
        batch["audio"][2, 100:200] = float("nan")
    else:  # the loss stays finite; one parameter's gradient turns NaN
        hook = trainer.trainable[0].register_hook(lambda g: torch.full_like(g, float("nan")))
    with caplog.at_level(logging.WARNING, logger="clarion.train"):
        assert trainer.train_step(batch) is None
    if hook is not None:
        hook.remove()
    _assert_unchanged(trainer, before)
    assert json.dumps(trainer.optimizer.state_dict()["param_groups"]) == opt_state and trainer.scheduler.get_last_lr() == lr
    assert trainer.state.nonfinite_steps == 1 and trainer.state.nonfinite_streak == 1
    message = next(r.message for r in caplog.records if "non-finite" in r.message)
    assert ("non-finite loss" if fault == "nan_audio" else "non-finite gradient norm") in message
    row = trainer.train_set.rows[rows[2]]
    assert f"line {row.line} ({row.audio})" in message and str(trainer.train_set.path) in message
    assert trainer.train_step(_batch(trainer, rows)) is not None  # training goes on
    assert trainer.state.nonfinite_streak == 0 and trainer.state.nonfinite_steps == 1


def test_nan_wav_is_rejected_by_the_data_layer_and_counted(synth, tmp_path):
    """A float WAV with NaN samples never reaches the model: the decoder rejects it, the row is
    skipped, counted in the summary and the epoch records, and named in the log."""
    nan_wav = tmp_path / "nan.wav"
    wave = np.zeros(16000, dtype=np.float32)
    wave[500:600] = np.nan
    sf.write(nan_wav, wave, 16000, subtype="FLOAT")
    manifest = tmp_path / "train.csv"
    lines = (synth / "train.csv").read_text().splitlines()
    manifest.write_text("\n".join([lines[0], *(f"{synth / ln.split(',', 1)[0]},{ln.split(',', 1)[1]}" for ln in lines[1:]),
                                   f"{nan_wav},a clip of NaN samples,x,en"]) + "\n")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "clarion.cli", "train", "--train", str(manifest), "--out", str(run),
                             *TINY, "train.batch_size=41", "train.epochs=1"], env=ENV, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout[result.stdout.index("{"):])["skipped_samples"] == 1
    assert f"{nan_wav}: non-finite samples (NaN/Inf)" in result.stderr
    epoch = [r for r in records(run) if r["type"] == "epoch"][0]
    assert epoch["skipped_samples"] == 1 and epoch["nonfinite_steps"] == 0


def test_exploding_learning_rate_stops_cleanly_after_k_skips(synth, tmp_path):
    """lr=1e6 makes the loss NaN after a step or two; 3 skips in a row (train.max_nonfinite_steps=3)
    stop the CLI with one clear message, exit status 2 and no traceback."""
    cmd = train_cmd(synth, tmp_path / "run", "train.lr=1e6", "train.max_nonfinite_steps=3", "train.epochs=2")
    result = subprocess.run(cmd, env=ENV, timeout=600, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    assert "training stopped: 3 consecutive steps had a non-finite loss or gradient" in result.stderr
    assert "train.max_nonfinite_steps=3" in result.stderr and str(synth / "train.csv") in result.stderr
    assert result.stderr.count("step skipped") == 3


def test_losses_are_computed_in_fp32_under_bf16_autocast(synth, tmp_path):
    """With autocast on (``train.precision=bf16``, on CPU too; on CUDA also ``train.amp``), the
    encoders' matmuls run in bf16 but the objective gets fp32 embeddings and runs outside autocast."""
    trainer = _trainer(synth, tmp_path, "train.precision=bf16")
    seen = {}

    def linear_hook(module, inputs, out):
        seen.setdefault("linear", set()).add(out.dtype)

    def objective_hook(module, args):
        seen["objective"] = ([a.dtype for a in args[:2]], torch.is_autocast_enabled("cpu"))

    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(linear_hook)
    trainer.objective.register_forward_pre_hook(objective_hook)
    result = trainer.train_step(_batch(trainer, list(range(8))))
    assert seen["linear"] == {torch.bfloat16}  # autocast was really on in the encoders and heads
    assert seen["objective"] == ([torch.float32, torch.float32], False)
    assert result is not None and np.isfinite(result["loss"])


# --- untrusted files ------------------------------------------------------------------------


def test_malicious_pickle_as_panns_checkpoint_is_refused(tmp_path):
    from clarion.models.panns import PannsCheckpointError, read_panns_checkpoint

    evil = tmp_path / "Cnn14_mAP=0.431.pth"
    _evil_pickle(evil)
    with pytest.raises(PannsCheckpointError, match="weights_only=True"):
        read_panns_checkpoint(evil)
    assert not MARKER.exists()


@pytest.fixture(scope="module")
def finished_run(synth, tmp_path_factory) -> Path:
    from clarion.train.loop import train

    run = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(None, [*TINY, f"data.train={synth / 'train.csv'}", "train.batch_size=8", "train.epochs=1"]), run)
    return run


@pytest.mark.parametrize("planted", ["model.safetensors", "model.safetensors_no_json", "extra_pth_files"])
def test_pickle_planted_in_a_run_is_never_unpickled(finished_run, tmp_path, planted):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if planted.startswith("model.safetensors"):
        _evil_pickle(run / "model.safetensors")
        if planted.endswith("no_json"):
            (run / "model.json").unlink()
        with pytest.raises(RunError, match="checksum|not a safetensors file"):
            load_model(run)
    else:  # files clarion never reads: a .pth beside the weights and in the checkpoint folder
        _evil_pickle(run / "pytorch_model.bin")
        _evil_pickle(run / "checkpoints" / "checkpoint.pth")
        load_model(run)
        assert find_checkpoint(run) is not None
    assert not MARKER.exists()


@pytest.mark.parametrize("config, message", [
    ("train:\n  batch_size: many\n", "train.batch_size: expected int"),
    ("train:\n  batchsize: 8\n", "unknown config key"),
    ("model:\n  embed_dim: -4\n", "model.embed_dim: -4 is out of range"),
    ("audio:\n  sample_rate: 0\n", "audio.sample_rate: 0 is out of range"),
    ("train:\n  lr: .nan\n", "train.lr: nan is not finite"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n", "more than 100000 values"),
    ("[not, a, mapping]\n", "expected a mapping"),
    ("train: {lr: 0.1\n", "cannot read config"),
], ids=["wrong_type", "unknown_key", "negative_dim", "zero_rate", "nan_lr", "alias_bomb", "not_mapping", "bad_yaml"])
def test_bad_config_in_a_run_directory_gives_a_clear_error(finished_run, tmp_path, config, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.yaml").write_text(config)
    with pytest.raises(RunError, match=message):
        load_model(run)
    result = subprocess.run([sys.executable, "-m", "clarion.cli", "evaluate", str(run), "--data",
                             str(finished_run.parent / "x.csv")], env=ENV, timeout=300, capture_output=True, text=True)
    assert result.returncode == 2 and "invalid config" in result.stderr
    no_traceback(result.stderr)


def test_garbage_tokenizer_or_metadata_in_a_run_gives_a_clear_error(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "tokenizer.json").write_bytes(os.urandom(300))
    with pytest.raises(RunError, match="not a valid tokenizer file"):
        load_model(run)
    shutil.copy(finished_run / "tokenizer.json", run / "tokenizer.json")
    (run / "model.json").write_text("{" * 100_000)
    with pytest.raises(RunError, match="not valid JSON"):
        load_model(run)


# --- clarion train --validate-data -----------------------------------------------------------------


def _broken_manifest(synth: Path, tmp_path: Path) -> Path:
    (tmp_path / "junk.wav").write_bytes(os.urandom(4000))
    manifest = tmp_path / "train.csv"
    lines = (synth / "train.csv").read_text().splitlines()
    manifest.write_text("\n".join([lines[0], *(f"{synth / ln.split(',', 1)[0]},{ln.split(',', 1)[1]}" for ln in lines[1:]),
                                   f"{tmp_path / 'junk.wav'},random bytes,x,en"]) + "\n")
    return manifest


def test_validate_data_refuses_to_start_on_problems(synth, tmp_path):
    manifest = _broken_manifest(synth, tmp_path)
    base = [sys.executable, "-m", "clarion.cli", "train", "--train", str(manifest), *TINY, "train.batch_size=8",
            "train.epochs=1"]
    refused = subprocess.run([*base, "--out", str(tmp_path / "refused"), "--validate-data"], env=ENV, timeout=600,
                             capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    no_traceback(refused.stderr)
    assert "data check found 1 problem(s) in the train data" in refused.stderr and "corrupt" in refused.stderr
    assert "junk.wav" in refused.stderr and "--validate-data-warn" in refused.stderr
    assert not (tmp_path / "refused").exists()  # nothing written: the same --out can be used once fixed

    warned = subprocess.run([*base, "--out", str(tmp_path / "warned"), "--validate-data-warn"], env=ENV, timeout=600,
                            capture_output=True, text=True)
    assert warned.returncode == 0, warned.stderr
    assert "data check found 1 problem(s)" in warned.stderr and "training anyway" in warned.stderr


def test_validate_data_passes_clean_data(synth, tmp_path):
    from clarion.data.check import validate_training_data

    cfg = load_config(None, [f"data.train={synth / 'train.csv'}", f"data.val={synth / 'val.csv'}", "data.validate=fail"])
    results = validate_training_data(cfg)
    assert len(results) == 2 and not any(r.failing for r in results)
