"""One typed config tree: dataclasses, loaded from YAML, overridden by ``key=value``.

Every run directory holds the resolved tree as ``config.yaml``; loading it back gives the
same tree. Unknown keys and values of the wrong type are errors that name the key, so a
typo in a recipe never silently falls back to a default; so are values outside an enum-like
``Literal`` (checked once, here) and numbers outside the range declared with their field
(:func:`ranged`).

This is the bottom layer: it imports nothing of clarion but :mod:`clarion.files`. Matching
``audio.sample_rate`` to the audio encoder is the model layer's job
(:func:`clarion.models.load_model_config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .files import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that does not fit the tree (unknown key, wrong type)."""


# Enum-like values: declared once here, checked when the tree is built (``_coerce``); the CLI
# takes its ``choices`` from them (:func:`choices`), the data code trusts them.
OnBadSample = Literal["skip", "fail"]  # skip (log + count) | fail (abort with file:line)
Pairs = Literal["all", "one_per_clip"]  # every caption row once per epoch | one random caption per clip
Validate = Literal["off", "warn", "fail"]  # `clarion data check` before training: off | warn | fail (refuse to start)
TextPooling = Literal["mean", "cls"]  # mean over the attention mask | the first token
# projection heads: clarion's skip + MLP | msclap's Projection (clarion convert msclap-2022)
ProjectionHead = Literal["mlp", "msclap"]
# training arithmetic: auto (bf16 autocast on CUDA when train.amp, else fp32) | fp32 | bf16 (autocast, CPU too)
# | fp16 (autocast + a gradient scaler)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LiveLogger = Literal["tensorboard", "wandb"]  # train.log_to: where step and epoch records also go
LongAudio = Literal["first", "windows"]  # inference on a long file: its first clip_seconds | every window, pooled
WindowPool = Literal["mean", "max"]  # how window embeddings become one clip embedding
# a clip shorter than its window: zeros (pad at the end) | repeat (tile it whole, then zeros: LAION-CLAP's repeatpad)
PadMode = Literal["zeros", "repeat"]


def choices(kind: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type above, e.g. ``choices(OnBadSample) == ("skip", "fail")``."""
    return typing.get_args(kind)


def _positive(x: Any) -> bool:
    return x > 0


def _non_negative(x: Any) -> bool:
    return x >= 0


def _optional(check: Any) -> Any:
    return lambda x: x is None or check(x)


def _valid_patterns(patterns: list[str]) -> bool:
    try:
        for pattern in patterns:
            re.compile(pattern)
    except re.error:
        return False
    return True


def ranged(check: Callable[[Any], bool], valid: str, **kwargs: Any) -> Any:
    """A dataclass field whose value must also pass ``check`` (``valid`` says what passes): values
    that fit the type but cannot work are errors too (a config.yaml read from a run directory is
    as untrusted as any other input)."""
    return field(metadata={"check": check, "valid": valid}, **kwargs)


@dataclass
class AudioConfig:
    # set from the audio encoder when it needs a fixed rate (clarion.models.resolve_sample_rate)
    sample_rate: int = ranged(lambda x: 1000 <= x <= 768_000, "a rate in Hz between 1000 and 768000", default=16000)
    clip_seconds: float = ranged(lambda x: 0 < x <= 3600, "seconds in (0, 3600]", default=4.0)
    n_fft: int = ranged(lambda x: 2 <= x <= 65536, "between 2 and 65536", default=512)
    hop_length: int = ranged(_positive, "positive", default=160)
    n_mels: int = ranged(_positive, "positive", default=64)
    f_min: float = ranged(_non_negative, ">= 0", default=0.0)
    f_max: float | None = ranged(_optional(_positive), "positive or null", default=None)
    # decode cap: longer files are read up to this length
    max_seconds: float | None = ranged(_optional(_positive), "positive seconds or null (no cap)", default=600.0)
    # how a clip (or window) shorter than clip_seconds is filled; hf-clap: follows its feature extractor
    pad: PadMode = "zeros"
    # inference only (evaluation, clarion.load, embed, index build); training always crops clip_seconds.
    # first: the first clip_seconds, zero-padded; windows: the whole file (streamed, max_seconds does not
    # apply) cut into windows, each embedded, pooled into one embedding (clarion.audio.windows)
    long: LongAudio = "first"
    window_seconds: float | None = ranged(_optional(lambda x: 0 < x <= 3600), "seconds in (0, 3600] or null (clip_seconds)",
                                          default=None)
    hop_seconds: float | None = ranged(_optional(lambda x: 0 < x <= 3600), "seconds in (0, 3600] or null (the window)",
                                       default=None)
    pool: WindowPool = "mean"  # mean: mean of the unit window embeddings, re-normalised | max: per-dimension max


@dataclass
class DataConfig:
    train: str | None = None
    val: str | None = None
    on_bad_sample: OnBadSample = "skip"  # skip (log + count) | fail (abort with file:line)
    pairs: Pairs = "all"  # all: every caption row once per epoch | one_per_clip: one random caption per clip
    cache_dir: str | None = None  # on-disk cache of decoded, resampled clips
    num_workers: int = ranged(lambda x: 0 <= x <= 1024, "between 0 and 1024", default=1)
    # fraction of training rows whose captions are shuffled among themselves (m-LTM protocol)
    noise_ratio: float = ranged(lambda x: 0 <= x < 1, "in [0, 1)", default=0.0)
    noise_seed: int = 0  # fixed apart from train.seed, so runs with different seeds see the same corrupted pairs
    validate: Validate = "off"  # run `clarion data check` on train/val before training: off | warn | fail (refuse to start)
    stream: bool | None = None  # stream webdataset shards (clarion.data.shards); None: when data.train is webdataset:DIR
    # streaming: samples each worker holds for shuffling (0: shard order only)
    shuffle_buffer: int = ranged(_non_negative, ">= 0", default=1000)


@dataclass
class ModelConfig:
    audio_encoder: str = "cnn"  # cnn | panns-cnn14 | panns-resnet38 | hf | hf-clap
    text_encoder: str = "transformer"  # transformer | hf | minilm-packaged | hf-clap
    audio_pretrained: str | None = None  # panns-*: official .pth file (None: random init); hf: local dir or cached hub id
    text_pretrained: str | None = None  # hf: local dir or cached hub id (nothing is downloaded)
    # hf-clap (either tower): a full Hugging Face ClapModel folder or cached hub id; both towers,
    # both projection heads and the objective's initial temperature come from it
    clap_pretrained: str | None = None
    # PANNs channel base (64 = the official size; smaller only for tests / from scratch)
    panns_width: int = ranged(_positive, "positive", default=64)
    freeze_audio: bool = False  # no gradients, eval mode (BatchNorm, dropout) for the audio encoder
    freeze_text: bool = False  # the same for the text encoder; projection heads always train
    # freeze the stem/embeddings and the first N blocks of a tower (clarion.models.freeze); 0: none
    freeze_audio_layers: int = ranged(_non_negative, ">= 0", default=0)
    freeze_text_layers: int = ranged(_non_negative, ">= 0", default=0)
    # regular expressions (re.search) over parameter names (audio_encoder.…, text_encoder.…, *_projection.…)
    freeze_patterns: list[str] = ranged(_valid_patterns, "a list of valid regular expressions", default_factory=list)
    embed_dim: int = ranged(lambda x: 1 <= x <= 65536, "between 1 and 65536", default=256)
    # stem, then one block each
    audio_channels: list[int] = ranged(lambda x: len(x) > 0 and all(c > 0 for c in x), "a non-empty list of positive ints",
                                       default_factory=lambda: [16, 32, 64, 128, 256])
    text_width: int = ranged(_positive, "positive", default=256)
    text_layers: int = ranged(_positive, "positive", default=2)
    text_heads: int = ranged(_positive, "positive", default=4)
    text_pooling: TextPooling = "mean"  # mean (over the attention mask) | cls; also for hf text encoders
    max_tokens: int = ranged(_positive, "positive", default=48)  # text truncation length, also for hf text encoders
    vocab_size: int = ranged(_positive, "positive", default=2000)
    dropout: float = ranged(lambda x: 0 <= x < 1, "in [0, 1)", default=0.1)
    head: ProjectionHead = "mlp"  # both projection heads: mlp (skip + MLP) | msclap (its Projection, for converted msclap models)


@dataclass
class ObjectiveConfig:
    name: str = "infonce"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = ranged(_non_negative, ">= 0", default=10)
    # the global batch: split over the processes of a torchrun job (train/distributed.py)
    batch_size: int = ranged(_positive, "positive", default=64)
    # GradCache: embed this many rows (per process) at a time, exact full-batch gradient; None: off
    chunk_size: int | None = ranged(_optional(_positive), "positive or null", default=None)
    # projection heads and objective state (and the encoders when encoder_lr is None)
    lr: float = ranged(_non_negative, ">= 0", default=1e-3)
    # audio and text encoders; None: the same as lr
    encoder_lr: float | None = ranged(_optional(_non_negative), ">= 0 or null", default=None)
    # one tower's rate; None: encoder_lr (then lr)
    audio_encoder_lr: float | None = ranged(_optional(_non_negative), ">= 0 or null", default=None)
    text_encoder_lr: float | None = ranged(_optional(_non_negative), ">= 0 or null", default=None)
    # the first K optimiser steps train the heads only (encoder gradients dropped), then the
    # encoders' rates ramp linearly from 0 over encoder_warmup_steps (on top of warmup_cosine)
    encoder_freeze_steps: int = ranged(_non_negative, ">= 0", default=0)
    encoder_warmup_steps: int = ranged(_non_negative, ">= 0", default=0)
    weight_decay: float = ranged(_non_negative, ">= 0", default=0.01)
    warmup_steps: int = ranged(_non_negative, ">= 0", default=100)
    grad_clip: float = ranged(_non_negative, ">= 0 (0 disables)", default=1.0)  # max global grad norm; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (losses stay fp32); ignored on CPU; train.precision other than auto wins
    precision: Precision = "auto"  # auto (= train.amp) | fp32 | bf16 | fp16 (with a gradient scaler)
    # also send step and epoch records to TensorBoard (RUN/tensorboard/) and/or W&B (offline unless configured)
    log_to: list[LiveLogger] = field(default_factory=list)
    log_every: int = ranged(_positive, "positive", default=1)  # steps between metrics.jsonl records
    # steps between drift diagnostics (an extra loss-only backward); 0 disables
    drift_every: int = ranged(_non_negative, ">= 0 (0 disables)", default=10)
    # steps between feature-collapse statistics of the batch embeddings; 0 disables
    collapse_every: int = ranged(_non_negative, ">= 0 (0 disables)", default=10)
    collapse_max_cos: float = 0.9  # collapsed when a modality's mean pairwise cosine exceeds this ...
    collapse_min_rank: float = 2.0  # ... or its effective rank falls below this
    # consecutive collapsed checks (after warm-up) before the warning
    collapse_patience: int = ranged(_non_negative, ">= 0", default=3)
    # 0: checkpoint at the end of each epoch only
    checkpoint_every_steps: int = ranged(_non_negative, ">= 0 (0: end of epoch only)", default=0)
    # stop after this many consecutive steps skipped for a non-finite loss or gradient
    max_nonfinite_steps: int = ranged(_positive, "positive", default=20)
    eval_batch_size: int = ranged(_positive, "positive", default=128)


@dataclass
class AugmentConfig:
    """Training-only augmentation; every key's default leaves it off (docs/methods.md, "Augmentation")."""

    # random gain: each training clip scaled by g ~ U[-gain_db, gain_db] dB
    gain_db: float = ranged(lambda x: 0 <= x <= 60, "dB in [0, 60]", default=0.0)
    # circular time shift of each training clip by up to this many seconds either way
    shift_seconds: float = ranged(_non_negative, ">= 0", default=0.0)
    # mixup: row i of the batch becomes λ_i x_i + (1 - λ_i) x_(B-1-i), λ_i ~ Beta(α, α); 0 disables
    mixup_alpha: float = ranged(_non_negative, ">= 0 (0 disables)", default=0.0)
    # SpecAugment on the log-mel (cnn and panns-* towers): masks per clip and their maximum width
    time_masks: int = ranged(_non_negative, ">= 0", default=0)
    time_mask_frames: int = ranged(_non_negative, ">= 0 (frames)", default=0)
    freq_masks: int = ranged(_non_negative, ">= 0", default=0)
    freq_mask_bins: int = ranged(_non_negative, ">= 0 (mel bins)", default=0)

    @property
    def spec_augment(self) -> bool:
        return (self.time_masks > 0 and self.time_mask_frames > 0) or (self.freq_masks > 0 and self.freq_mask_bins > 0)


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # absent from older run directories: all off

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
    if hint is Literal:
        if not isinstance(value, str) or value not in args:
            valid = ", ".join(args[:-1]) + " or " + args[-1]
            raise ConfigError(f"{key}: {value!r} is out of range; expected {valid}")
        return value
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
        if isinstance(value, str) and (args[0] is str or typing.get_origin(args[0]) is Literal):
            value = [part.strip() for part in value.split(",") if part.strip()]  # train.log_to=tensorboard,wandb
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


_MAX_NODES = 100_000  # YAML nodes in a config, counted with aliases expanded ("billion laughs" guard)


def _check_values(cfg: Config) -> None:
    """Raise :class:`ConfigError` naming the first key whose value is out of range (the ``check``
    declared with its field by :func:`ranged`) or not finite."""
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            if "check" not in f.metadata:
                continue
            key, value, valid = f"{section.name}.{f.name}", getattr(part, f.name), f.metadata["valid"]
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}: {value!r} is not finite; expected {valid}")
            if not f.metadata["check"](value):
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


def read_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, bool]:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides (values parsed as YAML).

    ``objective.options.<name>=value`` sets a free-form objective option; a key without a dot is
    shorthand for it (``clarion train --objective mltm partial_mass=0.9``). Returns the tree and
    whether ``audio.sample_rate`` was given (by the file or an override): the model layer then
    makes the rate follow the audio encoder (:func:`clarion.models.resolve_sample_rate`), which
    this layer knows nothing about. :func:`read_config_keys` returns every key given.
    """
    cfg, given = read_config_keys(path, overrides)
    return cfg, "audio.sample_rate" in given


def _given_keys(data: Any, prefix: str) -> set[str]:
    """Dotted keys of a nested mapping, leaves and sections (``{"a": {"b": 1}}`` → a, a.b)."""
    keys: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            keys.add(f"{prefix}{key}")
            keys |= _given_keys(value, f"{prefix}{key}.")
    return keys


def read_config_keys(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Config, frozenset[str]]:
    """:func:`read_config`'s tree and the dotted keys the file or the overrides gave
    (``objective.options.init_temperature``, ``model.embed_dim``, …), so the model layer can make
    settings that were not given follow a pretrained model and refuse ones that contradict it."""
    data = Config().to_dict()
    given: set[str] = set()
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        _check_size(loaded, path)
        _merge(data, loaded, "")
        given |= _given_keys(loaded, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = key.strip()
        if "." not in key:
            key = f"objective.options.{key}"
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(
                f"override {item!r}: its value is not valid YAML ({reason}); quote it with single quotes "
                f"(key='...') so backslashes stay literal"
            ) from None
        _set_path(data, key, value)
        given |= {key} | _given_keys(value, key + ".")
    return config_from_dict(data), frozenset(given)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The tree of :func:`read_config`, as written (``audio.sample_rate`` not yet matched to the
    audio encoder: :func:`clarion.models.load_model_config` does that)."""
    return read_config(path, overrides)[0]


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
