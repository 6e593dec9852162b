"""A pretrained Hugging Face CLAP (``ClapModel``) as clarion's starting model (``hf-clap``).

``model.audio_encoder=hf-clap`` / ``model.text_encoder=hf-clap`` with ``model.clap_pretrained``
(a local ``save_pretrained`` folder or a hub id already in the local cache; nothing is
downloaded) take from the one checkpoint:

- audio tower: ``ClapAudioModel`` (HTSAT) → ``pooler_output`` [B, audio hidden_size],
- text tower: ``ClapTextModel`` (RoBERTa) → ``pooler_output`` [B, text hidden_size], with
  CLAP's own tokenizer,
- projection heads: CLAP's ``audio_projection`` / ``text_projection`` (Linear → ReLU → Linear
  to ``projection_dim``), which :class:`clarion.models.DualEncoder` uses instead of its own, so
  ``a = normalize(audio_projection(pooler))`` is exactly ``ClapModel.get_audio_features`` (and
  the same for text) at step 0.

Audio front end (the CLAP feature extractor, on the CPU), per clip of n samples, with
``W = nb_max_samples`` the model window (10 s at 48 kHz for LAION's checkpoints):

- n ≤ W: the extractor pads (``repeatpad`` for LAION) and computes the log-mel; nothing random.
  clarion's pipeline has already filled the clip to ``audio.clip_seconds`` by then, the same way
  (``audio.pad`` follows the extractor's ``padding``: :func:`clap_settings`).
  A fused model gets the four identical channels with ``is_longer = False``. (The HF extractor
  flips one clip of a batch with no long clip to ``is_longer = True`` at random, a training
  device of LAION's; clarion never does: a clip's embedding never depends on its batch-mates.)
- n > W, unfused: a window of W samples is cut, at 0 when the tower is in eval mode, at a
  uniform offset drawn from torch's global generator in training (seeded, checkpointed and
  replayed by GradCache, so a resumed run draws the same). The extractor then sees exactly W.
- n > W, fused: the log-mel of the whole clip, shrunk to the window's frame count, plus three
  window-long mel chunks whose starts are drawn from the front, middle and back thirds of the
  valid starts, with ``is_longer = True`` (HF's ``_random_mel_fusion``). The draws come from a
  ``numpy.random.RandomState`` made for the call: seed 0 for every clip in eval mode (the chunks
  HF's extractor picks after ``np.random.seed(0)`` for that clip alone), a seed drawn from
  torch's global generator in training. So inference is deterministic and HF's global numpy
  RNG is never touched.

Run directories keep ``RUN/audio_encoder/`` (the full ``config.json`` of the ClapModel +
``preprocessor_config.json``) and ``RUN/text_encoder/`` (``config.json`` + tokenizer files); the
weights live in the run's ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from .hf import (
    HfLoadError, _check_loading, _offline, _saved_dir, _source, _transformers, feature_extractor_settings, local_file,
    read_json,
)

CLAP_PREFIX = "hf-clap:"
_SCOPE: dict[str, Any] | None = None  # ClapModels read while one build_model call runs


def is_clap_spec(value: object) -> bool:
    """True for ``hf-clap:PATH`` (a pretrained CLAP used as a model without training)."""
    return isinstance(value, (str, Path)) and str(value).startswith(CLAP_PREFIX)


def clap_spec_source(spec: str | Path) -> str:
    source = str(spec)[len(CLAP_PREFIX):]
    if not source:
        raise ValueError(f"{spec!r}: give the CLAP folder or cached hub id after {CLAP_PREFIX!r}")
    return source


# ---------------------------------------------------------------------------------------------
# reading the checkpoint's settings without building it


def clap_settings(name: str) -> dict[str, Any] | None:
    """What the config resolution needs from a CLAP folder, read from its JSON files without
    transformers: ``projection_dim``, ``sample_rate``, ``window_seconds`` (the model window),
    ``pad`` (how its extractor fills a short clip: ``repeatpad`` → ``repeat``, ``pad`` → ``zeros``),
    ``max_tokens`` (text positions: ``max_position_embeddings − 2``, RoBERTa's offset).
    None when the folder (or its ``config.json``) cannot be found here; :class:`ConfigError` when
    it holds another kind of model."""
    config = read_json(name, "config.json")
    if config is None:
        return None
    if config.get("model_type") != "clap":
        raise ConfigError(
            f"model.clap_pretrained={name} holds a {config.get('model_type')!r} model, not a full ClapModel (model_type 'clap')"
        )
    settings: dict[str, Any] = {"projection_dim": int(config.get("projection_dim", 512))}
    positions = (config.get("text_config") or {}).get("max_position_embeddings")
    if isinstance(positions, int) and positions > 2:
        settings["max_tokens"] = positions - 2
    pre = feature_extractor_settings(name)
    if isinstance(pre.get("sampling_rate"), (int, float)):
        settings["sample_rate"] = int(pre["sampling_rate"])
        if isinstance(pre.get("max_length_s"), (int, float)):
            settings["window_seconds"] = float(pre["max_length_s"])
    if pre.get("padding") in ("repeatpad", "pad"):  # the extractor's own fill of a short clip
        settings["pad"] = "repeat" if pre["padding"] == "repeatpad" else "zeros"
    return settings


def clap_logit_scale(name: str) -> float | None:
    """``logit_scale_a`` (log of CLAP's inverse temperature, the one LAION's contrastive loss
    uses in both directions) from the checkpoint's safetensors (single file or sharded index);
    None when the weights are not safetensors or cannot be found."""
    from safetensors import safe_open

    path = local_file(name, "model.safetensors")
    if path is None:
        index = read_json(name, "model.safetensors.index.json")
        shard = (index or {}).get("weight_map", {}).get("logit_scale_a")
        path = local_file(name, shard) if isinstance(shard, str) else None
    if path is None:
        return None
    with safe_open(str(path), framework="pt") as fh:
        if "logit_scale_a" not in fh.keys():
            return None
        return float(fh.get_tensor("logit_scale_a"))


# ---------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def loading_scope() -> Iterator[None]:
    """While open, a CLAP checkpoint is read once: the audio and text towers of one
    :func:`clarion.models.build_model` call take their parts from the same ``ClapModel``."""
    global _SCOPE
    outer, _SCOPE = _SCOPE, {} if _SCOPE is None else _SCOPE
    try:
        yield
    finally:
        _SCOPE = outer


def _pretrained_clap(name: str | None):
    if not name:
        raise ValueError("model.audio_encoder / text_encoder = hf-clap needs model.clap_pretrained (a local CLAP folder or a cached hub id)")
    if _SCOPE is not None and name in _SCOPE:
        return _SCOPE[name]
    tf = _transformers()
    source = _source(name)
    config = _offline("CLAP model", name, lambda: tf.AutoConfig.from_pretrained(source, local_files_only=True))
    if config.model_type != "clap":
        raise HfLoadError(f"{name!r} holds a {config.model_type!r} model, not a full ClapModel (model_type 'clap')")
    model, info = _offline(
        "CLAP model", name, lambda: tf.ClapModel.from_pretrained(source, local_files_only=True, output_loading_info=True)
    )
    _check_loading(info, name)
    loaded = (source, model.float().eval())
    if _SCOPE is not None:
        _SCOPE[name] = loaded
    return loaded


def _saved_config(saved: Path, tower: str):
    tf = _transformers()
    config = tf.ClapConfig.from_pretrained(_saved_dir(saved, tower), local_files_only=True)
    return config


def _projection_layer(sub_config):
    from transformers.models.clap.modeling_clap import ClapProjectionLayer

    return ClapProjectionLayer(sub_config)


# ---------------------------------------------------------------------------------------------
# audio


class ClapAudioTower(nn.Module):
    """wave [B, n] at ``sample_rate`` → CLAP features (see the module docstring) →
    ``ClapAudioModel`` → ``pooler_output`` [B, hidden_size]."""

    def __init__(self, model: nn.Module, feature_extractor: Any, config: Any, head: nn.Module, source: str):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.clap_config = config
        self._head = (head,)  # handed to the DualEncoder by projection_head(), not a submodule here
        self.source = source
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.window = int(feature_extractor.nb_max_samples)
        self.fused = bool(model.config.enable_fusion)
        self.output_dim = int(model.config.hidden_size)
        self.front_end = f"ClapFeatureExtractor at {self.sample_rate} Hz, {self.window} samples{', fused' if self.fused else ''}"

    def projection_head(self) -> nn.Module:
        """CLAP's ``audio_projection`` (pretrained weights when built from a checkpoint)."""
        return self._head[0]

    def _draw(self, high: int) -> int:
        """A uniform integer in [0, high) from torch's global generator (training only)."""
        return int(torch.randint(high, (1,)).item())

    def _fusion(self, wave: np.ndarray) -> tuple[np.ndarray, bool]:
        """[4, frames, mels] for a clip longer than the window (HF's ``_random_mel_fusion`` with
        a local RandomState), and whether the chunks were used (``is_longer``)."""
        fe = self.feature_extractor
        mel = fe._np_extract_fbank_features(wave, fe.mel_filters)  # [T, M]
        chunk = self.window // fe.hop_length + 1
        total = mel.shape[0]
        if chunk == total:
            return np.stack([mel] * 4), False
        rng = np.random.RandomState(self._draw(2**31 - 1) if self.training else 0)
        ranges = np.array_split(list(range(0, total - chunk + 1)), 3)
        ranges = [r if len(r) else [0] for r in ranges]
        starts = [rng.choice(r) for r in ranges]
        shrunk = torch.nn.functional.interpolate(
            torch.tensor(mel[None, None]), size=[chunk, mel.shape[1]], mode="bilinear", align_corners=False
        )[0, 0].numpy()
        return np.stack([shrunk, *(mel[s : s + chunk] for s in starts)]), True

    def features(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input_features`` [B, 1 or 4, frames, mels] and ``is_longer`` [B, 1] bool."""
        fe = self.feature_extractor
        mode = "fusion" if self.fused else "rand_trunc"
        mels: list[np.ndarray] = []
        longer: list[bool] = []
        for clip in wave.detach().to("cpu", torch.float64).numpy():
            if len(clip) > self.window and self.fused:
                mel, is_longer = self._fusion(clip)
            else:
                if len(clip) > self.window:
                    start = self._draw(len(clip) - self.window + 1) if self.training else 0
                    clip = clip[start : start + self.window]
                # one clip per call: the extractor's random is_longer flip then draws from a range of one
                # (numpy's global RNG is not advanced), and its flag is replaced by ours anyway
                out = fe([clip], sampling_rate=self.sample_rate, truncation=mode, padding=fe.padding, return_tensors="np")
                mel, is_longer = out["input_features"][0], False
            mels.append(np.asarray(mel, dtype=np.float32))
            longer.append(is_longer)
        return {
            "input_features": torch.from_numpy(np.stack(mels)),
            "is_longer": torch.tensor(longer, dtype=torch.bool)[:, None],
        }

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.features(wave).items()}
        return self.model(**inputs).pooler_output

    def save_pretrained_files(self, directory: Path) -> None:
        """The full ClapModel ``config.json`` + ``preprocessor_config.json``."""
        self.clap_config.save_pretrained(str(directory))
        self.feature_extractor.save_pretrained(str(directory))


def build_clap_audio(name: str | None, saved: Path | None = None) -> ClapAudioTower:
    tf = _transformers()
    if saved is not None:
        config = _saved_config(saved, "CLAP audio tower")
        model, head, source = tf.ClapAudioModel(config.audio_config), _projection_layer(config.audio_config), str(saved)
    else:
        source, full = _pretrained_clap(name)
        config, model, head = full.config, full.audio_model, full.audio_projection
    fe = _offline("feature extractor of", name or source, lambda: tf.ClapFeatureExtractor.from_pretrained(source, local_files_only=True))
    return ClapAudioTower(model.float(), fe, config, head.float(), name or source)


# ---------------------------------------------------------------------------------------------
# text


class ClapTextTower(nn.Module):
    """captions → CLAP's tokenizer (padding, truncation to ``max_tokens``) → ``ClapTextModel``
    → ``pooler_output`` [B, hidden_size] (what ``ClapModel.get_text_features`` projects)."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: Any, head: nn.Module, max_tokens: int, source: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.clap_config = config
        self._head = (head,)
        self.max_tokens = max_tokens
        self.source = source
        self.output_dim = int(model.config.hidden_size)

    def projection_head(self) -> nn.Module:
        """CLAP's ``text_projection``."""
        return self._head[0]

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        limit = self.max_tokens
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 2:
            limit = min(limit, positions - 2)
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenize(captions).items()}
        return self.model(**inputs).pooler_output

    def save_pretrained_files(self, directory: Path) -> None:
        """The full ClapModel ``config.json`` + tokenizer files."""
        self.clap_config.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


def build_clap_text(name: str | None, max_tokens: int, saved: Path | None = None) -> ClapTextTower:
    tf = _transformers()
    if saved is not None:
        config = _saved_config(saved, "CLAP text tower")
        model = tf.ClapTextModel(config.text_config)
        head, source = _projection_layer(config.text_config), str(saved)
    else:
        source, full = _pretrained_clap(name)
        config, model, head = full.config, full.text_model, full.text_projection
    tokenizer = _offline("tokenizer of", name or source, lambda: tf.AutoTokenizer.from_pretrained(source, local_files_only=True))
    return ClapTextTower(model.float(), tokenizer, config, head.float(), max_tokens, name or source)


def temperature_from_logit_scale(logit_scale: float) -> float:
    """τ = 1 / exp(logit_scale)."""
    return math.exp(-logit_scale)
