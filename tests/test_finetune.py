"""Fine-tuning controls (per-tower learning rates, encoder freeze/warm-up steps, freezing by
block or name pattern) and training precision (bf16 autocast, fp16 with a gradient scaler)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clarion.config import ConfigError, load_config
from clarion.data.loaders import collate
from clarion.data.manifest import read_manifest
from clarion.models import build_model, load_model_config, train_tokenizer
from clarion.models.freeze import freeze_layers, tower_blocks
from clarion.rundir import build_run_objective, sha256
from clarion.train.loop import Trainer, seed_everything, train
from clarion.train.schedule import build_optimizer, group_schedule

from conftest import TINY

CAPTIONS = ["a low tone beeps once", "a high tone beeps twice", "a dog barks", "rain on a roof"]


def _cfg(data, *extra):
    return load_config(None, [*TINY, f"data.train={data['train']}", f"data.val={data['val']}", "train.batch_size=16", *extra])


def _trainer(data, run: Path, *extra) -> Trainer:
    cfg = _cfg(data, *extra)
    seed_everything(0)
    train_set = read_manifest(cfg.data.train)
    model = build_model(cfg, train_tokenizer(train_set.captions, cfg.model.vocab_size))
    return Trainer(cfg, run, model, build_run_objective(cfg), train_set, None, torch.device("cpu"), None)


def _batch(trainer: Trainer, first: int = 0) -> dict:
    return collate([trainer.dataset[i] for i in range(first, first + 16)])


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------
# learning rates per group


def test_group_learning_rates_follow_per_tower_rates_and_the_encoder_schedule():
    cfg = load_model_config(None, [*TINY, "train.lr=0.003", "train.audio_encoder_lr=0.0001", "train.encoder_lr=0.0005",
                                   "train.warmup_steps=2", "train.encoder_freeze_steps=3", "train.encoder_warmup_steps=2"])
    model = build_model(cfg, train_tokenizer(CAPTIONS, 100))
    objective = build_run_objective(cfg)
    optimizer = build_optimizer(cfg, model, objective)
    roles = [g["role"] for g in optimizer.param_groups]
    assert roles == ["heads", "heads", "audio", "audio", "text", "text"]
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {rate[id(p)] for p in model.audio_encoder.parameters()} == {0.0001}
    assert {rate[id(p)] for p in model.text_encoder.parameters()} == {0.0005}  # text_encoder_lr null -> encoder_lr
    heads = [*model.audio_projection.parameters(), *model.text_projection.parameters(), *objective.parameters()]
    assert {rate[id(p)] for p in heads} == {0.003}

    total = 20
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_schedule(cfg, roles, total))

    def cosine(s):  # warm-up 2 steps, then cosine to 0 at step 20, written out
        return (s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 18))

    ramp = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0}  # frozen 3 steps, then 2 warm-up steps
    for s in range(12):
        lrs = [g["lr"] for g in optimizer.param_groups]
        r = ramp.get(s, 1.0)
        expected = [0.003 * cosine(s)] * 2 + [0.0001 * cosine(s) * r] * 2 + [0.0005 * cosine(s) * r] * 2
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15), s
        optimizer.step()
        scheduler.step()


def test_old_configs_keep_their_optimizer_layouts():
    base = [*TINY, "train.lr=0.003"]
    for extra, roles, rates in (
        ([], ["heads", "heads"], [0.003, 0.003]),  # checkpoints from before encoder_lr
        (["train.encoder_lr=0.001"], ["heads", "heads", "encoders", "encoders"], [0.003, 0.003, 0.001, 0.001]),
        (["train.text_encoder_lr=0.002"], ["heads", "heads", "audio", "audio", "text", "text"],
         [0.003, 0.003, 0.003, 0.003, 0.002, 0.002]),  # audio: encoder_lr null -> lr
    ):
        cfg = load_model_config(None, base + extra)
        groups = build_optimizer(cfg, build_model(cfg, train_tokenizer(CAPTIONS, 100)), build_run_objective(cfg)).param_groups
        assert [g["role"] for g in groups] == roles and [g["lr"] for g in groups] == rates, extra


# ------------------------------------------------------------------------------------------
# freezing


def test_frozen_blocks_and_patterns_keep_their_weights_while_the_rest_trains(tone_data, tmp_path):
    trainer = _trainer(tone_data, tmp_path, "model.freeze_audio_layers=1", r"model.freeze_patterns=['text_projection\.skip']",
                       "train.warmup_steps=1")
    model = trainer.model
    frozen_prefixes = ("audio_encoder.mel_norm.", "audio_encoder.stem.", "audio_encoder.blocks.0.", "text_projection.skip.")
    names = dict(model.named_parameters())
    frozen = {k for k in names if k.startswith(frozen_prefixes)}
    assert frozen and {k for k, p in names.items() if not p.requires_grad} == frozen
    n_frozen = sum(names[k].numel() for k in frozen)
    assert (trainer.freezing.frozen, trainer.freezing.trainable) == (n_frozen, sum(p.numel() for p in model.parameters()) - n_frozen)
    assert all(id(p) not in {id(q) for q in trainer.trainable} for k, p in names.items() if k in frozen)

    before = _weights(model)
    for first in (0, 16, 32):
        assert trainer.train_step(_batch(trainer, first)) is not None
    assert not model.audio_encoder.stem.training and not model.audio_encoder.blocks[0].training  # held in eval
    assert model.audio_encoder.blocks[1].training and model.text_encoder.training
    after = _weights(model)
    for key in before:  # weights and BatchNorm statistics of the frozen parts
        if key.startswith(frozen_prefixes):
            assert torch.equal(before[key], after[key]), key
    for prefix in ("audio_encoder.blocks.1.", "text_encoder.", "audio_projection.", "text_projection.mlp."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix


def test_bad_freezing_options_are_clear_errors(tone_data, tmp_path):
    cfg = _cfg(tone_data, "model.freeze_audio_layers=3")  # audio_channels [8,16,32]: stem + 2 blocks
    with pytest.raises(ConfigError, match=r"freeze_audio_layers=3, but the audio encoder \(CnnAudioEncoder\) has 2 blocks"):
        train(cfg, tmp_path / "too_many")
    cfg = _cfg(tone_data, "model.freeze_patterns=['audio_encoder\\.nope']")
    with pytest.raises(ConfigError, match=r"'audio_encoder\\\\.nope' matches no parameter name"):
        train(cfg, tmp_path / "no_match")
    with pytest.raises(ConfigError, match="valid regular expressions"):
        load_config(None, ["model.freeze_patterns=['(']"])


def test_block_definitions_per_tower_type():
    from clarion.models.panns import Cnn14, ResNet38

    cfg = load_model_config(None, TINY)
    model = build_model(cfg, train_tokenizer(CAPTIONS, 100))
    assert tower_blocks(model.audio_encoder) == (["blocks.0", "blocks.1"], ["mel_norm", "stem"])
    assert tower_blocks(model.text_encoder) == (["transformer.layers.0"], ["token_embedding", "position_embedding"])
    assert tower_blocks(Cnn14(4))[0] == [f"conv_block{i}" for i in range(1, 7)]
    assert tower_blocks(ResNet38(4))[0] == ["conv_block1", "resnet.layer1", "resnet.layer2", "resnet.layer3",
                                             "resnet.layer4", "conv_block_after1"]
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                          num_attention_heads=2, intermediate_size=32))
    blocks, stem = tower_blocks(bert)
    assert blocks == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    assert stem and all(name.startswith("embeddings.") for name in stem)
    assert {n for n, _ in bert.named_parameters() if n.startswith("embeddings.")} == set(stem)
    htsat = transformers.ClapAudioModel(transformers.ClapAudioConfig(
        depths=[1, 1], num_attention_heads=[1, 2], hidden_size=16, patch_embeds_hidden_size=8, spec_size=64,
        num_mel_bins=16, window_size=4, patch_stride=(4, 4), projection_dim=8))
    blocks, stem = tower_blocks(htsat)
    assert blocks == ["audio_encoder.layers.0", "audio_encoder.layers.1"]  # HTSAT's stages
    assert any(".patch_embed." in n for n in stem) and any(".batch_norm." in n for n in stem)
    assert not any(n.startswith("audio_encoder.norm.") for n in stem)  # after the last stage: not the stem


def test_hf_text_tower_freezes_its_embeddings_and_first_layers():
    transformers = pytest.importorskip("transformers")
    from clarion.models.dual import DualEncoder
    from clarion.models.hf import HfTextEncoder

    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                          num_attention_heads=2, intermediate_size=32))
    cfg = load_model_config(None, [*TINY, "model.freeze_text_layers=2"])
    audio = build_model(cfg, train_tokenizer(CAPTIONS, 100)).audio_encoder
    model = DualEncoder(audio, HfTextEncoder(bert, None, 16, "cls", "tiny"), 8)
    summary = freeze_layers(model, cfg.model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    prefix = "text_encoder.model."
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith((prefix + "embeddings.", prefix + "encoder.layer.0.", prefix + "encoder.layer.1."))}
    assert summary.frozen == sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    assert "text encoder: stem + first 2 of 3 blocks" in summary.line()


# ------------------------------------------------------------------------------------------
# encoder freeze and warm-up steps


def test_encoder_freeze_steps_train_the_heads_only_and_leave_encoder_moments_alone(tone_data, tmp_path):
    trainer = _trainer(tone_data, tmp_path, "train.encoder_freeze_steps=2", "train.warmup_steps=1")
    model = trainer.model
    encoders = [*model.audio_encoder.parameters(), *model.text_encoder.parameters()]
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for first in (0, 16):
        assert trainer.train_step(_batch(trainer, first)) is not None
        trainer.state.step += 1  # what fit does after a step
    now = dict(model.named_parameters())
    for name, value in before.items():
        unchanged = torch.equal(value, now[name])
        assert unchanged == name.startswith(("audio_encoder.", "text_encoder.")), name
    assert all(p not in trainer.optimizer.state for p in encoders)  # no AdamW moments or step counts yet
    assert trainer.train_step(_batch(trainer, 32)) is not None  # step 3: the encoders train
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("audio_encoder."))
    assert all(trainer.optimizer.state[p]["step"] == 1 for p in encoders)


# ------------------------------------------------------------------------------------------
# precision


def test_bf16_run_trains_on_cpu_with_finite_losses(tone_data, tmp_path):
    summary = train(_cfg(tone_data, "train.precision=bf16", "train.epochs=3"), tmp_path / "run")
    assert summary["step"] == 12 and summary["nonfinite_steps"] == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "step"]
    assert len(losses) == 12 and all(np.isfinite(losses))
    epochs = [r["train_loss"] for r in records if r["type"] == "epoch"]
    assert epochs[-1] < epochs[0]


def test_fp16_overflow_is_the_scalers_business_and_a_nan_loss_the_guards(tone_data, tmp_path):
    trainer = _trainer(tone_data, tmp_path, "train.precision=fp16", "train.max_nonfinite_steps=3")
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    hit = {"inf_grad_at": 1, "nan_loss_at": 3}  # once each, at the first attempt of the step after these many steps

    def due(what: str) -> bool:
        if trainer.state.step != hit[what]:
            return False
        hit[what] = None
        return True

    weight = trainer.model.audio_projection.skip.weight
    weight.register_hook(lambda g: torch.full_like(g, math.inf) if due("inf_grad_at") else g)
    trainer.model.text_projection.register_forward_hook(lambda m, i, out: out * math.nan if due("nan_loss_at") else out)

    def step(first):
        result = trainer.train_step(_batch(trainer, first))
        if result is not None:
            trainer.state.step += 1
        return result

    assert step(0)["loss_scale"] == 65536.0  # step 1
    before = _weights(trainer.model)
    assert step(16) is None  # inf gradient at scale 65536: the scaler skips it
    assert trainer.scaler.get_scale() == 32768.0
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())  # nothing changed
    st = trainer.state
    assert (st.overflow_steps, st.nonfinite_steps, st.nonfinite_streak) == (1, 0, 0)
    result = step(16)  # training continues at the lower scale
    assert result is not None and result["loss_scale"] == 32768.0 and st.step == 2
    assert step(32) is not None and st.step == 3
    assert step(0) is None  # NaN loss: the guard's, counted
    assert (st.overflow_steps, st.nonfinite_steps, st.nonfinite_streak) == (1, 1, 1)
    assert trainer.scaler.get_scale() == 32768.0  # the scaler did not see it

    hit["nan_loss_at"], hit["inf_grad_at"] = None, st.step
    trainer.scaler.update(1.0)  # at scale 1 an inf gradient is not an fp16 overflow: the guard counts it
    assert step(0) is None
    assert (st.overflow_steps, st.nonfinite_steps, st.nonfinite_streak) == (1, 2, 2)


def test_fp16_scaler_state_is_checkpointed_and_restored(tone_data, tmp_path):
    trainer = _trainer(tone_data, tmp_path, "train.precision=fp16")
    assert trainer.train_step(_batch(trainer)) is not None
    trainer.state.step += 1
    trainer.scaler.update(1024.0)
    trainer.checkpoint()
    meta = json.loads(next((tmp_path / "checkpoints").glob("step_*/state.json")).read_text())
    assert meta["scaler"]["scale"] == 1024.0
    resumed = _trainer(tone_data, tmp_path, "train.precision=fp16")
    assert resumed.scaler.get_scale() == 65536.0 and resumed.resume()
    assert resumed.scaler.get_scale() == 1024.0 and resumed.scaler.state_dict() == trainer.scaler.state_dict()


def test_precision_overrides_amp_and_auto_keeps_its_meaning():
    from clarion.runtime import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", True, cpu) == "fp32" and resolve_precision("auto", True, cuda) == "bf16"
    assert resolve_precision("auto", False, cuda) == "fp32"
    assert resolve_precision("fp16", True, cuda) == "fp16" and resolve_precision("bf16", False, cpu) == "bf16"
    assert load_config(None, []).train.precision == "auto"  # old config.yaml files (amp only) load as before


# ------------------------------------------------------------------------------------------
# exact resume with the new options

FINETUNE = ["train.audio_encoder_lr=0.001", "train.text_encoder_lr=0.002", "train.encoder_freeze_steps=3",
            "train.encoder_warmup_steps=4", "model.freeze_audio_layers=1", "train.precision=fp16"]


def test_resume_with_finetune_options_and_fp16_reproduces_the_run(tone_data, tmp_path):
    cfg = _cfg(tone_data, "train.epochs=3", *FINETUNE)
    train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "rolled")
    checkpoints = tmp_path / "rolled" / "checkpoints"
    shutil.rmtree(max(checkpoints.glob("step_*")))  # the end of epoch 3: resume from the end of epoch 2
    kept = max(checkpoints.glob("step_*"))
    (checkpoints / "latest").write_text(kept.name + "\n")
    meta = json.loads((kept / "state.json").read_text())
    assert meta["training"]["epoch"] == 2 and meta["scaler"]["scale"] == 65536.0 * 0.5 ** meta["training"]["overflow_steps"]
    assert [g.pop("role") for g in meta["optimizer"]["param_groups"]] == ["heads", "heads", "audio", "audio", "text", "text"]
    (kept / "state.json").write_text(json.dumps(meta))  # as checkpoints written before groups had roles
    train(cfg, tmp_path / "rolled", resume=True)
    assert sha256(tmp_path / "rolled" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    timing = {"data_wait_s", "step_s", "time_s", "data_wait_share"}

    def records(run):
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "rolled") == records(tmp_path / "full")


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_with_the_encoder_schedule_matches_uninterrupted_run(tone_data, tmp_path):
    """SIGKILL during the encoders' warm-up (after a mid-epoch checkpoint), resume: the same
    weights and metrics as a run never interrupted (per-group LRs, scaler, frozen blocks)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    extra = [*FINETUNE, "train.encoder_freeze_steps=6", "train.encoder_warmup_steps=8"]

    def cmd(run, *more):
        return [sys.executable, "-m", "clarion.cli", "train", "--train", str(tone_data["train"]), "--val",
                str(tone_data["val"]), "--out", str(run), "-q", *TINY, "train.batch_size=8", "train.epochs=2",
                "train.checkpoint_every_steps=1", *extra, *more]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run / "checkpoints" / "step_00000009"  # 8 steps per epoch: mid epoch 2, inside the warm-up
    guard = time.monotonic() + 600  # a hang guard only
    while not target.exists() and proc.poll() is None:
        assert time.monotonic() < guard, "no checkpoint at step 9 after 600 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run exited before step 9"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "step_00000016").exists(), "the run finished before it was killed"
    subprocess.run(cmd(run, "--resume"), check=True, env=env, capture_output=True)
    assert sha256(run / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    timing = {"data_wait_s", "step_s", "time_s", "data_wait_share"}

    def records(r):
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in (r / "metrics.jsonl").read_text().splitlines()]

    full = records(tmp_path / "full")
    assert records(run) == full
    steps = [r for r in full if r["type"] == "step"]
    ramp = [r["lr_audio"] / r["lr"] / (0.001 / 0.003) for r in steps]  # the logged rate is the next one's:
    expected = [0.0 if s < 6 else min(1.0, (s - 5) / 8) for s in (r["step"] for r in steps)]  # that of step s + 1
    assert ramp == pytest.approx(expected) and 0 < ramp[7] < 1
