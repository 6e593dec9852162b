"""``clarion export --format onnx`` (export/onnx.py): each tower under onnxruntime equals torch, at
batch sizes and lengths other than those traced; unsupported towers and bad targets are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clarion.api import load
from clarion.cli import main
from clarion.config import load_config
from clarion.export.onnx import OnnxExportError, export_onnx, tokenize
from clarion.models import build_model, resolve_sample_rate, train_tokenizer

from conftest import TINY
from test_encoders import ast_dir, bert_dir, save_run  # noqa: F401  (fixtures)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CAPTIONS = ["a dog barks twice", "a low tone, then a loud bell", "rain falls on a roof", "a bell rings once"]


def _run(tmp_path: Path, *extra: str) -> Path:
    cfg = resolve_sample_rate(load_config(None, [*TINY, *extra]), False)
    tokenizer = train_tokenizer(CAPTIONS * 3, 200)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics off their initial values
        model.embed_audio(torch.randn(8, round(cfg.audio.clip_seconds * cfg.audio.sample_rate)))
    run = tmp_path / "run"
    save_run(run, cfg, model.eval(), tokenizer)
    return run


def _check_parity(export: Path, run: Path, lengths: list[int]) -> None:
    """onnxruntime on the exported files against the torch model loaded from the run."""
    model = load(run, device="cpu")
    meta = json.loads((export / "onnx.json").read_text())
    audio = ort.InferenceSession(str(export / "audio.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(export / "text.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch, n in [(3, lengths[0]), (1, lengths[1]), (5, lengths[2])]:  # traced at batch 2 and clip_samples
        wave = (0.1 * rng.standard_normal((batch, n))).astype(np.float32)
        got = audio.run(["audio_embedding"], {"wave": wave})[0]
        with torch.no_grad():
            expected = model.model.embed_audio(torch.from_numpy(wave)).numpy()
        assert got.shape == (batch, meta["embed_dim"])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    for captions in (CAPTIONS[:3], ["rain"], CAPTIONS):
        inputs = tokenize(model, captions)
        got = text.run(["text_embedding"], inputs)[0]
        np.testing.assert_allclose(got, model.embed_text(captions), atol=1e-4, rtol=0)


def test_default_towers_export_with_dynamic_batch_and_length(tmp_path, capsys):
    run = _run(tmp_path)
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--out", str(out), "--format", "onnx"]) == 0
    assert "as onnx" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"audio.onnx", "text.onnx", "tokenizer.json", "onnx.json", "config.yaml"}
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["audio_encoder"] == "cnn" and meta["text_encoder"] == "transformer"
    assert meta["fingerprint"] == load(run).fingerprint and max(meta["parity_max_abs"].values()) <= 1e-4
    assert (out / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    _check_parity(out, run, [16000, 24000, 7000])  # the clip, longer and shorter ones

    # an existing export is replaced only on request, and never a folder that is not one
    with pytest.raises(OnnxExportError, match="--overwrite"):
        export_onnx(load(run, device="cpu"), out)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(other), "--format", "onnx", "--overwrite"]) == 2
    assert "not a clarion ONNX export" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_panns_audio_and_hf_text_export(tmp_path, bert_dir):  # noqa: F811
    source = tmp_path / "bert"
    shutil.copytree(bert_dir, source)
    run = _run(tmp_path, "model.audio_encoder=panns-cnn14", "model.panns_width=2", "model.text_encoder=hf",
               f"model.text_pretrained={source}", "model.text_pooling=mean")
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--out", str(out), "--format", "onnx"]) == 0
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["sample_rate"] == 32000 and meta["tokenizer"] == "tokenizer/"
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    _check_parity(out, run, [32000, 40000, 20000])


def test_hf_audio_tower_is_refused_with_the_reason(tmp_path, ast_dir, capsys):  # noqa: F811
    """A Hugging Face audio tower's front end is its feature extractor (NumPy): no graph holds it."""
    source = tmp_path / "ast"
    shutil.copytree(ast_dir, source)
    run = _run(tmp_path, "model.audio_encoder=hf", f"model.audio_pretrained={source}")
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--out", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.audio_encoder=hf cannot be exported as ONNX" in err and "feature extractor" in err
    assert "Traceback" not in err and not out.exists()


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch, capsys):
    run = _run(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    assert main(["export", str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is missing" in err and "clarion[onnx]" in err and not (tmp_path / "onnx").exists()


def test_export_command_offers_every_format():
    from clarion.cli.serve import EXPORT_FORMATS
    from clarion.export import FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS
