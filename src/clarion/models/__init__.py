"""Encoders behind two small registries, and the dual encoder that joins them.

``AUDIO_ENCODERS[name](model_cfg, audio_cfg)`` and ``TEXT_ENCODERS[name](model_cfg, tokenizer)``
build a tower with an ``output_dim`` attribute; later encoders (pretrained) join by name.
"""

from __future__ import annotations

from typing import Callable

from tokenizers import Tokenizer
from torch import nn

from ..config import AudioConfig, Config, ModelConfig
from .audio import CnnAudioEncoder
from .dual import DualEncoder, Projection
from .text import TransformerTextEncoder, train_tokenizer

AUDIO_ENCODERS: dict[str, Callable[[ModelConfig, AudioConfig], nn.Module]] = {
    "cnn": lambda m, a: CnnAudioEncoder(a, m.audio_channels, m.dropout),
}
TEXT_ENCODERS: dict[str, Callable[[ModelConfig, Tokenizer], nn.Module]] = {
    "transformer": lambda m, tok: TransformerTextEncoder(
        tok, m.text_width, m.text_layers, m.text_heads, m.max_tokens, m.text_pooling, m.dropout
    ),
}


def build_model(cfg: Config, tokenizer: Tokenizer) -> DualEncoder:
    m = cfg.model
    for kind, name, table in (("audio", m.audio_encoder, AUDIO_ENCODERS), ("text", m.text_encoder, TEXT_ENCODERS)):
        if name not in table:
            raise ValueError(f"unknown {kind} encoder {name!r}; available: {', '.join(sorted(table))}")
    audio = AUDIO_ENCODERS[m.audio_encoder](m, cfg.audio)
    text = TEXT_ENCODERS[m.text_encoder](m, tokenizer)
    return DualEncoder(audio, text, m.embed_dim)


__all__ = ["AUDIO_ENCODERS", "TEXT_ENCODERS", "DualEncoder", "Projection", "build_model", "train_tokenizer"]
