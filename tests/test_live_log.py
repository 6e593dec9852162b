"""``train.log_to``: TensorBoard and W&B get the scalars of metrics.jsonl, each step once, also
after a run is resumed from an earlier checkpoint (the interrupted run had logged beyond it)."""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections import Counter
from pathlib import Path

import pytest

from clarion.config import load_config
from clarion.rundir import RunError
from clarion.train.live import check_live_loggers, scalars
from clarion.train.loop import train

from conftest import TINY


def _cfg(data, *extra):
    return load_config(None, [*TINY, f"data.train={data['train']}", f"data.val={data['val']}", "train.batch_size=16",
                              "train.epochs=3", *extra])


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _interrupt_and_resume(cfg, run: Path) -> None:
    """Train to the end, then go back to the second newest checkpoint (as if the run had been
    killed after logging everything) and resume."""
    train(cfg, run)
    checkpoints = run / "checkpoints"
    newest, older = sorted(checkpoints.glob("step_*"))[::-1][:2]
    shutil.rmtree(newest)
    (checkpoints / "latest").write_text(older.name + "\n")
    train(cfg, run, resume=True)


def test_scalar_names_follow_metrics_jsonl():
    record = {"type": "epoch", "epoch": 2, "step": 12, "train_loss": 1.5, "best": True, "collapse_warning_step": None,
              "val": {"t2a": {"R@1": 0.25}, "counts": {"clips": 8}}, "val_mean_R@1": 0.3}
    assert scalars(record) == {"train_loss": 1.5, "val/t2a/R@1": 0.25, "val/counts/clips": 8.0, "val_mean_R@1": 0.3}


def test_log_to_takes_a_name_a_comma_list_or_a_list():
    from clarion.config import ConfigError

    assert load_config(None, ["train.log_to=tensorboard"]).train.log_to == ["tensorboard"]
    assert load_config(None, ["train.log_to=tensorboard,wandb"]).train.log_to == ["tensorboard", "wandb"]
    assert load_config(None, ["train.log_to=[wandb]"]).train.log_to == ["wandb"]
    assert load_config(None, []).train.log_to == []
    with pytest.raises(ConfigError, match=r"train.log_to\[0\]: 'mlflow' is out of range; expected tensorboard or wandb"):
        load_config(None, ["train.log_to=mlflow"])


def test_log_to_a_missing_package_is_refused_before_training(tone_data, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(RunError, match=r"train.log_to=wandb needs the wandb package: pip install 'clarion\[wandb\]'"):
        check_live_loggers(["wandb"])
    with pytest.raises(RunError, match="needs the wandb package"):
        train(_cfg(tone_data, "train.log_to=wandb"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("every", [0, 1], ids=["epoch-checkpoints", "step-checkpoints"])
def test_tensorboard_events_equal_metrics_after_resume(tone_data, tmp_path, every):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    _interrupt_and_resume(_cfg(tone_data, "train.log_to=tensorboard", f"train.checkpoint_every_steps={every}"), run)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    expected: dict[str, list] = {}
    for record in _records(run):
        for tag, value in scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert set(logged) == set(expected) and {"loss", "lr", "train_loss", "val/t2a/R@1", "val_mean_R@1"} <= set(logged)
    for tag, points in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag  # every step once, in order
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # stored as float32


def _wandb_records(path: Path) -> list:
    """The ``wandb_internal_pb2.Record`` messages of an offline run's ``.wandb`` file (a
    LevelDB-style log: 32 KiB blocks of chunks with a 7-byte header; wandb has no reader of its own)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, records = path.read_bytes(), 7, b"", []  # file header: ":W&B", magic, version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # being written
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _wandb_history(run: Path, sessions: int) -> list[tuple[int, dict]]:
    """Every history row of the ``sessions`` offline W&B runs under ``run``. ``wandb.finish``
    returns before W&B's service process has written the file, so this waits (by observed
    progress) until each file ends with its ``exit`` record."""
    guard = time.monotonic() + 300  # a hang guard only
    while True:
        paths = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
        files = [_wandb_records(p) if p.stat().st_size > 7 else [] for p in paths]
        if len(files) == sessions and all(f and f[-1].WhichOneof("record_type") == "exit" for f in files):
            break
        assert time.monotonic() < guard, f"W&B wrote {len(files)} of {sessions} complete offline runs in 300 s"
        time.sleep(0.05)
    rows = []
    for records in files:
        for record in records:
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                rows.append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """No W&B configuration in the environment (so clarion runs it offline); its folders under tmp_path."""
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_runs_offline_resumes_its_run_and_logs_each_step_once(tone_data, tmp_path, offline_wandb):
    run = tmp_path / "run"
    _interrupt_and_resume(_cfg(tone_data, "train.log_to=wandb"), run)
    run_id = json.loads((run / "wandb_run.json").read_text())["id"]
    offline = sorted(run.glob("wandb/offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)  # one W&B run, two sessions
    history = _wandb_history(run, sessions=2)
    steps = [step for step, _ in history]
    assert steps == sorted(set(steps)), Counter(steps)  # each step once
    expected: dict[int, dict] = {}
    for record in _records(run):
        expected.setdefault(record["step"], {}).update(scalars(record))
    assert dict(history).keys() == expected.keys()
    timing = {"data_wait_s", "step_s", "time_s", "data_wait_share"}  # steps 9-12: W&B keeps the first session's
    for step, row in history:
        assert row.keys() == expected[step].keys(), step
        assert {k: v for k, v in row.items() if k not in timing} == pytest.approx(
            {k: v for k, v in expected[step].items() if k not in timing}, rel=1e-9), step


def test_wandb_added_on_resume_gets_the_earlier_steps_too(tone_data, tmp_path, offline_wandb):
    run = tmp_path / "run"
    cfg = _cfg(tone_data)
    train(cfg, run)
    checkpoints = run / "checkpoints"
    shutil.rmtree(max(checkpoints.glob("step_*")))
    (checkpoints / "latest").write_text(max(checkpoints.glob("step_*")).name + "\n")
    cfg.train.log_to = ["wandb"]
    train(cfg, run, resume=True)
    steps = [step for step, _ in _wandb_history(run, sessions=1)]
    assert steps == sorted({r["step"] for r in _records(run)})  # the kept steps 1-8 first, then the replay's


def test_wandb_that_cannot_start_is_one_clear_error(tone_data, tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # configured online, but no API key (and no network)
    with pytest.raises(RunError, match=r"train.log_to=wandb: W&B did not start \(UsageError: No API key"):
        train(_cfg(tone_data, "train.log_to=wandb", "train.epochs=1"), tmp_path / "run")
