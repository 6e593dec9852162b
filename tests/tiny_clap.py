"""Tiny random-weight Hugging Face CLAP folders for tests (no download, built in about a second).

``save_tiny_clap(path, fused=...)`` writes what ``laion/clap-htsat-*`` ships, at toy size:
``config.json`` + ``model.safetensors`` (a ``ClapModel``), and the ``ClapProcessor`` files (a
``ClapFeatureExtractor`` and a RoBERTa byte-level BPE tokenizer). The tokenizer has no merges:
every byte is one token, so it needs no training and is the same on every machine.

Sizes: 16 kHz audio, a 1 s model window (16000 samples, hop 320: 51 frames), 64 mel bins (the
fusion path of the feature extractor hard-codes 64), a 64×64 HTSAT image with 4×4 patches, two
Swin stages of one block, a one-layer RoBERTa of width 16, projection_dim 8.
"""

from __future__ import annotations

from pathlib import Path

import torch

SAMPLE_RATE = 16000
WINDOW_SECONDS = 1
PROJECTION_DIM = 8


def tiny_roberta_tokenizer():
    """A RoBERTa tokenizer (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, the 256 byte-level
    symbols, ``<mask>``) without merges."""
    import transformers
    from tokenizers import pre_tokenizers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return transformers.RobertaTokenizer(vocab=vocab, merges=[], model_max_length=64)


def tiny_clap_config(fused: bool = False):
    import transformers

    text = dict(
        vocab_size=len(tiny_roberta_tokenizer()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=80, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    audio = dict(
        patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2], spec_size=64, window_size=4,
        num_mel_bins=64, hidden_size=16, enable_fusion=fused, fusion_type="aff_2d" if fused else None,
    )
    return transformers.ClapConfig(text_config=text, audio_config=audio, projection_dim=PROJECTION_DIM)


def tiny_feature_extractor(fused: bool = False):
    import transformers

    return transformers.ClapFeatureExtractor(
        feature_size=64, sampling_rate=SAMPLE_RATE, hop_length=320, max_length_s=WINDOW_SECONDS, fft_window_size=512,
        frequency_min=50, frequency_max=8000, truncation="fusion" if fused else "rand_trunc", padding="repeatpad",
    )


def save_tiny_clap(path: str | Path, fused: bool = False, seed: int = 0, logit_scale: float | None = None) -> Path:
    """Write a tiny random ``ClapModel`` folder (weights from ``torch.manual_seed(seed)``) and
    its processor files to ``path``; ``logit_scale`` sets both ``logit_scale_a`` and
    ``logit_scale_t`` (log of the inverse temperature)."""
    import transformers

    path = Path(path)
    torch.manual_seed(seed)
    model = transformers.ClapModel(tiny_clap_config(fused)).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale_a.fill_(logit_scale)
            model.logit_scale_t.fill_(logit_scale)
    model.save_pretrained(path)
    transformers.ClapProcessor(tiny_feature_extractor(fused), tiny_roberta_tokenizer()).save_pretrained(path)
    return path
