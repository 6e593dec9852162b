"""The Python API (clarion.load, ClarionModel), export, and the embed / export commands."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import clarion
from clarion.api import ClarionModel, load
from clarion.cli import main
from clarion.audio import AudioError
from clarion.data.manifest import read_manifest
from clarion.config import load_config
from clarion.evaluate.embed import embed_captions, embed_clips, eval_precision
from clarion.evaluate.zeroshot import class_embeddings, evaluate_zeroshot
from clarion.models import build_model, train_tokenizer
from clarion.rundir import RunError, load_model, load_objective

from serve_fixtures import clip_wave, tiny_run, write_clips

CPU = torch.device("cpu")
LABELS = ["tone", "noise", "chirp", "beep"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("api")
    rels = write_clips(root / "audio")
    run = tiny_run(root / "run", 0, "objective.name=siglip")  # an objective with learned state
    rows = [{"audio": f"audio/{r}", "caption": f"the sound of {r.split('/')[0]}", "label": _label(r)} for r in rels]
    manifest = root / "clips.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["audio", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "run": run, "audio": root / "audio", "rels": rels, "manifest": manifest}


@pytest.fixture(scope="module")
def model(setup) -> ClarionModel:
    return load(setup["run"], device="cpu")


def _label(rel: str) -> str:
    return {"tones": "tone", "noise": "noise", "chirps": "chirp"}.get(rel.split("/")[0], "beep")


def test_lazy_top_level_load(setup):
    assert clarion.load is load
    assert isinstance(clarion.load(setup["run"], device="cpu"), clarion.ClarionModel)


def test_embed_audio_equals_the_evaluation_pipeline(setup, model):
    cfg, direct = load_model(setup["run"], CPU)
    manifest = read_manifest(setup["manifest"])
    expected, clip_index, bad = embed_clips(direct, manifest, cfg, CPU)
    assert not bad and clip_index.tolist() == list(range(len(setup["rels"])))
    paths = [setup["audio"] / r for r in setup["rels"]]
    got = model.embed_audio(paths, batch_size=5)
    assert got.shape == (12, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(12))
    assert torch.equal(model.embed_audio(paths, batch_size=5), got)  # deterministic
    assert model.embed_audio(str(paths[0])).shape == (1, 32)


def test_waveforms_are_resampled_cropped_and_padded_like_files(setup, model):
    path = setup["audio"] / "beeps_440_44k.wav"  # stored at 44.1 kHz, the model runs at 16 kHz
    wave, rate = sf.read(path, dtype="float32")
    assert rate == 44100
    from_file = model.embed_audio([path])
    torch.testing.assert_close(model.embed_audio([wave], sample_rate=44100), from_file, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.embed_audio([torch.from_numpy(wave)], sample_rate=44100), from_file, atol=1e-6, rtol=0)

    long = clip_wave("chirp", 500.0, seconds=2.5)  # 2.5 s: the window is the first second
    short = clip_wave("tone", 300.0, seconds=0.4)  # 0.4 s: zero-padded to one second
    padded = np.concatenate([short, np.zeros(16000 - len(short), np.float32)])
    got = model.embed_audio([long, short])  # sample_rate None: already at 16 kHz
    direct = model.model.embed_audio(torch.from_numpy(np.stack([long[:16000], padded])))
    torch.testing.assert_close(got, direct, atol=1e-6, rtol=0)


def test_bad_audio_inputs_raise_clear_errors(setup, model):
    with pytest.raises(AudioError, match="file not found"):
        model.embed_audio([setup["root"] / "missing.wav"])
    with pytest.raises(ValueError, match="1-D"):
        model.embed_audio([np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="list of 1-D"):
        model.embed_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        model.embed_audio([np.full(100, np.nan, np.float32)])
    with pytest.raises(ValueError, match="empty waveform"):
        model.embed_audio([np.zeros(0, np.float32)])


def test_embed_files_skips_bad_files(setup, model, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 50)
    good = [setup["audio"] / r for r in setup["rels"][:3]]
    result = model.embed_files([good[0], junk, good[1], tmp_path / "gone.wav", good[2]], batch_size=2)
    assert result.ok == [0, 2, 4]
    assert [p for p, _ in result.bad] == [str(junk), str(tmp_path / "gone.wav")]
    assert "cannot decode" in result.bad[0][1] and result.bad[1][1] == "file not found"
    torch.testing.assert_close(result.embeddings, model.embed_audio(good), atol=1e-6, rtol=0)


def test_embed_text_equals_the_model(setup, model):
    cfg, direct = load_model(setup["run"], CPU)
    texts = ["a dog barks", "rain on a roof", "a very high whistle", "white noise hiss", "zzz unknown words"]
    got = model.embed_text(texts, batch_size=2)
    with torch.no_grad():
        expected = direct.embed_text(texts)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, embed_captions(direct, texts, CPU, 128), atol=1e-6, rtol=0)
    assert model.embed_text("a dog barks").shape == (1, 32)
    for bad in ([""], ["ok", "   "], [None]):
        with pytest.raises(ValueError, match="empty or not a string"):
            model.embed_text(bad)


def test_similarity_is_cosine(setup, model):
    paths = [setup["audio"] / r for r in setup["rels"][:4]]
    texts = ["a tone", "noise", "a chirp"]
    a, t = model.embed_audio(paths), model.embed_text(texts)
    sim = model.similarity(paths, texts)
    assert sim.shape == (4, 3)
    torch.testing.assert_close(sim, a @ t.T)
    torch.testing.assert_close(model.similarity(a, t), sim)  # embeddings in, the same out
    torch.testing.assert_close(model.similarity(a * 3, texts), sim)  # rows are normalised
    assert bool((sim.abs() <= 1 + 1e-6).all())
    with pytest.raises(ValueError, match=r"\[N, 32\]"):
        model.similarity(torch.zeros(2, 7), t)


def test_classify_matches_zero_shot_evaluation(setup, model):
    prompts = ["This is a sound of {label}.", "a recording of a {label}"]
    cfg, direct = load_model(setup["run"], CPU)
    paths = [setup["audio"] / r for r in setup["rels"]]
    result = model.classify(paths, LABELS, prompt=prompts)

    classes = class_embeddings(lambda c: embed_captions(direct, c, CPU, 128), LABELS, prompts)
    expected = model.embed_audio(paths).double() @ classes.T
    torch.testing.assert_close(result.scores.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.probs.sum(1), torch.ones(len(paths)))
    assert result.labels == LABELS

    metrics = evaluate_zeroshot(direct, read_manifest(setup["manifest"]), cfg, CPU, prompts=prompts, labels=LABELS)
    truth = [_label(r) for r in setup["rels"]]
    accuracy = np.mean([p == t for p, t in zip(result.predicted, truth)])
    assert accuracy == pytest.approx(metrics["accuracy"])

    top = result.top(3)
    assert len(top) == len(paths) and all(len(row) == 3 for row in top)
    assert [row[0][0] for row in top] == result.predicted
    assert all(row[0][1] >= row[1][1] >= row[2][1] for row in top)
    single = model.classify(paths[0], LABELS)  # one prompt, one clip
    assert single.scores.shape == (1, 4)
    with pytest.raises(ValueError, match="does not contain"):
        model.classify(paths[0], LABELS, prompt="no placeholder")
    with pytest.raises(ValueError, match="repeated"):
        model.classify(paths[0], ["a", "a"])


def test_export_is_self_contained_and_identical(setup, model, tmp_path):
    run = shutil.copytree(setup["run"], tmp_path / "run")
    texts = ["a low tone", "a bird chirps"]
    paths = [setup["audio"] / r for r in setup["rels"]]
    original = load(run, device="cpu")
    out = original.save(tmp_path / "export")
    shutil.rmtree(run)

    exported = load(out, device="cpu")
    assert torch.equal(exported.embed_audio(paths), model.embed_audio(paths))
    assert torch.equal(exported.embed_text(texts), model.embed_text(texts))
    assert exported.fingerprint == model.fingerprint
    assert exported.meta["format"] == "clarion-model/1" and exported.meta["fingerprint"] == model.fingerprint
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert files == {"config.yaml", "tokenizer.json", "model.safetensors", "model.json"}
    objective_run, objective_export = load_objective(setup["run"]), load_objective(out)
    for (k, v), (k2, v2) in zip(objective_run.state_dict().items(), objective_export.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)

    with pytest.raises(RunError, match="not empty"):
        exported.save(out)
    assert exported.save(out, overwrite=True) == out and load(out, device="cpu").fingerprint == model.fingerprint
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a clarion model"):
        exported.save(tmp_path / "other", overwrite=True)
    with pytest.raises(RunError):
        load(tmp_path / "nothing-here")


def test_fingerprint_tells_models_apart(setup, model, tmp_path):
    other = load(tiny_run(tmp_path / "other", seed=1), device="cpu")
    assert other.fingerprint != model.fingerprint
    assert load(setup["run"], device="cpu").fingerprint == model.fingerprint


def test_export_cli(setup, model, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(setup["run"]), "--out", str(out), "-q"]) == 0
    assert "exported" in capsys.readouterr().out
    assert load(out, device="cpu").fingerprint == model.fingerprint
    assert main(["export", str(setup["run"]), "--out", str(out), "-q"]) == 2
    assert "not empty" in capsys.readouterr().err


def _read_index(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_embed_cli_folder_skips_bad_files(setup, model, tmp_path, capsys):
    folder = shutil.copytree(setup["audio"], tmp_path / "audio")
    (folder / "broken.wav").write_bytes(b"\x00junk" * 100)
    (folder / "readme.txt").write_text("not audio")
    out = tmp_path / "emb" / "clips.npy"
    assert main(["embed", str(folder), "--model", str(setup["run"]), "--out", str(out), "--device", "cpu", "-q"]) == 0
    captured = capsys.readouterr()
    assert "embedded 12 clips" in captured.out and "skipped 1 bad input" in captured.err

    emb, rows = np.load(out), _read_index(out.with_suffix(".csv"))
    assert emb.shape == (12, 32) and emb.dtype == np.float32
    assert [r["row"] for r in rows] == [str(i) for i in range(12)]
    assert [r["path"] for r in rows] == setup["rels"]
    expected = model.embed_audio([folder / r["path"] for r in rows]).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    skipped = _read_index(tmp_path / "emb" / "clips.skipped.csv")
    assert [s["path"] for s in skipped] == ["broken.wav"] and "cannot decode" in skipped[0]["reason"]


def test_embed_cli_manifest_audio_and_text(setup, model, tmp_path, capsys):
    out = tmp_path / "m"  # .npy is appended
    assert main(["embed", str(setup["manifest"]), "--model", str(setup["run"]), "--out", str(out), "-q"]) == 0
    emb, rows = np.load(tmp_path / "m.npy"), _read_index(tmp_path / "m.csv")
    assert [r["path"] for r in rows] == [f"audio/{r}" for r in setup["rels"]]
    np.testing.assert_allclose(emb, model.embed_audio([setup["root"] / r["path"] for r in rows]).numpy(), atol=1e-6)
    assert not (tmp_path / "m.skipped.csv").exists()

    text_out = tmp_path / "captions.npy"
    assert main(["embed", str(setup["manifest"]), "--model", str(setup["run"]), "--out", str(text_out), "--text", "-q"]) == 0
    emb, rows = np.load(text_out), _read_index(tmp_path / "captions.csv")
    manifest = read_manifest(setup["manifest"])
    assert [r["caption"] for r in rows] == manifest.captions
    np.testing.assert_allclose(emb, model.embed_text(manifest.captions).numpy(), atol=1e-6)

    capsys.readouterr()
    assert main(["embed", str(setup["audio"]), "--model", str(setup["run"]), "--out", str(out), "--text", "-q"]) == 2
    assert "needs a manifest" in capsys.readouterr().err


def test_export_keeps_pretrained_tower_files(setup, tmp_path):
    """A run with a Hugging Face text tower: the export carries text_encoder/ and loads without
    the original model folder or the run."""
    transformers = pytest.importorskip("transformers")
    from clarion.models import train_tokenizer

    bert = tmp_path / "bert"
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(["a low tone", "white noise", "a bird chirps"] * 2, 100),
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
    )
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(bert)
    tok.save_pretrained(bert)
    run = tiny_run(tmp_path / "run", 0, "model.text_encoder=hf", f"model.text_pretrained={bert}")
    texts, paths = ["a low tone", "a bird"], [setup["audio"] / r for r in setup["rels"][:3]]
    original = load(run, device="cpu")
    want_text, want_audio = original.embed_text(texts), original.embed_audio(paths)

    out = original.save(tmp_path / "export")
    assert (out / "text_encoder" / "config.json").is_file()
    shutil.rmtree(run)
    shutil.rmtree(bert)
    exported = load(out, device="cpu")
    assert torch.equal(exported.embed_text(texts), want_text)
    assert torch.equal(exported.embed_audio(paths), want_audio)
    assert exported.fingerprint == original.fingerprint


def test_evaluation_runs_in_the_runs_training_precision(tmp_path):
    """embed_captions under the run's precision: bf16 autocast (CPU) gives float32 embeddings
    close to, but not equal to, the fp32 ones; eval_precision resolves train.precision."""
    cfg = load_config(None, ["train.precision=bf16"])
    assert eval_precision(cfg, CPU) == "bf16"
    assert eval_precision(load_config(), CPU) == "fp32"  # auto on CPU
    tokenizer = train_tokenizer(["a dog barks", "rain falls on a roof"], 50)
    model = build_model(cfg, tokenizer).eval()
    texts = ["a dog barks", "rain falls"]
    full = embed_captions(model, texts, CPU, 8, "fp32")
    half = embed_captions(model, texts, CPU, 8, eval_precision(cfg, CPU))
    assert half.dtype == torch.float32 and not half.requires_grad and not full.requires_grad  # under no_grad
    assert not torch.equal(full, half)
    torch.testing.assert_close(half, full, atol=5e-2, rtol=0)
