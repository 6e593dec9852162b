"""LAION-CLAP checkpoints (``*.pt`` of the ``laion-clap`` package) → ``transformers.ClapModel``.

LAION's ``CLAP`` holds an HTSAT audio branch (``audio_branch.*``; tiny: width 96, depths 2-2-6-2;
base: 128, 2-2-12-2; with feature fusion ``aff_2d`` or without), a RoBERTa text branch
(``text_branch.*``), two projection MLPs ``Linear → ReLU → Linear`` (``audio_projection.{0,2}``,
``text_projection.{0,2}``) and the log temperatures ``logit_scale_a`` / ``logit_scale_t``.
``transformers.ClapModel`` is the same network under other names; the architecture is read off
the tensor shapes (:func:`clap_config_from_laion`) and every key is mapped by one rule
(:func:`map_laion_key`). The HTSAT attention's fused ``qkv`` [3C, C] is split into ``query``,
``key``, ``value`` [C, C] (rows in that order).

Dropped on purpose, because the embedding does not use them: the front end's fixed STFT and mel
tables (``spectrogram_extractor``, ``logmel_extractor``; ``ClapFeatureExtractor`` computes the mel),
the AudioSet tagging head (``tscam_conv``, ``head``), the training-only MLPs of LAION's loss
(``audio_transform``, ``text_transform``), and buffers the model rebuilds (shifted-window
``attn_mask``, ``position_ids``; a ``relative_position_index`` in the file must equal the rebuilt one).
Any other key, a key the model lacks, or a shape that differs is an error listing them all.

Not inferable from the weights: the RoBERTa head count (default ``hidden / 64``, RoBERTa's head
width; ``text_heads`` overrides) and the layer-norm epsilon (RoBERTa's 1e-5).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import ConversionError, check_keys, read_state_dict

# keys the embedding does not use (see the module docstring), as regular expressions
DROPPED = {
    r"^audio_branch\.(spectrogram_extractor|logmel_extractor)\.": "front-end STFT/mel tables",
    r"^audio_branch\.(tscam_conv|head)\.": "AudioSet tagging head",
    r"^(audio|text)_transform\.": "training-only MLPs",
    r"\.attn_mask$": "shifted-window masks (rebuilt)",
    r"^text_branch\.embeddings\.position_ids$": "position ids (rebuilt)",
}
_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.relative_position_index": "attention.self.relative_position_index",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_AUDIO = "audio_model.audio_encoder."
# buffers ClapModel computes in its constructor; a checkpoint may or may not carry them
REBUILT = re.compile(r"(relative_position_index|position_ids|token_type_ids)$")


def map_laion_key(key: str) -> list[str] | None:
    """The ``ClapModel`` key(s) of one LAION key: one name, three for a fused ``qkv`` (query, key,
    value), ``None`` for a key dropped on purpose. Raises ``KeyError`` for a key no rule knows."""
    if any(re.search(p, key) for p in DROPPED):
        return None
    if key in ("logit_scale_a", "logit_scale_t"):
        return [key]
    if m := re.fullmatch(r"(audio|text)_projection\.([02])\.(weight|bias)", key):
        return [f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.{m[3]}"]
    if m := re.fullmatch(r"text_branch\.((embeddings|encoder|pooler)\..+)", key):
        return [f"text_model.{m[1]}"]
    if m := re.fullmatch(r"audio_branch\.bn0\.(.+)", key):
        return [f"{_AUDIO}batch_norm.{m[1]}"]
    if m := re.fullmatch(r"audio_branch\.((patch_embed|norm|layers\.\d+\.downsample)\..+)", key):
        return [f"{_AUDIO}{m[1]}"]
    if m := re.fullmatch(r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.(.+)\.(weight|bias|relative_position_bias_table|relative_position_index)", key):
        block, inner, leaf = m[1], m[2], m[3]
        if inner == "attn" and leaf in ("relative_position_bias_table", "relative_position_index"):
            return [f"{_AUDIO}{block}.{_BLOCK['attn.' + leaf]}"]
        if inner == "attn.qkv":
            return [f"{_AUDIO}{block}.attention.self.{part}.{leaf}" for part in ("query", "key", "value")]
        if inner in _BLOCK:
            return [f"{_AUDIO}{block}.{_BLOCK[inner]}.{leaf}"]
    raise KeyError(key)


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def clap_config_from_laion(state: dict[str, torch.Tensor], text_heads: int | None = None, source: str = "checkpoint"):
    """The ``transformers.ClapConfig`` of a LAION state dict (keys without ``module.``), read from
    tensor shapes: HTSAT width, depths, heads per stage (columns of the relative position bias
    table), window (its rows = (2w-1)²), MLP ratio, mel bins, fusion; RoBERTa vocabulary, width,
    depth, feed-forward width, positions; the joint embedding size."""
    from transformers import ClapConfig

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ConversionError(f"{source}: not a LAION-CLAP HTSAT + RoBERTa checkpoint (no {key})")
        return state[key]

    if any(k.startswith("audio_branch.conv_block1") for k in state):
        raise ConversionError(f"{source}: a LAION-CLAP checkpoint with a PANN audio branch; "
                              "transformers' ClapModel (and so clarion's converter) holds only HTSAT")
    if any(k.startswith(("audio_branch.mel_conv1d", "audio_branch.fusion_model")) for k in state):
        raise ConversionError(f"{source}: 1-D feature fusion (aff_1d/daf_1d/iaff_1d); ClapModel supports only aff_2d")
    if "token_embedding.weight" in state or any(k.startswith("text_branch.resblocks") for k in state):
        raise ConversionError(f"{source}: a CLIP-style text transformer; ClapModel's text tower is RoBERTa")
    proj = need("audio_branch.patch_embed.proj.weight")
    need("text_branch.embeddings.word_embeddings.weight")
    n_stages = _count(state, r"audio_branch\.layers\.(\d+)\.")
    depths = [_count(state, rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n_stages)]
    if not n_stages or not all(depths):
        raise ConversionError(f"{source}: no HTSAT stages (audio_branch.layers.N.blocks.M) found")
    heads = [need(f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(n_stages)]
    table_rows = need("audio_branch.layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    window = (math.isqrt(table_rows) + 1) // 2
    width = proj.shape[0]
    mlp_ratio = need("audio_branch.layers.0.blocks.0.mlp.fc1.weight").shape[0] / width
    fusion = "audio_branch.patch_embed.mel_conv2d.weight" in state
    audio = dict(
        patch_embeds_hidden_size=width, patch_size=proj.shape[-1], patch_stride=[4, 4], spec_size=256,
        depths=depths, num_attention_heads=heads, window_size=window, mlp_ratio=mlp_ratio,
        hidden_size=need("audio_branch.norm.weight").shape[0], num_mel_bins=need("audio_branch.bn0.weight").shape[0],
        enable_fusion=fusion, fusion_type="aff_2d" if fusion else None, layer_norm_eps=1e-5,
    )
    if fusion:
        audio["aff_block_r"] = width // need("audio_branch.patch_embed.fusion_model.local_att.0.weight").shape[0]
    if "audio_branch.head.weight" in state:
        audio["num_classes"] = state["audio_branch.head.weight"].shape[0]

    words = state["text_branch.embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    heads_t = text_heads or max(1, hidden // 64)
    if hidden % heads_t:
        raise ConversionError(f"{source}: text width {hidden} is not divisible by {heads_t} heads")
    text = dict(
        vocab_size=words.shape[0], hidden_size=hidden, num_attention_heads=heads_t,
        num_hidden_layers=_count(state, r"text_branch\.encoder\.layer\.(\d+)\."),
        intermediate_size=need("text_branch.encoder.layer.0.intermediate.dense.weight").shape[0],
        max_position_embeddings=need("text_branch.embeddings.position_embeddings.weight").shape[0],
        type_vocab_size=need("text_branch.embeddings.token_type_embeddings.weight").shape[0],
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    joint = need("audio_projection.0.weight").shape[0]
    scale = float(need("logit_scale_a").exp())
    return ClapConfig(audio_config=audio, text_config=text, projection_dim=joint, logit_scale_init_value=scale)


def convert_laion_state_dict(state: dict[str, torch.Tensor], text_heads: int | None = None, source: str = "checkpoint"):
    """``(ClapModel in eval mode, report)`` from a LAION state dict (``module.`` already stripped).

    ``report``: ``mapped`` (number of ClapModel tensors filled), ``dropped`` (the LAION keys left
    out on purpose), ``config`` (the inferred architecture). Raises :class:`ConversionError` listing
    unknown, missing and mis-shaped keys.
    """
    from transformers import ClapModel

    config = clap_config_from_laion(state, text_heads, source)
    model = ClapModel(config).eval()
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    unknown, dropped = [], []
    for key, value in state.items():
        try:
            names = map_laion_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if names is None:
            dropped.append(key)
        elif len(names) == 3:
            for name, part in zip(names, value.chunk(3, dim=0)):
                converted[name] = part
        else:
            converted[names[0]] = value
    check_keys(source, unknown, converted, target, optional=[k for k in target if REBUILT.search(k)])
    for key in [k for k in converted if REBUILT.search(k)]:
        if not torch.equal(converted[key].to(target[key].dtype), target[key]):
            raise ConversionError(f"{source}: {key} differs from the one ClapModel builds (another window or position layout)")
        del converted[key]
    model.load_state_dict(converted, strict=False)  # strictness checked above; rebuilt buffers stay
    report = {"mapped": len(converted), "dropped": sorted(dropped), "config": config.to_dict()}
    return model, report


def laion_feature_extractor(fusion: bool):
    """``ClapFeatureExtractor`` with LAION-CLAP's front end: 48 kHz, 1024-point STFT, hop 480, 64
    mel bands over 50 Hz – 14 kHz, 10 s clips repeat-padded; ``fusion`` (global + three local
    chunks) for fused models, a random 10 s crop (``rand_trunc``) otherwise."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(
        feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
        frequency_min=50, frequency_max=14_000, truncation="fusion" if fusion else "rand_trunc", padding="repeatpad",
    )


def convert_laion_checkpoint(path: str | Path, out: str | Path, tokenizer: str | Path, text_heads: int | None = None) -> dict[str, Any]:
    """Write a Hugging Face ``ClapModel`` folder (config.json, model.safetensors, the RoBERTa
    tokenizer from ``tokenizer``, the feature extractor) for a LAION-CLAP ``.pt`` file; atomic (the
    folder appears complete or not at all). Returns the conversion report."""
    from transformers import AutoTokenizer, ClapProcessor

    from ...files import atomic_dir

    source = str(path)
    tok_dir = Path(tokenizer)
    if not tok_dir.is_dir():
        raise ConversionError(f"--tokenizer {tok_dir}: not a folder (give a folder with RoBERTa's tokenizer files, e.g. roberta-base's)")
    try:
        tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ConversionError(f"--tokenizer {tok_dir}: cannot load a tokenizer there ({str(exc).splitlines()[0][:200]})") from None
    model, report = convert_laion_state_dict(read_state_dict(path), text_heads, source)
    if len(tok) > model.config.text_config.vocab_size:
        raise ConversionError(f"--tokenizer {tok_dir}: {len(tok)} tokens, but the checkpoint's text model has "
                              f"{model.config.text_config.vocab_size} (another tokenizer than the one it was trained with)")
    processor = ClapProcessor(feature_extractor=laion_feature_extractor(model.config.audio_config.enable_fusion), tokenizer=tok)
    with atomic_dir(Path(out), "replace") as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    return report
