import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clarion.cli import main
from clarion.config import load_config
from clarion.rundir import RunError, load_model, sha256
from clarion.train.checkpoint import find_checkpoint
from clarion.train.loop import epoch_batches, train, warmup_cosine

from conftest import TINY


def tiny_cfg(data, *extra):
    return load_config(None, [*TINY, f"data.train={data['train']}", f"data.val={data['val']}", "train.batch_size=16", *extra])


def epoch_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_epoch_batches_cover_rows_and_are_seeded():
    ids = np.repeat(np.arange(10), 5)  # 10 clips x 5 captions
    all_rows = epoch_batches(ids, "all", 8, seed=0, epoch=0)
    flat = [i for b in all_rows for i in b]
    assert len(all_rows) == 6 and len(set(flat)) == 48  # drop_last: 50 // 8 full batches
    assert all_rows == epoch_batches(ids, "all", 8, seed=0, epoch=0)
    assert all_rows != epoch_batches(ids, "all", 8, seed=0, epoch=1)
    per_clip = epoch_batches(ids, "one_per_clip", 5, seed=0, epoch=0)
    assert sorted(ids[[i for b in per_clip for i in b]].tolist()) == list(range(10))
    with pytest.raises(ValueError, match="larger than"):
        epoch_batches(ids, "all", 64, seed=0, epoch=0)


def test_warmup_cosine_schedule():
    f = warmup_cosine(4, 20)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)


def test_training_learns_and_cli_evaluates(tone_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--train", str(tone_data["train"]), "--val", str(tone_data["val"]), "--objective", "infonce",
            "--out", str(run), "--epochs", "8", "--batch-size", "16", "-q", *TINY]
    assert main(args) == 0
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "model.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in records} == {"step", "epoch"}
    assert all(np.isfinite(r["loss"]) for r in records if r["type"] == "step")
    epochs = epoch_records(run)
    assert len(epochs) == 8 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tone_data["val"]), "--json", str(tmp_path / "m.json"), "-q"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    for side in ("t2a", "a2t"):
        assert set(metrics[side]) == {"R@1", "R@5", "R@10", "mAP@10", "medR", "meanR"}
    # 8 distinct (pitch, count) clips: chance R@1 is 1/8
    assert metrics["t2a"]["R@1"] >= 0.5
    best = max(epochs, key=lambda r: r["val_mean_R@1"])
    assert metrics["t2a"] == pytest.approx(best["val"]["t2a"])  # model.safetensors is the best epoch
    geometry = metrics["geometry"]
    assert 0 <= geometry["modality_gap"] <= 2 and 0 <= geometry["alignment"] <= 4
    assert -4 <= geometry["uniformity_audio"] <= 0 and -4 <= geometry["uniformity_text"] <= 0
    assert "languages" not in metrics  # no lang column

    # the same captions tagged as two languages: each language is scored on its own, then averaged
    rows = list(csv.DictReader(open(tone_data["val"])))
    bilingual = tone_data["val"].parent / "val_bilingual.csv"
    with open(bilingual, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["audio", "caption", "lang"])
        writer.writeheader()
        writer.writerows({"audio": r["audio"], "caption": r["caption"], "lang": "en" if i % 2 == 0 else "xx"} for i, r in enumerate(rows))
    assert main(["evaluate", str(run), "--data", str(bilingual), "--json", str(tmp_path / "ml.json"), "-q"]) == 0
    multilingual = json.loads((tmp_path / "ml.json").read_text())
    assert set(multilingual["languages"]) == {"en", "xx"}
    for side in ("t2a", "a2t"):
        for k in ("R@1", "mAP@10"):
            per = [multilingual["languages"][lang][side][k] for lang in ("en", "xx")]
            assert multilingual["language_mean"][side][k] == pytest.approx(sum(per) / 2)


def test_existing_run_is_not_overwritten(tone_data, tmp_path):
    cfg = tiny_cfg(tone_data, "train.epochs=1")
    train(cfg, tmp_path / "run")
    with pytest.raises(RunError, match="--resume"):
        train(cfg, tmp_path / "run")
    assert main(["train", "--train", str(tone_data["train"]), "--out", str(tmp_path / "run"), "-q"]) == 2


def test_unwritable_run_dir_fails_before_training(tone_data, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "run"  # a path under a regular file can never be created
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    with pytest.raises(RunError, match="not writable"):
        train(tiny_cfg(tone_data, "train.epochs=1"), target)


def test_bad_training_clip_is_skipped_and_counted(tone_data, tmp_path):
    bad = tmp_path / "nan.wav"
    sf.write(bad, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    rows = tone_data["train"].read_text().splitlines()
    root = tone_data["train"].parent
    fixed = [rows[0]] + [f"{root / r.split(',')[0]},{','.join(r.split(',')[1:])}" for r in rows[1:]]
    manifest = tmp_path / "train.csv"
    manifest.write_text("\n".join(fixed + [f"{bad},a broken clip,none"]) + "\n")
    cfg = load_config(None, [*TINY, f"data.train={manifest}", "train.batch_size=13", "train.epochs=1"])
    summary = train(cfg, tmp_path / "run")
    assert summary["skipped_samples"] == 1
    with pytest.raises(Exception, match="non-finite"):
        train(load_config(None, [*TINY, f"data.train={manifest}", "train.batch_size=13", "train.epochs=1",
                                 "data.on_bad_sample=fail"]), tmp_path / "run_fail")


def test_resume_from_an_earlier_checkpoint_reproduces_the_run(tone_data, tmp_path):
    """Roll a finished run back to its epoch-2 checkpoint and resume: the replayed epoch must
    equal the original one (weights, optimiser, scheduler and RNG all restored)."""
    import shutil

    cfg = tiny_cfg(tone_data, "train.epochs=3")
    train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "rolled")
    checkpoints = tmp_path / "rolled" / "checkpoints"
    shutil.rmtree(checkpoints / "step_00000012")
    (checkpoints / "latest").write_text("step_00000008\n")
    summary = train(cfg, tmp_path / "rolled", resume=True)
    assert summary["step"] == 12
    assert epoch_records(tmp_path / "rolled") == [
        {**r, "time_s": pytest.approx(r["time_s"], abs=1e9), "data_wait_share": pytest.approx(0, abs=1)}
        for r in epoch_records(tmp_path / "full")
    ]
    assert sha256(tmp_path / "rolled" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")


def test_corrupt_checkpoint_is_never_loaded(tone_data, tmp_path):
    cfg = tiny_cfg(tone_data, "train.epochs=2")
    train(cfg, tmp_path / "run")
    path, _, meta = find_checkpoint(tmp_path / "run")
    assert meta["training"]["epoch"] == 2
    with open(path / "state.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00garbage\x00")
    older, _, meta = find_checkpoint(tmp_path / "run")
    assert older != path and meta["training"]["epoch"] == 1


def _train_cmd(data, run, *extra):
    return [sys.executable, "-m", "clarion.cli", "train", "--train", str(data["train"]), "--val", str(data["val"]),
            "--out", str(run), "-q", *TINY, "train.batch_size=8", "train.epochs=3",
            "train.checkpoint_every_steps=1", *extra]


# every augmentation on (augment.*): its draws are keyed to the seed and the step or row, not to saved state
AUGMENTED = ["augment.gain_db=6", "augment.shift_seconds=0.2", "augment.mixup_alpha=0.5", "augment.time_masks=2",
             "augment.time_mask_frames=10", "augment.freq_masks=1", "augment.freq_mask_bins=8"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], AUGMENTED], ids=["plain", "augmented"])
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(tone_data, tmp_path, extra):
    """SIGKILL the trainer mid-epoch (after a mid-epoch checkpoint), resume, and compare with a
    run that was never interrupted: same final weights, same metrics."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_train_cmd(tone_data, tmp_path / "full", *extra), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tone_data, run, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run / "checkpoints" / "step_00000011"  # 8 steps per epoch: step 11 is mid epoch 2
    guard = time.monotonic() + 600  # a hang guard only: the kill waits for the checkpoint, however slow the machine
    while not target.exists() and proc.poll() is None:
        assert time.monotonic() < guard, "no checkpoint at step 11 after 600 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run exited before step 11"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step_00000024").exists(), "the run finished before it was killed"

    subprocess.run(_train_cmd(tone_data, run, *extra, "--resume"), check=True, env=env, capture_output=True)
    assert sha256(run / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    timing = {"data_wait_s", "step_s", "time_s", "data_wait_share"}

    def records(r):
        lines = (r / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]

    assert records(run) == records(tmp_path / "full")  # every step and epoch record, once, in order


def test_loaded_model_embeds_deterministically(tone_data, tmp_path):
    train(tiny_cfg(tone_data, "train.epochs=1"), tmp_path / "run")
    cfg, model = load_model(tmp_path / "run")
    wave = torch.randn(3, 16000)
    a1, a2 = model.embed_audio(wave), model.embed_audio(wave)
    assert torch.equal(a1, a2) and a1.shape == (3, cfg.model.embed_dim)
    assert torch.allclose(a1.norm(dim=1), torch.ones(3))
    t = model.embed_text(["a low tone beeps once", "x"])
    assert t.shape == (2, cfg.model.embed_dim)
