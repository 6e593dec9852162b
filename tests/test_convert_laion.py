"""LAION-CLAP checkpoints → transformers.ClapModel (clarion convert laion-clap), against LAION's own code.

The fixtures under tests/fixtures/laion/ were made once by scripts/make_laion_fixture.py in a venv
with the laion-clap package: a reduced-size HTSAT + RoBERTa of LAION's classes (unfused and aff_2d
fused), saved in LAION's checkpoint layout, with the embeddings LAION's
``get_audio_embedding_from_data`` / ``get_text_embedding`` computed on stored clips and captions.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from clarion.cli import main  # noqa: E402
from clarion.models.convert.checkpoint import ConversionError, read_state_dict  # noqa: E402
from clarion.models.convert.laion import convert_laion_state_dict, map_laion_key  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "laion"
TEXTS = ["a dog barks twice", "rain on a tin roof", "a dog"]


def _unit(x) -> torch.Tensor:
    return torch.nn.functional.normalize(getattr(x, "pooler_output", x), dim=-1)


@pytest.fixture(scope="module", params=["unfused", "fused"])
def converted(request, tmp_path_factory):
    """(variant, ClapModel and ClapProcessor loaded back from the folder the CLI wrote, LAION's reference)."""
    out = tmp_path_factory.mktemp("hf") / request.param
    assert main(["convert", "laion-clap", str(FIX / f"{request.param}.pt"), "--out", str(out),
                 "--tokenizer", str(FIX / "tokenizer"), "-q"]) == 0
    model = transformers.ClapModel.from_pretrained(str(out)).eval()
    processor = transformers.ClapProcessor.from_pretrained(str(out))
    return request.param, model, processor, load_file(str(FIX / f"{request.param}_ref.safetensors"))


def test_text_embeddings_equal_laions(converted):
    _, model, processor, ref = converted
    ids = processor.tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(ids["input_ids"], ref["input_ids"])  # the saved tokenizer is the one LAION used
    with torch.no_grad():
        t = _unit(model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]))
    assert torch.allclose(t, ref["text_embed"], atol=1e-4, rtol=0)


def test_audio_embeddings_from_waveform_equal_laions(converted):
    """The whole path: 48 kHz clips (shorter than 10 s) → the saved ClapFeatureExtractor → ClapModel."""
    variant, model, processor, ref = converted
    waves = [(ref["waveform_int16"][i, :n].double() / 32767).float().numpy() for i, n in enumerate(ref["lengths"].tolist())]
    feats = processor.feature_extractor(waves, sampling_rate=48_000, return_tensors="pt")
    assert feats["input_features"].shape == ref["mel"].shape
    is_longer = feats["is_longer"]
    if variant == "fused":
        # transformers' extractor flags a random clip as longer when none is (LAION does that in
        # training only); LAION's inference leaves clips of 10 s or less unflagged
        is_longer = torch.zeros_like(is_longer)
    with torch.no_grad():
        a = _unit(model.get_audio_features(input_features=feats["input_features"], is_longer=is_longer))
    assert torch.allclose(a, ref["audio_embed"], atol=1e-4, rtol=0)


def test_audio_embeddings_from_laions_mel_are_exact(converted):
    """The mel LAION's front end produced (float16-rounded; LAION's model saw the same values):
    only the converted weights differ between the two sides."""
    variant, model, _, ref = converted
    mel = ref["mel"].float()
    with torch.no_grad():
        a = _unit(model.get_audio_features(input_features=mel, is_longer=torch.zeros(len(mel), 1, dtype=torch.bool)))
        assert torch.allclose(a, ref["mel_audio_embed"], atol=1e-5, rtol=0)
        if variant == "fused":  # a 12.5 s clip: the fusion branch (mel_conv2d, the AFF block) is used
            long = _unit(model.get_audio_features(input_features=ref["long_mel_fusion"].float(), is_longer=torch.ones(1, 1, dtype=torch.bool)))
            assert torch.allclose(long, ref["long_audio_embed"], atol=1e-5, rtol=0)
            # and it matters: without the flag the same mel gives another embedding
            plain = _unit(model.get_audio_features(input_features=ref["long_mel_fusion"].float(), is_longer=torch.zeros(1, 1, dtype=torch.bool)))
            assert (plain - ref["long_audio_embed"]).abs().max() > 1e-3


def test_architecture_and_temperature_are_read_from_the_checkpoint(converted):
    variant, model, _, _ = converted
    audio, text = model.config.audio_config, model.config.text_config
    assert (audio.patch_embeds_hidden_size, list(audio.depths), list(audio.num_attention_heads)) == (8, [2, 2, 1, 1], [1, 2, 2, 4])
    assert audio.enable_fusion == (variant == "fused")
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size, model.config.projection_dim) == (64, 2, 128, 16)
    state = read_state_dict(FIX / f"{variant}.pt")
    assert torch.equal(model.logit_scale_a.detach(), state["logit_scale_a"])
    assert torch.equal(model.logit_scale_t.detach(), state["logit_scale_t"])


def test_qkv_is_split_into_query_key_value_rows():
    names = map_laion_key("audio_branch.layers.1.blocks.0.attn.qkv.weight")
    assert [n.rsplit(".", 2)[-2] for n in names] == ["query", "key", "value"]
    state = read_state_dict(FIX / "unfused.pt")
    model, _ = convert_laion_state_dict(state)
    qkv = state["audio_branch.layers.1.blocks.0.attn.qkv.weight"]
    attn = model.audio_model.audio_encoder.layers[1].blocks[0].attention.self
    assert torch.equal(torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]), qkv)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    state = read_state_dict(FIX / "unfused.pt")
    state["audio_branch.extra_adapter.weight"] = torch.zeros(3)
    del state["text_projection.2.bias"]
    del state["audio_branch.layers.0.blocks.1.attn.qkv.weight"]
    path = tmp_path / "edited.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    with pytest.raises(ConversionError) as err:
        convert_laion_state_dict(read_state_dict(path), source=str(path))
    msg = str(err.value)
    assert "unknown keys in the checkpoint (1)" in msg and "audio_branch.extra_adapter.weight" in msg
    assert "missing keys (the model needs them) (4)" in msg and "text_projection.linear2.bias" in msg
    for part in ("query", "key", "value"):
        assert f"layers.0.blocks.1.attention.self.{part}.weight" in msg


def test_a_mis_shaped_tensor_is_listed():
    state = read_state_dict(FIX / "unfused.pt")
    state["text_branch.pooler.dense.bias"] = torch.zeros(7)
    with pytest.raises(ConversionError, match=r"shape mismatches \(1\):\n  text_model.pooler.dense.bias: checkpoint \(7,\), model \(64,\)"):
        convert_laion_state_dict(state)


@pytest.mark.parametrize("case", ["text file", "truncated", "pickled object", "not a clap", "pann"])
def test_bad_files_are_a_one_line_error(case, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    if case == "text file":
        path.write_text("not a checkpoint\n")
        expect = "not a PyTorch checkpoint"
    elif case == "truncated":
        data = (FIX / "unfused.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert not zipfile.is_zipfile(path)
        expect = "truncated"
    elif case == "pickled object":  # weights_only=True refuses it; no code from the file runs
        torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": Path("/")}, path)
        expect = "weights_only=True refuses"
    elif case == "not a clap":
        torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, path)
        expect = "not a LAION-CLAP HTSAT + RoBERTa checkpoint"
    else:
        torch.save({"audio_branch.conv_block1.conv1.weight": torch.zeros(1), "text_branch.embeddings.word_embeddings.weight": torch.zeros(1)}, path)
        expect = "PANN audio branch"
    rc = main(["convert", "laion-clap", str(path), "--out", str(tmp_path / "out"), "--tokenizer", str(FIX / "tokenizer")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tokenizer_folder_is_checked(tmp_path, capsys):
    rc = main(["convert", "laion-clap", str(FIX / "unfused.pt"), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "nope")])
    assert rc == 2 and "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

