from pathlib import Path

import pytest

from clarion.config import Config, ConfigError, load_config, read_config


def test_defaults_match_the_documented_protocol():
    cfg = Config()
    assert (cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, cfg.audio.n_mels) == (16000, 512, 160, 64)
    assert cfg.model.embed_dim == 256 and cfg.objective.name == "infonce" and cfg.data.on_bad_sample == "skip"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\nobjective:\n  name: siglip\n  options: {init_bias: -5}\n")
    cfg = load_config(path, ["train.lr=3e-4", "model.audio_channels=[8, 16]", "objective.options.init_scale=5", "margin=0.5"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.epochs == 3
    assert cfg.objective.name == "siglip"
    assert cfg.objective.options == {"init_bias": -5, "init_scale": 5, "margin": 0.5}  # a bare key is an option
    assert cfg.model.audio_channels == [8, 16]
    assert isinstance(cfg.audio.clip_seconds, float)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["train.seed=7", "data.cache_dir=/tmp/x", "audio.f_max=7000"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key"),
        ("nosection.x=1", "unknown config key"),
        ("train.epochs=many", "train.epochs: expected int"),
        ("train.amp=3", "expected true/false"),
        ("train.lr=fast", "expected a number"),
        ("model.audio_channels=5", "expected a list"),
        ("train.epochs", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(path)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_builds_its_objective(recipe):
    from clarion.models import load_model_config
    from clarion.objectives import Objective
    from clarion.rundir import build_run_objective

    cfg = load_model_config(recipe)
    assert isinstance(build_run_objective(cfg), Objective)
    assert cfg.train.epochs > 0 and cfg.model.embed_dim > 0
    if cfg.model.audio_encoder.startswith("panns"):
        assert cfg.audio.sample_rate == 32000  # follows the encoder


def test_load_config_is_pure_and_the_model_layer_resolves_the_rate():
    """The config layer knows no encoder: ``load_config`` keeps the rate as written, and
    ``clarion.models.load_model_config`` makes it follow the audio encoder."""
    from clarion.models import load_model_config

    assert load_config(None, ["model.audio_encoder=panns-cnn14"]).audio.sample_rate == 16000
    assert load_model_config(None, ["model.audio_encoder=panns-cnn14"]).audio.sample_rate == 32000


@pytest.mark.parametrize("key, value, expected", [
    ("data.on_bad_sample", "skp", "skip or fail"),
    ("data.pairs", "some", "all or one_per_clip"),
    ("data.validate", "always", "off, warn or fail"),
    ("model.text_pooling", "max", "mean or cls"),
])
def test_enum_like_values_are_checked_once_when_the_tree_is_built(key, value, expected):
    with pytest.raises(ConfigError, match=f"{key}: '{value}' is out of range; expected {expected}"):
        load_config(None, [f"{key}={value}"])


def test_ranges_are_declared_with_their_fields():
    import dataclasses

    from clarion.config import AudioConfig, TrainConfig

    checks = {f.name: f.metadata for f in dataclasses.fields(TrainConfig) if "check" in f.metadata}
    assert checks["batch_size"]["valid"] == "positive" and not checks["batch_size"]["check"](0)
    assert "sample_rate" in {f.name for f in dataclasses.fields(AudioConfig) if "check" in f.metadata}
    with pytest.raises(ConfigError, match="train.batch_size: 0 is out of range; expected positive"):
        load_config(None, ["train.batch_size=0"])


def test_an_override_whose_value_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.freeze_patterns=.*not valid YAML \(found unknown escape character"):
        read_config(None, ['model.freeze_patterns=["a\\.b"]'])
    cfg, _ = read_config(None, ["model.freeze_patterns=['audio_encoder\\.blocks\\.0\\.']"])
    assert cfg.model.freeze_patterns == ["audio_encoder\\.blocks\\.0\\."]
