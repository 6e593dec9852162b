"""The search index: exact top-k, incremental builds, search, and the index / search commands."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from clarion.api import ClarionModel, load
from clarion.cli import main
from clarion.audio import AudioError
from clarion.rundir import RunError
from clarion.serve.index import Hit, ModelMismatchError, SearchIndex, SearchIndexError, build_index, top_k

from serve_fixtures import clip_wave, tiny_index, tiny_run


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("index")
    index = tiny_index(root)
    return {"root": root, "index": index, "audio": root / "audio", "run": root / "run"}


@pytest.fixture()
def fresh(tmp_path, built) -> dict:
    """A private copy of the audio folder with its own index (for tests that change them)."""
    audio = shutil.copytree(built["audio"], tmp_path / "audio")
    summary = build_index(audio, built["run"], tmp_path / "index", device="cpu")
    return {"audio": audio, "index": tmp_path / "index", "run": built["run"], "summary": summary, "tmp": tmp_path}


def brute_force(queries: torch.Tensor, keys: torch.Tensor, k: int):
    scores = queries.double() @ keys.double().T
    order = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores.numpy(), order, 1), order


@pytest.mark.parametrize("n, k, chunk", [(1000, 10, 64), (1000, 10, 7), (50, 80, 16), (300, 1, 1000)])
def test_top_k_equals_brute_force(n, k, chunk):
    gen = torch.Generator().manual_seed(n + k)
    keys = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=1)
    scores, ids = top_k(queries, keys, k, chunk_size=chunk)
    want_scores, want_ids = brute_force(queries, keys, k)
    assert ids.shape == (5, min(k, n))
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


def test_top_k_breaks_ties_by_id():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    scores, ids = top_k(torch.tensor([[1.0, 0.0]]), keys, 4, chunk_size=2)
    assert ids.tolist() == [[0, 2, 3, 1]] and scores.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="k must be"):
        top_k(keys, keys, 0)


def test_index_layout_and_summary(built):
    index = built["index"]
    info = json.loads((index / "index.json").read_text())
    assert info["format"] == "clarion-index" and info["count"] == 12 and info["audio_root"] == str(built["audio"].resolve())
    assert info["model_fingerprint"] == load(built["run"], device="cpu").fingerprint
    emb = np.load(index / "embeddings.npy")
    assert emb.shape == (12, 32) and emb.dtype == np.float32
    with open(index / "entries.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == list(range(12))
    assert all(int(r["size"]) == (built["audio"] / r["path"]).stat().st_size for r in rows)
    assert (index / "model" / "model.safetensors").is_file()


def test_search_text_equals_brute_force(built):
    index = SearchIndex.open(built["index"])
    assert len(index) == 12 and index.paths == sorted(index.paths)
    model = load(built["run"], device="cpu")
    embeddings = torch.from_numpy(np.load(built["index"] / "embeddings.npy"))
    torch.testing.assert_close(embeddings, model.embed_audio([index.absolute(i) for i in range(12)]), atol=1e-6, rtol=0)
    for query in ("a low tone", "white noise hiss", "something else entirely"):
        hits = index.search_text(query, k=5)
        want_scores, want_ids = brute_force(model.embed_text([query]), embeddings, 5)
        assert [h.id for h in hits] == want_ids[0].tolist()
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert [h.path for h in hits] == [index.paths[i] for i in want_ids[0]]
        np.testing.assert_allclose([h.score for h in hits], want_scores[0], atol=1e-5)
    assert len(index.search_text("a tone", k=100)) == 12
    assert isinstance(index.model, ClarionModel) and index.model is index.model


def test_search_by_audio(built):
    index = SearchIndex.open(built["index"])
    target = index.paths.index("chirps/up_300.wav")
    hits = index.search_audio_file(index.absolute(target), k=3)
    assert hits[0].id == target and hits[0].score == pytest.approx(1.0, abs=1e-5)
    wave, rate = sf.read(index.absolute(target), dtype="float32")
    assert [h.id for h in index.search_audio(wave, rate, k=3)] == [h.id for h in hits]
    resampled = clip_wave("chirp", 300.0, 1.0, 22050)  # the same sound at another rate: still the best match
    assert index.search_audio(resampled, 22050, k=1)[0].id == target
    with pytest.raises(AudioError, match="file not found"):
        index.search_audio_file(built["root"] / "missing.wav")


def test_bad_queries_and_ids(built):
    index = SearchIndex.open(built["index"])
    for query in ("", "   "):
        with pytest.raises(ValueError, match="empty query"):
            index.search_text(query)
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            index.search_text("a tone", k=k)
    assert index.absolute(3) == index.audio_root / index.paths[3] and index.absolute(3).is_file()
    for bad in (-1, 12, "3", True):
        with pytest.raises(KeyError):
            index.absolute(bad)


def test_not_an_index(built, tmp_path):
    with pytest.raises(SearchIndexError, match="not a clarion index") as info:
        SearchIndex.open(tmp_path)
    assert isinstance(info.value, RunError)
    broken = shutil.copytree(built["index"], tmp_path / "broken")
    np.save(broken / "embeddings.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(SearchIndexError, match="inconsistent"):
        SearchIndex.open(broken)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "x.txt").write_text("x")
    with pytest.raises(SearchIndexError, match="not a clarion index"):
        build_index(built["audio"], built["run"], tmp_path / "stuff", device="cpu")


def test_incremental_build_embeds_only_changed_files(fresh, monkeypatch):
    audio, index = fresh["audio"], fresh["index"]
    assert fresh["summary"] == {**fresh["summary"], "added": 12, "updated": 0, "unchanged": 0, "removed": 0, "skipped": 0, "total": 12}
    before = SearchIndex.open(index)
    old = dict(zip(before.paths, before.embeddings))

    changed = audio / "tones/low_220.wav"
    sf.write(changed, clip_wave("tone", 500.0), 16000)  # same size, new content and mtime
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    sf.write(audio / "tones/new_3000.wav", clip_wave("tone", 3000.0), 16000)
    (audio / "noise/soft_2.wav").unlink()

    embedded = []
    original = ClarionModel.embed_files

    def spy(self, paths, *args, **kwargs):
        embedded.extend(os.path.relpath(p, audio) for p in paths)
        return original(self, paths, *args, **kwargs)

    monkeypatch.setattr(ClarionModel, "embed_files", spy)
    summary = build_index(audio, fresh["run"], index, device="cpu")
    assert {k: summary[k] for k in ("added", "updated", "unchanged", "removed", "skipped", "total")} == {
        "added": 1, "updated": 1, "unchanged": 10, "removed": 1, "skipped": 0, "total": 12
    }
    assert sorted(embedded) == ["tones/low_220.wav", "tones/new_3000.wav"]

    after = SearchIndex.open(index)
    assert "noise/soft_2.wav" not in after.paths and "tones/new_3000.wav" in after.paths
    model = load(fresh["run"], device="cpu")
    for i, path in enumerate(after.paths):
        if path in embedded:
            torch.testing.assert_close(after.embeddings[i], model.embed_audio([audio / path])[0], atol=1e-6, rtol=0)
        else:
            assert torch.equal(after.embeddings[i], old[path])  # reused, not recomputed

    embedded.clear()
    summary = build_index(audio, fresh["run"], index, device="cpu")
    assert embedded == [] and summary["unchanged"] == 12 and summary["added"] == summary["updated"] == 0


def test_bad_file_is_skipped_and_listed(fresh):
    audio, index = fresh["audio"], fresh["index"]
    (audio / "noise" / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(500))
    summary = build_index(audio, fresh["run"], index, device="cpu")
    assert summary["skipped"] == 1 and summary["total"] == 12 and summary["added"] == 0
    with open(index / "skipped.csv", newline="") as fh:
        skipped = list(csv.DictReader(fh))
    assert [s["path"] for s in skipped] == ["noise/corrupt.wav"] and "cannot decode" in skipped[0]["reason"]
    assert "noise/corrupt.wav" not in SearchIndex.open(index).paths


def test_model_mismatch_needs_rebuild(fresh):
    audio, index, tmp = fresh["audio"], fresh["index"], fresh["tmp"]
    export = load(fresh["run"], device="cpu").save(tmp / "export")
    assert build_index(audio, export, index, device="cpu")["unchanged"] == 12  # the export is the same model

    other = tiny_run(tmp / "other", seed=1)
    with pytest.raises(ModelMismatchError, match="another model"):
        build_index(audio, other, index, device="cpu")
    summary = build_index(audio, other, index, device="cpu", rebuild=True)
    assert summary["added"] == 12 and summary["unchanged"] == 0
    reopened = SearchIndex.open(index)
    assert reopened.model.fingerprint == load(other, device="cpu").fingerprint
    torch.testing.assert_close(reopened.embeddings, reopened.model.embed_audio([reopened.absolute(i) for i in range(12)]), atol=1e-6, rtol=0)

    moved = shutil.copytree(audio, tmp / "elsewhere")
    with pytest.raises(SearchIndexError, match="pass --rebuild"):
        build_index(moved, other, index, device="cpu")


def test_faiss_search_equals_exact(built):
    pytest.importorskip("faiss")
    exact = SearchIndex.open(built["index"])
    with_faiss = SearchIndex.open(built["index"])
    with_faiss.faiss_threshold = 0
    assert with_faiss._use_faiss() and not exact._use_faiss()
    for query in ("a low tone", "noise"):
        a, b = exact.search_text(query, k=6), with_faiss.search_text(query, k=6)
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert len(with_faiss.search_text("tone", k=50)) == 12


def test_index_and_search_cli(built, tmp_path, capsys):
    audio = shutil.copytree(built["audio"], tmp_path / "audio")
    index = tmp_path / "idx"
    args = ["index", "build", str(audio), "--model", str(built["run"]), "--out", str(index), "--device", "cpu", "-q"]
    assert main(args) == 0
    assert "12 files (12 added" in capsys.readouterr().out
    assert main(args) == 0
    assert "12 unchanged" in capsys.readouterr().out
    assert main([*args, "--rebuild"]) == 0
    assert "12 added" in capsys.readouterr().out

    expected = SearchIndex.open(index).search_text("a high tone", k=3)
    assert main(["search", str(index), "a high tone", "-k", "3", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and [line.split()[2] for line in lines] == [h.path for h in expected]

    assert main(["search", str(index), "a high tone", "-k", "3", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Hit(**h) for h in out["hits"]] == expected and out["text"] == "a high tone"

    clip = audio / "tones" / "mid_660.wav"
    assert main(["search", str(index), "--audio", str(clip), "-k", "1", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["path"] == "tones/mid_660.wav"

    for bad, message in ((["search", str(index), "  "], "empty query"), (["search", str(index)], "either a text QUERY"),
                         (["search", str(tmp_path), "x"], "not a clarion index"),
                         (["search", str(index), "x", "-k", "0"], "k must be")):
        assert main([*bad, "-q"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_on_cuda(built):
    cpu, gpu = SearchIndex.open(built["index"]), SearchIndex.open(built["index"], device="cuda")
    assert gpu.embeddings.device.type == "cuda" and gpu.model.device.type == "cuda"
    paths = [cpu.absolute(i) for i in range(len(cpu))]
    on_gpu = gpu.model.embed_audio(paths)
    assert on_gpu.device.type == "cpu"  # results come back on the CPU
    torch.testing.assert_close(on_gpu, cpu.model.embed_audio(paths), atol=1e-2, rtol=0)  # cuDNN may use TF32
    hits = gpu.search_text("a low tone", k=12)
    scores = cpu.model.embed_text(["a low tone"]) @ cpu.embeddings.T
    np.testing.assert_allclose([h.score for h in hits], scores[0, [h.id for h in hits]].numpy(), atol=1e-2)
    keys = torch.nn.functional.normalize(torch.randn(5000, 16, device="cuda"), dim=1)
    got_scores, got_ids = top_k(keys[:3], keys, 7, chunk_size=999)
    want_scores, want_ids = (keys[:3] @ keys.T).sort(dim=1, descending=True, stable=True)
    assert torch.equal(got_ids, want_ids[:, :7])
