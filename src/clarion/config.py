"""One typed config tree: dataclasses, loaded from YAML, overridden by ``key=value``.

Every run directory holds the resolved tree as ``config.yaml``; loading it back gives the
same tree. Unknown keys and values of the wrong type are errors that name the key, so a
typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .files import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that does not fit the tree (unknown key, wrong type)."""


@dataclass
class AudioConfig:
    sample_rate: int = 16000  # set from the audio encoder when it needs a fixed rate (see load_config)
    clip_seconds: float = 4.0
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    max_seconds: float | None = 600.0  # decode cap: longer files are read up to this length


@dataclass
class DataConfig:
    train: str | None = None
    val: str | None = None
    on_bad_sample: str = "skip"  # skip (log + count) | fail (abort with file:line)
    pairs: str = "all"  # all: every caption row once per epoch | one_per_clip: one random caption per clip
    cache_dir: str | None = None  # on-disk cache of decoded, resampled clips
    num_workers: int = 1
    noise_ratio: float = 0.0  # fraction of training rows whose captions are shuffled among themselves (m-LTM protocol)
    noise_seed: int = 0  # fixed apart from train.seed, so runs with different seeds see the same corrupted pairs
    validate: str = "off"  # run `clarion data check` on train/val before training: off | warn | fail (refuse to start)
    stream: bool | None = None  # stream webdataset shards (data/shards.py); None: when data.train is webdataset:DIR
    shuffle_buffer: int = 1000  # streaming: samples each worker holds for shuffling (0: shard order only)


@dataclass
class ModelConfig:
    audio_encoder: str = "cnn"  # cnn | panns-cnn14 | panns-resnet38 | hf
    text_encoder: str = "transformer"  # transformer | hf | minilm-packaged
    audio_pretrained: str | None = None  # panns-*: official .pth file (None: random init); hf: local dir or cached hub id
    text_pretrained: str | None = None  # hf: local dir or cached hub id (nothing is downloaded)
    panns_width: int = 64  # PANNs channel base (64 = the official size; smaller only for tests / from scratch)
    freeze_audio: bool = False  # no gradients, eval mode (BatchNorm, dropout) for the audio encoder
    freeze_text: bool = False  # the same for the text encoder; projection heads always train
    embed_dim: int = 256
    audio_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # stem, then one block each
    text_width: int = 256
    text_layers: int = 2
    text_heads: int = 4
    text_pooling: str = "mean"  # mean (over the attention mask) | cls; also for hf text encoders
    max_tokens: int = 48  # text truncation length, also for hf text encoders
    vocab_size: int = 2000
    dropout: float = 0.1


@dataclass
class ObjectiveConfig:
    name: str = "infonce"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # the global batch: split over the processes of a torchrun job (train/distributed.py)
    chunk_size: int | None = None  # GradCache: embed this many rows (per process) at a time, exact full-batch gradient; None: off
    lr: float = 1e-3  # projection heads and objective state (and the encoders when encoder_lr is None)
    encoder_lr: float | None = None  # audio and text encoders; None: the same as lr
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (losses stay fp32); ignored on CPU
    log_every: int = 1  # steps between metrics.jsonl records
    drift_every: int = 10  # steps between drift diagnostics (an extra loss-only backward); 0 disables
    collapse_every: int = 10  # steps between feature-collapse statistics of the batch embeddings; 0 disables
    collapse_max_cos: float = 0.9  # collapsed when a modality's mean pairwise cosine exceeds this ...
    collapse_min_rank: float = 2.0  # ... or its effective rank falls below this
    collapse_patience: int = 3  # consecutive collapsed checks (after warm-up) before the warning
    checkpoint_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    max_nonfinite_steps: int = 20  # stop after this many consecutive steps skipped for a non-finite loss or gradient
    eval_batch_size: int = 128


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the tree as YAML, atomically (a temp file renamed over ``path``): a process killed
        mid-write leaves the previous file, never a torn one."""
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field annotation, converting ints to floats."""
    hint = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if hint in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid {annotation}")
    if hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _positive(x: Any) -> bool:
    return x > 0


def _non_negative(x: Any) -> bool:
    return x >= 0


def _optional(check: Any) -> Any:
    return lambda x: x is None or check(x)


# key -> (check, what a valid value is): values that fit the type but cannot work are errors too
# (a config.yaml read from a run directory is as untrusted as any other input)
_RANGES: dict[str, tuple[Any, str]] = {
    "audio.sample_rate": (lambda x: 1000 <= x <= 768_000, "a rate in Hz between 1000 and 768000"),
    "audio.clip_seconds": (lambda x: 0 < x <= 3600, "seconds in (0, 3600]"),
    "audio.n_fft": (lambda x: 2 <= x <= 65536, "between 2 and 65536"),
    "audio.hop_length": (_positive, "positive"),
    "audio.n_mels": (_positive, "positive"),
    "audio.f_min": (_non_negative, ">= 0"),
    "audio.f_max": (_optional(_positive), "positive or null"),
    "audio.max_seconds": (_optional(_positive), "positive seconds or null (no cap)"),
    "data.on_bad_sample": (lambda x: x in ("skip", "fail"), "skip or fail"),
    "data.pairs": (lambda x: x in ("all", "one_per_clip"), "all or one_per_clip"),
    "data.num_workers": (lambda x: 0 <= x <= 1024, "between 0 and 1024"),
    "data.noise_ratio": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "data.shuffle_buffer": (_non_negative, ">= 0"),
    "data.validate": (lambda x: x in ("off", "warn", "fail"), "off, warn or fail"),
    "model.panns_width": (_positive, "positive"),
    "model.embed_dim": (lambda x: 1 <= x <= 65536, "between 1 and 65536"),
    "model.audio_channels": (lambda x: len(x) > 0 and all(c > 0 for c in x), "a non-empty list of positive ints"),
    "model.text_width": (_positive, "positive"),
    "model.text_layers": (_positive, "positive"),
    "model.text_heads": (_positive, "positive"),
    "model.max_tokens": (_positive, "positive"),
    "model.vocab_size": (_positive, "positive"),
    "model.dropout": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "train.epochs": (_non_negative, ">= 0"),
    "train.batch_size": (_positive, "positive"),
    "train.chunk_size": (_optional(_positive), "positive or null"),
    "train.lr": (_non_negative, ">= 0"),
    "train.encoder_lr": (_optional(_non_negative), ">= 0 or null"),
    "train.weight_decay": (_non_negative, ">= 0"),
    "train.warmup_steps": (_non_negative, ">= 0"),
    "train.grad_clip": (_non_negative, ">= 0 (0 disables)"),
    "train.log_every": (_positive, "positive"),
    "train.drift_every": (_non_negative, ">= 0 (0 disables)"),
    "train.collapse_every": (_non_negative, ">= 0 (0 disables)"),
    "train.collapse_patience": (_non_negative, ">= 0"),
    "train.checkpoint_every_steps": (_non_negative, ">= 0 (0: end of epoch only)"),
    "train.max_nonfinite_steps": (_positive, "positive"),
    "train.eval_batch_size": (_positive, "positive"),
}
_MAX_NODES = 100_000  # YAML nodes in a config, counted with aliases expanded ("billion laughs" guard)


def _check_values(cfg: Config) -> None:
    """Raise :class:`ConfigError` naming the first key whose value is out of range or not finite."""
    for key, (check, valid) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not finite; expected {valid}")
        if not check(value):
            raise ConfigError(f"{key}: {value!r} is out of range; expected {valid}")


def _check_size(data: Any, source: object) -> None:
    """Refuse YAML whose alias-expanded tree is absurdly large (it would take unbounded time and
    memory to copy), without expanding it: the walk stops at :data:`_MAX_NODES`."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise ConfigError(f"{source}: more than {_MAX_NODES} values (aliases expanded); not a clarion config")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def config_from_dict(data: dict[str, Any]) -> Config:
    """The tree from plain data; unknown keys, wrong types and out-of-range values raise :class:`ConfigError`."""
    cfg = _build(Config, data, "")
    _check_values(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides (values parsed as YAML).

    ``objective.options.<name>=value`` sets a free-form objective option; a key without a dot is
    shorthand for it (``clarion train --objective mltm partial_mass=0.9``). ``audio.sample_rate``
    then follows the audio encoder when it needs a fixed rate (:func:`resolve_sample_rate`).
    """
    data = Config().to_dict()
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        _check_size(loaded, path)
        _merge(data, loaded, "")
        rate_given = isinstance(loaded, dict) and isinstance(loaded.get("audio"), dict) and "sample_rate" in loaded["audio"]
    else:
        rate_given = False
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = key.strip()
        if "." not in key:
            key = f"objective.options.{key}"
        _set_path(data, key, yaml.safe_load(raw) if raw.strip() else None)
        rate_given = rate_given or key == "audio.sample_rate"
    return resolve_sample_rate(config_from_dict(data), rate_given)


def resolve_sample_rate(cfg: Config, given: bool) -> Config:
    """Make ``audio.sample_rate`` the rate the audio encoder needs (PANNs: 32 kHz; a Hugging Face
    model: its feature extractor's ``sampling_rate``), so the data pipeline decodes and resamples
    to it. When the config gave ``audio.sample_rate`` itself (``given``) and it differs, that is
    an error rather than a silent change. Encoders that build their front end from ``audio.*``
    (``cnn``) leave it alone; so does a Hugging Face model whose files cannot be found here."""
    from .models import required_sample_rate  # models import this module

    rate = required_sample_rate(cfg.model)
    if rate is None or rate == cfg.audio.sample_rate:
        return cfg
    if given:
        raise ConfigError(
            f"audio.sample_rate={cfg.audio.sample_rate} contradicts model.audio_encoder={cfg.model.audio_encoder}, "
            f"which works at {rate} Hz: drop audio.sample_rate (it is then set from the encoder) or set it to {rate}"
        )
    cfg.audio.sample_rate = rate
    return cfg


def _merge(base: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {new!r}")
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "options":
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])} in override {key}")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"cannot set {key}: its parent is not a section")
    node[parts[-1]] = value
