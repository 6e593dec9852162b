"""Make the LAION-CLAP fixtures of tests/test_convert_laion.py with LAION's own model code.

Run once, in a separate venv that has the ``laion-clap`` package (1.1.7; its pins clash with the
test environment), from the repository root:

    python3.11 -m venv /work/venv-laion
    /work/venv-laion/bin/pip install torch==2.13.0 && /work/venv-laion/bin/pip install laion-clap==1.1.7 msclap==1.3.4
    # the package index's torchaudio 2.11.1 is a CUDA build that does not load next to the CPU torch;
    # LAION only uses its MelSpectrogram (plain PyTorch), so move the compiled extension away:
    mv /work/venv-laion/lib/python3.11/site-packages/torchaudio/lib/*.so /tmp/
    # (torchvision: not installed; see install_torchvision_stand_in)
    /work/venv-laion/bin/python scripts/make_laion_fixture.py            # writes tests/fixtures/laion/
    /work/venv-laion/bin/python scripts/make_laion_fixture.py --full     # real sizes, no files kept

Offline and small: LAION's ``CLAP`` builds its text branch with
``RobertaModel.from_pretrained('roberta-base')`` and its HTSAT with hard-coded sizes. This script
replaces those two builders (monkeypatching the names ``clap_module.model`` looks up)
by a random RoBERTa of a small ``RobertaConfig`` and LAION's own ``HTSAT_Swin_Transformer`` with
a reduced width and depth; the text projection's first layer is rebuilt for the small width
(LAION hard-codes 768 = roberta-base). Everything else is LAION's code: the model class, its
``get_audio_features`` front end (repeat-pad, the fusion chunks), ``get_audio_embedding`` and
``get_text_embedding``. The tokenizer is a tiny byte-level BPE (RoBERTa's format) made here.

Written per variant (``unfused``, ``fused``), under tests/fixtures/laion/:
  ``VARIANT.pt``             LAION's checkpoint layout: ``{"state_dict": {"module." + key: tensor}, "epoch": 1}``
  ``VARIANT_ref.safetensors`` the inputs and LAION's outputs:
      ``waveform_int16`` [N, n]: 48 kHz clips shorter than 10 s (LAION quantises to int16 itself;
      the model sees ``waveform_int16 / 32767``), ``audio_embed`` [N, d] from
      ``get_audio_embedding_from_data``; ``mel`` (the input the HTSAT saw after LAION's front end:
      [N, 1, T, 64] log-mel from torchlibrosa for unfused, ``mel_fusion`` [N, 4, T, 64] for fused;
      float16-rounded) and ``mel_audio_embed`` = LAION's embedding of exactly that rounded mel; ``input_ids`` / ``attention_mask`` [M, 77] and
      ``text_embed`` [M, d] from ``get_text_embedding``. Fused also holds a clip longer than 10 s
      through the fusion branch at the mel stage: ``long_mel_fusion`` [1, 4, T, 64] (float16-rounded
      to keep the file small; the model was run on exactly the rounded values) and
      ``long_audio_embed``.
  ``tokenizer/``             the tiny RoBERTa tokenizer (vocab.json, merges.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"  # fail at once if anything still reaches for the hub
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "laion"
TEXTS = ["a dog barks twice", "rain on a tin roof", "a dog"]

# reduced HTSAT: LAION's class, spec_size 256, 64 mel bins, patch 4, window 8 as in tiny/base;
# 4 stages (shifted windows in stages 0 and 1)
SMALL_AUDIO = dict(embed_dim=8, depths=[2, 2, 1, 1], num_heads=[1, 2, 2, 4])
SMALL_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128, max_position_embeddings=80)
SMALL_JOINT = 16
FULL_AUDIO = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[4, 8, 16, 32]),
    "base": dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32]),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / RoBERTa's byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_tokenizer(folder: Path):
    """A byte-level BPE vocabulary in RoBERTa's format: the 5 special tokens, the 256 byte symbols
    and a handful of merges (so tokens longer than a byte occur)."""
    from transformers import RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    merges = [("Ġ", "d"), ("o", "g"), ("Ġd", "og"), ("Ġ", "a"), ("r", "a"), ("i", "n"), ("Ġ", "t")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8")
        tok = RobertaTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))
    tok.save_pretrained(str(folder))
    return tok


def install_torchvision_stand_in():
    """LAION imports torchvision at module level but, on the path used here, only calls
    ``transforms.Resize`` on a tensor (the fused front end's shrunk mel of a long clip). The mirror's
    torchvision wheels are CUDA builds that do not load next to the CPU torch, so when it cannot be
    imported this puts in a stand-in whose ``Resize`` does what torchvision's does on a tensor
    (bilinear, ``align_corners=False``, antialias on); any other use fails loudly."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        pass
    import types

    # transformers decides what it can import by looking for torchvision: load what LAION uses first
    from transformers import BartModel, BertModel, RobertaModel, RobertaTokenizer  # noqa: F401

    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stand-in: only transforms.Resize is available")

    class Resize:
        def __init__(self, size, **_):
            self.size = list(size)

        def __call__(self, x):
            return nn.functional.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        m.__getattr__ = lambda attr: Unavailable
        sys.modules[name] = m
        return m

    tv = module("torchvision")
    tv.transforms = module("torchvision.transforms", Resize=Resize)
    tv.datasets = module("torchvision.datasets")
    tv.ops = module("torchvision.ops")
    tv.ops.misc = module("torchvision.ops.misc")


def build_laion(enable_fusion: bool, audio_sizes: dict, text_cfg, joint: int, tokenizer, model_name: str = "tiny"):
    """LAION's CLAP_Module with the two pretrained builders replaced (see the module docstring)."""
    install_torchvision_stand_in()
    import transformers

    # laion_clap.training.data loads three hub tokenizers at import; the hook loads roberta-base's
    for name in ("BertTokenizer", "RobertaTokenizer", "BartTokenizer"):
        getattr(transformers, name).from_pretrained = classmethod(lambda cls, *a, **k: tokenizer)
    import laion_clap

    # laion_clap puts its folder on sys.path and its hook imports the top-level `clap_module`
    import clap_module.factory as factory
    import clap_module.model as laion_model
    from clap_module.htsat import HTSAT_Swin_Transformer
    from transformers import RobertaModel

    def small_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
        return HTSAT_Swin_Transformer(
            spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=audio_cfg.class_num, window_size=8,
            config=audio_cfg, enable_fusion=enable_fusion, fusion_type=fusion_type, **audio_sizes,
        )

    class OfflineRoberta:
        @staticmethod
        def from_pretrained(name):
            assert name == "roberta-base"
            return RobertaModel(text_cfg, add_pooling_layer=True)

    laion_model.create_htsat_model = small_htsat
    laion_model.RobertaModel = OfflineRoberta
    width = audio_sizes["embed_dim"] * 2 ** (len(audio_sizes["depths"]) - 1)
    cfg = factory._MODEL_CONFIGS["HTSAT-tiny"]
    cfg["embed_dim"] = width
    cfg["joint_embed_shape"] = joint
    cfg["audio_cfg"]["model_name"] = model_name
    cfg["audio_cfg"]["class_num"] = 527 if width >= 768 else 3
    module = laion_clap.CLAP_Module(enable_fusion=enable_fusion, device="cpu", amodel="HTSAT-tiny", tmodel="roberta")
    clap = module.model
    if text_cfg.hidden_size != 768:  # LAION builds Linear(768, joint) for roberta
        clap.text_projection[0] = nn.Linear(text_cfg.hidden_size, joint)
    randomize(clap)
    return module.eval()


def randomize(model: nn.Module, seed: int = 0):
    """Give every parameter and batch-norm statistic a non-trivial random value (the default init
    leaves biases at 0, LayerNorms at 1 and BN running stats at 0/1, which would hide mapping
    errors between those tensors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("audio_branch.spectrogram_extractor", "audio_branch.logmel_extractor")):
                continue
            scale = 0.5 / max(1, p.shape[-1] if p.dim() > 1 else 1) ** 0.5 if p.dim() > 1 else 0.1
            base = 1.0 if name.endswith("weight") and p.dim() == 1 else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        model.logit_scale_a.fill_(2.5)
        model.logit_scale_t.fill_(3.0)


def laion_checkpoint(clap: nn.Module, with_position_ids: bool, small: bool = False) -> dict:
    """The layout of LAION's released ``.pt`` files (trained under DDP: ``module.`` prefixes).
    ``small`` leaves out the two largest fixed buffers (the STFT kernels, 4 MB, and the shifted
    windows' attention masks), which the converter drops anyway, to keep the fixture small; the
    ``--full`` run converts checkpoints that have them."""
    state = {k: v.detach().clone() for k, v in clap.state_dict().items()}
    if small:
        state = {k: v for k, v in state.items() if "spectrogram_extractor" not in k and not k.endswith("attn_mask")}
    if with_position_ids:  # the released checkpoints (older transformers) carry this buffer
        n = clap.text_branch.embeddings.position_embeddings.weight.shape[0]
        state["text_branch.embeddings.position_ids"] = torch.arange(n)[None]
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 1}


def clips(seed: int, seconds: list[float], sr: int = 48000) -> np.ndarray:
    """Tones plus noise, int16, zero-padded to the longest."""
    rng = np.random.default_rng(seed)
    n = int(max(seconds) * sr)
    out = np.zeros((len(seconds), n), dtype=np.int16)
    for i, s in enumerate(seconds):
        t = np.arange(int(s * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (220 + 180 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        out[i, : t.size] = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    return out


@torch.no_grad()
def reference(module, enable_fusion: bool, seed: int) -> dict[str, torch.Tensor]:
    from laion_clap.training.data import get_audio_features

    clap = module.model
    audio_cfg = module.model_cfg["audio_cfg"]
    seconds = [1.5, 2.0]
    wav16 = clips(seed, seconds)
    waves = [torch.from_numpy(wav16[i, : int(s * 48000)].astype(np.float32) / 32767.0) for i, s in enumerate(seconds)]
    # use_tensor=True: the waveform as given (we quantised it to int16 ourselves)
    audio_embed = module.get_audio_embedding_from_data(waves, use_tensor=True)
    # the mel stage: what the HTSAT saw, then the embedding of exactly that
    feats = [
        get_audio_features({}, w, 480000, data_truncating="fusion" if enable_fusion else "rand_trunc",
                           data_filling="repeatpad", audio_cfg=audio_cfg)
        for w in waves
    ]
    branch = clap.audio_branch
    if enable_fusion:
        mel = torch.stack([f["mel_fusion"] for f in feats])
    else:
        wave = torch.stack([f["waveform"] for f in feats])
        mel = branch.logmel_extractor(branch.spectrogram_extractor(wave))
    mel = mel.half()  # stored as float16; LAION's model runs on exactly the rounded values
    mel_audio_embed = embed_mel(clap, mel.float(), torch.zeros(len(waves), dtype=torch.bool), enable_fusion)
    toks = module.tokenizer(TEXTS)
    text_embed = module.get_text_embedding(TEXTS, use_tensor=True)
    out = {
        "waveform_int16": torch.from_numpy(wav16),
        "lengths": torch.tensor([int(s * 48000) for s in seconds]),
        "audio_embed": audio_embed, "mel": mel.contiguous(), "mel_audio_embed": mel_audio_embed,
        "input_ids": toks["input_ids"], "attention_mask": toks["attention_mask"], "text_embed": text_embed,
    }
    if enable_fusion:
        np.random.seed(seed)  # LAION picks the three chunks at random
        long_wave = torch.from_numpy(clips(seed + 1, [12.5])[0].astype(np.float32) / 32767.0)
        f = get_audio_features({}, long_wave, 480000, data_truncating="fusion", data_filling="repeatpad", audio_cfg=audio_cfg)
        assert bool(f["longer"])
        long_mel = f["mel_fusion"][None].half()
        out["long_mel_fusion"] = long_mel
        out["long_audio_embed"] = embed_mel(clap, long_mel.float(), torch.ones(1, dtype=torch.bool), True)
    return out


def embed_mel(clap, mel: torch.Tensor, longer: torch.Tensor, enable_fusion: bool) -> torch.Tensor:
    """LAION's audio embedding from a given mel: HTSAT from ``bn0`` on (the code of
    ``HTSAT_Swin_Transformer.forward`` after its front end), projection, L2 normalisation."""
    branch = clap.audio_branch
    if enable_fusion:
        out = branch({"mel_fusion": mel, "longer": longer}, device="cpu")
    else:
        x = branch.bn0(mel.transpose(1, 3)).transpose(1, 3)
        out = branch.forward_features(branch.reshape_wav2img(x))
    return nn.functional.normalize(clap.audio_projection(out["embedding"]), dim=-1)


def make_fixtures():
    from transformers import RobertaConfig

    OUT.mkdir(parents=True, exist_ok=True)
    tok = write_tiny_tokenizer(OUT / "tokenizer")
    text_cfg = RobertaConfig(vocab_size=len(tok), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             type_vocab_size=1, layer_norm_eps=1e-5, **SMALL_TEXT)
    for variant, fusion in (("unfused", False), ("fused", True)):
        torch.manual_seed(0)
        module = build_laion(fusion, SMALL_AUDIO, text_cfg, SMALL_JOINT, tok)
        torch.save(laion_checkpoint(module.model, with_position_ids=fusion, small=True), OUT / f"{variant}.pt")
        ref = reference(module, fusion, seed=1 if fusion else 0)
        save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / f"{variant}_ref.safetensors"))
        print(variant, {k: tuple(v.shape) for k, v in ref.items()}, (OUT / f"{variant}.pt").stat().st_size, "bytes")


def check_full_sizes():
    """Build LAION's real HTSAT-tiny / HTSAT-base (both fusion settings; RoBERTa-base text at its
    real size, random), save its checkpoint layout, convert it with clarion and compare the two
    models' embeddings on the same log-mel and token ids. clarion is
    imported from src/ here; it needs transformers' ClapModel, which this venv also has."""
    from transformers import RobertaConfig

    sys.path.insert(0, str(ROOT / "src"))
    from clarion.models.convert.laion import convert_laion_state_dict

    tok = write_tiny_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    text_cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
    for name, sizes in FULL_AUDIO.items():
        for fusion in (False, True):
            module = build_laion(fusion, sizes, text_cfg, 512, tok, model_name=name)
            ckpt = laion_checkpoint(module.model, with_position_ids=True)
            state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
            model, report = convert_laion_state_dict(state, source=f"HTSAT-{name}")
            n = sum(p.numel() for p in model.parameters())
            # the same inputs through both: a log-mel at the HTSAT's input (fused: 4 channels, flagged
            # longer so the fusion branch runs) and token ids
            g = torch.Generator().manual_seed(0)
            mel = -40 + 10 * torch.randn(1, 4 if fusion else 1, 1001, 64, generator=g)
            longer = torch.ones(1, dtype=torch.bool) if fusion else torch.zeros(1, dtype=torch.bool)
            ids = torch.randint(3, 50000, (2, 20), generator=g)
            ids[:, 0], ids[:, -1] = 0, 2
            mask = torch.ones_like(ids)
            with torch.no_grad():
                ref_a = embed_mel(module.model, mel, longer, fusion)
                ref_t = module.model.get_text_embedding({"input_ids": ids.clone(), "attention_mask": mask.clone()})
                a = model.get_audio_features(input_features=mel, is_longer=longer[:, None])
                t = model.get_text_features(input_ids=ids, attention_mask=mask)
            a = nn.functional.normalize(getattr(a, "pooler_output", a), dim=-1)
            t = nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)
            print(f"HTSAT-{name} fusion={fusion}: converted {report['mapped']} tensors, dropped {len(report['dropped'])} "
                  f"(front-end buffers, AudioSet head, training-only MLPs); ClapModel has {n / 1e6:.1f}M parameters; "
                  f"max |audio diff| {(a - ref_a).abs().max():.2e}, max |text diff| {(t - ref_t).abs().max():.2e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="convert the real-size architectures instead (prints, writes nothing)")
    args = parser.parse_args()
    check_full_sizes() if args.full else make_fixtures()
