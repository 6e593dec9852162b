"""Make the msclap fixture of tests/test_convert_msclap.py with msclap's own model code (2022: CNN14 + BERT).

Run once, in the venv of scripts/make_laion_fixture.py with ``msclap`` (1.3.4) added:

    /work/venv-laion/bin/pip install msclap==1.3.4
    /work/venv-laion/bin/python scripts/make_msclap_fixture.py          # writes tests/fixtures/msclap/
    /work/venv-laion/bin/python scripts/make_msclap_fixture.py --full   # real sizes: convert + compare, no files

Offline and small: msclap's ``TextEncoder`` calls ``AutoModel.from_pretrained('bert-base-uncased')``
and its ``Cnn14`` hard-codes 64…2048 channels. This script makes ``from_pretrained`` return a
random BERT of a small ``BertConfig`` and, after msclap builds its ``CLAP`` with the 2022 config
(44.1 kHz, window 1024, hop 320, 64 mel bands 50–14000 Hz), replaces the six ConvBlocks (msclap's
own ``ConvBlock`` class) and ``fc1`` / ``fc_audioset`` by narrower ones (channels 2…64); the
forward passes, the ``Projection`` heads, the text pooling (BERT's first token) and the
preprocessing are msclap's (``CLAPWrapper.preprocess_audio`` / ``preprocess_text``,
``_get_audio_embeddings`` / ``_get_text_embeddings``). The tokenizer is a tiny WordPiece vocabulary.

Written under tests/fixtures/msclap/:
  ``clap_2022.pth``        msclap's checkpoint layout ``{"model": state_dict}``, without the STFT
                           kernels (4 MB; the converter checks them when present) but with the mel
                           filterbank ``logmel_extractor.melW`` (the converter compares it with clarion's)
  ``clap_2022_ref.safetensors``  ``audio_int16`` [N, 5 s · 44100] (the clips after msclap's own
                           repeat-pad / random crop to 5 s; int16 values / 32767 are what the model saw),
                           ``audio_embed`` [N, d] and ``text_embed`` [M, d] (msclap's outputs, not
                           normalised, as msclap returns them), ``input_ids`` [M, 100]
  ``tokenizer/``           the tiny BERT tokenizer (vocab.txt)
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "msclap"
TEXTS = ["a dog barks twice", "rain on a tin roof", "a dog"]
WIDTH = 2  # channel base (msclap: 64)
WORDS = ["a", "dog", "barks", "twice", "rain", "on", "tin", "roof", "the", "of", "##s", "bird", "sound"]


def make_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    return tok


def build_msclap(tok, full: bool = False):
    """msclap's CLAPWrapper around its CLAP (2022 config), small BERT and CNN14 (module docstring);
    ``full``: the real sizes (CNN14 64…2048, BERT-base shapes), random weights."""
    import yaml
    from transformers import BertConfig, BertModel

    import msclap.models.clap as msclap_clap
    from msclap.CLAPWrapper import CLAPWrapper
    from msclap.models.audio import ConvBlock
    from msclap.models.clap import CLAP

    bert_cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    if full:
        bert_cfg = BertConfig()  # bert-base-uncased's shapes

    class OfflineAutoModel:
        @staticmethod
        def from_pretrained(name):
            assert name == "bert-base-uncased"
            return BertModel(bert_cfg)

    msclap_clap.AutoModel = OfflineAutoModel
    cfg_path = Path(msclap_clap.__file__).parents[1] / "configs" / "config_2022.yml"
    args = yaml.safe_load(cfg_path.read_text())
    d_proj = 16
    clap = CLAP(audioenc_name=args["audioenc_name"], sample_rate=args["sampling_rate"], window_size=args["window_size"],
                hop_size=args["hop_size"], mel_bins=args["mel_bins"], fmin=args["fmin"], fmax=args["fmax"],
                classes_num=args["num_classes"], out_emb=args["out_emb"] if full else 32 * WIDTH,
                text_model=args["text_model"], transformer_embed_dim=bert_cfg.hidden_size,
                d_proj=args["d_proj"] if full else d_proj)
    if not full:
        base = clap.audio_encoder.base
        widths = [1] + [WIDTH * 2**i for i in range(6)]
        for i in range(6):
            setattr(base, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        base.fc1 = nn.Linear(32 * WIDTH, 32 * WIDTH)
        base.fc_audioset = nn.Linear(32 * WIDTH, args["num_classes"])
    randomize(clap)
    clap.eval()

    wrapper = CLAPWrapper.__new__(CLAPWrapper)  # its __init__ reads weights and the hub tokenizer
    wrapper.args = type("Args", (), args)()
    wrapper.clap, wrapper.tokenizer, wrapper.use_cuda = clap, tok, False
    wrapper.token_keys = ["input_ids", "token_type_ids", "attention_mask"]
    return wrapper, args


def randomize(model: nn.Module, seed: int = 0):
    """Non-trivial values everywhere (biases, norms, BN statistics), so swapped tensors show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "spectrogram_extractor" in name or "logmel_extractor" in name:
                continue
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        model.logit_scale.fill_(3.2)


def clip(seed: int, seconds: float, sr: int = 44100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t) + 0.05 * rng.standard_normal(t.shape)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


@torch.no_grad()
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(OUT / "tokenizer")
    torch.manual_seed(0)
    wrapper, args = build_msclap(tok)
    raw = {"short.wav": clip(0, 1.5), "long.wav": clip(1, 6.0)}
    wrapper.read_audio = lambda path, resample=True: (torch.from_numpy(raw[path].astype(np.float32) / 32767.0), args["sampling_rate"])
    random.seed(0)  # msclap crops clips longer than 5 s at random
    audio = wrapper.preprocess_audio(list(raw), resample=True)  # [N, 1, 5 s]
    audio_embed = wrapper._get_audio_embeddings(audio)
    text = wrapper.preprocess_text(TEXTS)
    text_embed = wrapper._get_text_embeddings(text)
    seen = torch.round(audio[:, 0] * 32767.0)
    assert torch.equal(seen / 32767.0, audio[:, 0].double().float()) or (seen / 32767.0 - audio[:, 0]).abs().max() < 1e-7
    state = {k: v for k, v in wrapper.clap.state_dict().items() if "spectrogram_extractor" not in k}
    torch.save({"model": state}, OUT / "clap_2022.pth")
    ref = {"audio_int16": seen.to(torch.int16), "audio_embed": audio_embed, "text_embed": text_embed, "input_ids": text["input_ids"]}
    save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / "clap_2022_ref.safetensors"))
    print({k: tuple(v.shape) for k, v in ref.items()}, (OUT / "clap_2022.pth").stat().st_size, "bytes")


@torch.no_grad()
def check_full_size():
    """Real-size msclap 2022 (random weights, with the STFT kernels): convert with clarion and compare
    the embeddings of clarion's DualEncoder with msclap's on 5 s clips and captions."""
    import tempfile

    sys.path.insert(0, str(ROOT / "src"))
    from clarion.models.convert.msclap import convert_msclap_state_dict

    tok = make_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    wrapper, args = build_msclap(tok, full=True)
    state = {k: v for k, v in wrapper.clap.state_dict().items()}
    model, report = convert_msclap_state_dict(state, tok, None, "msclap-2022 full size")
    waves = torch.stack([torch.from_numpy(clip(i, 5.0).astype(np.float32) / 32767) for i in range(2)])
    ref_a = nn.functional.normalize(wrapper._get_audio_embeddings(waves[:, None]), dim=-1)
    ref_t = nn.functional.normalize(wrapper._get_text_embeddings(wrapper.preprocess_text(TEXTS)), dim=-1)
    a, t = model.embed_audio(waves), model.embed_text(TEXTS)
    n = sum(p.numel() for p in model.parameters())
    print(f"msclap 2022 full size: {report['mapped']} tensors, {n / 1e6:.1f}M parameters, front-end tensors checked "
          f"{len(report['dropped'])}; max |audio diff| {(a - ref_a).abs().max():.2e}, max |text diff| {(t - ref_t).abs().max():.2e}")


if __name__ == "__main__":
    sys.exit(check_full_size() if "--full" in sys.argv else main())
