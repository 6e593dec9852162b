from pathlib import Path

import pytest

from clarion.config import Config, ConfigError, load_config


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
    from clarion.rundir import build_run_objective

    from clarion.objectives import Objective

    cfg = load_config(recipe)
    assert isinstance(build_run_objective(cfg), Objective)
    assert cfg.train.epochs > 0 and cfg.model.embed_dim > 0
    if cfg.model.audio_encoder.startswith("panns"):
        assert cfg.audio.sample_rate == 32000  # follows the encoder
