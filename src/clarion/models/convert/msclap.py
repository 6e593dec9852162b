"""msclap checkpoints (Microsoft CLAP, the ``msclap`` package) → a clarion dual encoder.

**2022** (``CLAP_weights_2022.pth``): CNN14 audio encoder (``audio_encoder.base.*``: PANNs' CNN14
with its own front end at 44.1 kHz — 1024-sample window, hop 320, 64 Slaney mel bands over
50–14000 Hz, ``10·log10``; embedding ``ReLU(fc1(·))``, 2048-d), BERT text encoder
(``caption_encoder.base.*``, bert-base-uncased; the first token's last hidden state), two msclap
``Projection`` heads (``linear1``, ``linear2`` without bias, ``layer_norm``) into 1024-d, and
``logit_scale``. clarion holds each part: ``audio_encoder=msclap-cnn14`` (clarion's CNN14 with the
PANNs front end at 44.1 kHz; same parameter names), ``text_encoder=hf`` with ``text_pooling=cls``,
``head=msclap`` (:class:`clarion.models.dual.MsclapProjection`), and InfoNCE's temperature from
``logit_scale``. The checkpoint's mel filterbank (``logmel_extractor.melW``) is compared with
clarion's (same shape, values within 1e-4) when present; the STFT kernels are shape-checked.

**2023** (``CLAP_weights_2023.pth``): HTSAT + GPT-2 is refused with the reason
(:data:`MSCLAP_2023_REFUSAL`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..dual import DualEncoder
from ..panns import Cnn14, PannsLogMel
from .checkpoint import ConversionError, check_keys

MSCLAP_2022 = dict(sample_rate=44100, clip_seconds=5.0, max_tokens=100)
MSCLAP_2023_REFUSAL = (
    "msclap 2023 (HTSAT + GPT-2) cannot be held by clarion's towers: its text embedding is GPT-2's hidden "
    "state at the last token that is not id 0 (msclap appends ' <|endoftext|>' and pads with '!', id 0), a "
    "pooling clarion's hf text encoder does not have (first token or masked mean); and its audio tower, an "
    "HTS-AT like transformers' ClapAudioModel, sits behind a front end no clarion tower reproduces (msclap's "
    "HTSAT keeps its own defaults, a mel filterbank for 32 kHz, and is fed 44.1 kHz, 7 s clips). "
    "Only the 2022 weights (CNN14 + BERT) convert"
)
_FRONT_END = ("audio_encoder.base.spectrogram_extractor.", "audio_encoder.base.logmel_extractor.")


def msclap_version(state: dict[str, torch.Tensor], source: str) -> str:
    """``"2022"`` or ``"2023"`` from the key layout; anything else is an error."""
    if "audio_encoder.base.conv_block1.conv1.weight" in state and any(k.startswith("caption_encoder.base.embeddings.") for k in state):
        return "2022"
    if any(k.startswith("audio_encoder.base.htsat.") for k in state) or any(re.match(r"caption_encoder\.base\.h\.\d+\.", k) for k in state):
        return "2023"
    if any(k.startswith("clap.") for k in state) or any(k.startswith("gpt.") for k in state):
        raise ConversionError(f"{source}: an msclap ClapCap (captioning) checkpoint; only the CLAP weights convert")
    raise ConversionError(f"{source}: not an msclap CLAP checkpoint (no audio_encoder.base.* / caption_encoder.base.* keys)")


def bert_config_from_state(state: dict[str, torch.Tensor], text_heads: int | None, source: str):
    """A ``BertConfig`` from the shapes under ``caption_encoder.base.``; heads: ``text_heads`` or
    width / 64 (BERT's head width); layer-norm epsilon 1e-12 (BERT's)."""
    from transformers import BertConfig

    p = "caption_encoder.base."
    words = state[p + "embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    heads = text_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ConversionError(f"{source}: text width {hidden} is not divisible by {heads} heads")
    layers = {int(m[1]) for k in state if (m := re.match(rf"{re.escape(p)}encoder\.layer\.(\d+)\.", k))}
    return BertConfig(
        vocab_size=words.shape[0], hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=max(layers) + 1,
        intermediate_size=state[p + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[p + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[p + "embeddings.token_type_embeddings.weight"].shape[0],
    )


def _check_front_end(state: dict[str, torch.Tensor], source: str) -> list[str]:
    """The checkpoint's fixed front-end tensors against clarion's 44.1 kHz front end; returns their keys."""
    keys = [k for k in state if k.startswith(_FRONT_END)]
    shapes = PannsLogMel.checkpoint_shapes()
    ours = PannsLogMel(MSCLAP_2022["sample_rate"]).melW
    for key in keys:
        name = key[len("audio_encoder.base."):]
        if name not in shapes:
            raise ConversionError(f"{source}: unknown front-end tensor {key}")
        if tuple(state[key].shape) != shapes[name]:
            raise ConversionError(f"{source}: {key} has shape {tuple(state[key].shape)}, clarion's 44.1 kHz front end {shapes[name]}")
        if name == "logmel_extractor.melW":
            gap = (state[key].float() - ours).abs().max().item()
            if gap > 1e-4:
                raise ConversionError(f"{source}: its mel filterbank differs from clarion's 44.1 kHz one by {gap:.3g} "
                                      "(another sample rate or band range)")
    return keys


def convert_msclap_state_dict(state: dict[str, torch.Tensor], tokenizer: Any, text_heads: int | None = None,
                              source: str = "checkpoint") -> tuple[DualEncoder, dict[str, Any]]:
    """``(DualEncoder in eval mode, report)`` from an msclap 2022 state dict; ``tokenizer``: the BERT
    tokenizer the text tower uses. ``report``: ``width`` (CNN14 channel base), ``embed_dim``,
    ``logit_scale``, ``bert_config``, ``dropped`` (front-end keys). Raises :class:`ConversionError`
    for 2023 weights (:data:`MSCLAP_2023_REFUSAL`) and for unknown, missing or mis-shaped keys."""
    from ..hf import HfTextEncoder

    if msclap_version(state, source) == "2023":
        raise ConversionError(f"{source}: {MSCLAP_2023_REFUSAL}")
    from transformers import BertModel

    width = state["audio_encoder.base.conv_block1.conv1.weight"].shape[0]
    embed_dim = state["audio_encoder.projection.linear1.weight"].shape[0]
    bert = BertModel(bert_config_from_state(state, text_heads, source))
    text = HfTextEncoder(bert, tokenizer, MSCLAP_2022["max_tokens"], "cls", source)
    model = DualEncoder(Cnn14(width, MSCLAP_2022["sample_rate"]), text, embed_dim, head="msclap").eval()
    dropped = _check_front_end(state, source)
    rules = [("audio_encoder.base.", "audio_encoder."), ("audio_encoder.projection.", "audio_projection."),
             ("caption_encoder.base.", "text_encoder.model."), ("caption_encoder.projection.", "text_projection.")]
    converted, unknown = {}, []
    for key, value in state.items():
        if key in dropped or key == "logit_scale" or key == "caption_encoder.base.embeddings.position_ids":
            continue
        new = next((to + key[len(frm):] for frm, to in rules if key.startswith(frm)), None)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if "logit_scale" not in state:
        raise ConversionError(f"{source}: no logit_scale (the learned temperature)")
    target = model.state_dict()
    optional = [k for k in target if k.endswith(("position_ids", "token_type_ids"))]
    check_keys(source, unknown, converted, target, optional=optional)
    model.load_state_dict(converted, strict=False)  # strictness checked above; rebuilt buffers stay
    logit_scale = float(state["logit_scale"])
    report = {"width": width, "embed_dim": embed_dim, "logit_scale": logit_scale, "temperature": math.exp(-logit_scale),
              "bert_config": bert.config, "dropped": dropped, "mapped": len(converted)}
    return model, report
