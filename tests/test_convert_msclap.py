"""msclap 2022 weights (CNN14 + BERT) → a clarion export (clarion convert msclap-2022), against msclap's code.

tests/fixtures/msclap/ was made once by scripts/make_msclap_fixture.py with the msclap package:
its CLAP with the 2022 config at reduced size (CNN14 channels 2…64, a small BERT), saved in its
checkpoint layout, with the embeddings msclap's CLAPWrapper computed on stored 5 s clips (after
its own repeat-pad / crop) and captions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

import clarion  # noqa: E402
from clarion.cli import main  # noqa: E402
from clarion.models.convert.checkpoint import ConversionError, read_state_dict  # noqa: E402
from clarion.models.convert.msclap import convert_msclap_state_dict  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "msclap"
TEXTS = ["a dog barks twice", "rain on a tin roof", "a dog"]


def _tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(FIX / "tokenizer"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("msclap") / "export"
    # the fixture's BERT has 2 heads of width 16 (real BERT-base: 12 of 64, the default)
    assert main(["convert", "msclap-2022", str(FIX / "clap_2022.pth"), "--out", str(out),
                 "--tokenizer", str(FIX / "tokenizer"), "--text-heads", "2", "-q"]) == 0
    return clarion.load(out, device="cpu"), load_file(str(FIX / "clap_2022_ref.safetensors"))


def test_export_embeddings_equal_msclaps(exported):
    model, ref = exported
    assert model.sample_rate == 44100 and model.cfg.model.head == "msclap"
    waves = [(w.double() / 32767).numpy() for w in ref["audio_int16"]]
    a = torch.as_tensor(model.embed_audio(waves, sample_rate=44100))
    t = torch.as_tensor(model.embed_text(TEXTS))
    unit = torch.nn.functional.normalize
    assert torch.allclose(a, unit(ref["audio_embed"], dim=-1), atol=1e-4, rtol=0)
    assert torch.allclose(t, unit(ref["text_embed"], dim=-1), atol=1e-4, rtol=0)


def test_tokens_and_temperature_are_msclaps(exported):
    model, ref = exported
    ids = model.model.text_encoder.tokenize(TEXTS[:1])["input_ids"][0]
    assert torch.equal(ids, ref["input_ids"][0, : len(ids)]) and not ref["input_ids"][0, len(ids):].any()
    logit_scale = read_state_dict(FIX / "clap_2022.pth")["logit_scale"]
    assert torch.allclose(model.objective_state["temperature.logit_scale"], logit_scale)


def test_a_mel_filterbank_of_another_rate_is_refused():
    state = read_state_dict(FIX / "clap_2022.pth")
    from clarion.models.panns import PannsLogMel

    state["audio_encoder.base.logmel_extractor.melW"] = PannsLogMel(32000).melW.clone()  # PANNs' 32 kHz bands
    with pytest.raises(ConversionError, match="mel filterbank differs from clarion's 44.1 kHz"):
        convert_msclap_state_dict(state, _tokenizer(), 2)


def test_unknown_and_missing_keys_are_listed():
    state = read_state_dict(FIX / "clap_2022.pth")
    state["audio_encoder.extra.weight"] = torch.zeros(1)
    del state["caption_encoder.projection.layer_norm.bias"]
    with pytest.raises(ConversionError) as err:
        convert_msclap_state_dict(state, _tokenizer(), 2)
    msg = str(err.value)
    assert "unknown keys in the checkpoint (1)" in msg and "audio_encoder.extra.weight" in msg
    assert "missing keys (the model needs them) (1)" in msg and "text_projection.layer_norm.bias" in msg


def test_2023_weights_are_refused_with_the_reason(tmp_path, capsys):
    path = tmp_path / "CLAP_weights_2023.pth"
    torch.save({"model": {"audio_encoder.base.htsat.bn0.weight": torch.zeros(64),
                          "caption_encoder.base.h.0.attn.c_attn.weight": torch.zeros(2, 2)}}, path)
    rc = main(["convert", "msclap-2022", str(path), "--out", str(tmp_path / "out"), "--tokenizer", str(FIX / "tokenizer")])
    err = capsys.readouterr().err
    assert rc == 2 and "GPT-2" in err and "last token that is not id 0" in err and "32 kHz" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_laion_file_is_not_taken_for_msclap(tmp_path, capsys):
    rc = main(["convert", "msclap-2022", str(Path(__file__).parent / "fixtures" / "laion" / "unfused.pt"),
               "--out", str(tmp_path / "out"), "--tokenizer", str(FIX / "tokenizer")])
    assert rc == 2 and "not an msclap CLAP checkpoint" in capsys.readouterr().err
