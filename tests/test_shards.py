"""WebDataset shards: writing, layout, atomicity, reading back as a manifest, streaming, training."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clarion.cli import main
from clarion.config import load_config
from clarion.data.open import open_source
from clarion.data.shards import writer as shards_mod
from clarion.data.sources import dataset_splits, parse_spec
from clarion.data.records import BadSampleError, ManifestError
from clarion.data.shards.format import ShardError, tar_size
from clarion.data.shards.reader import open_shards
from clarion.data.shards.stream import ShardStream, delivery_order, stream_for
from clarion.data.shards.writer import write_shards
from clarion.rundir import sha256

from conftest import TINY, write_tone_split
from data_fixtures import write_junk, write_nan_wav, write_noise


@pytest.fixture(autouse=True)
def shard_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLARION_SHARD_CACHE", str(tmp_path / "shard-cache"))
    return tmp_path / "shard-cache"


def manifest_with_bad_clips(root: Path, n_clips: int = 12) -> Path:
    """Tone clips (two captions each) plus a junk file (bad row) and a NaN clip (fails to decode)."""
    manifest = write_tone_split(root, "train", n_clips, 0)
    write_junk(root / "audio" / "junk.wav")
    write_nan_wav(root / "audio" / "nan.wav")
    with open(manifest, "a", newline="") as fh:
        csv.writer(fh).writerows([["audio/junk.wav", "a junk clip", "junk"], ["audio/nan.wav", "a broken clip", "nan"]])
    return manifest


def captions_by_clip(manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in manifest.rows:
        out.setdefault(str(row.audio), []).append(row.caption)
    return out


def tar_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    groups: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            if not groups or groups[-1][0] != key:
                groups.append((key, {}))
            groups[-1][1][ext] = tar.extractfile(member).read()
    return groups


def test_written_shards_layout_index_and_skipped_clips(tmp_path):
    manifest_path = manifest_with_bad_clips(tmp_path / "data")
    index = write_shards(manifest_path, tmp_path / "out", max_samples_per_shard=5)
    source = open_source(manifest_path)
    expected = {clip: caps for clip, caps in captions_by_clip(source).items() if not clip.endswith("nan.wav")}

    assert index["total_samples"] == 12 and index["total_captions"] == 24
    assert [s["name"] for s in index["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["samples"] for s in index["shards"]] == [5, 5, 2]
    assert index["skipped"] == {"rows": 1, "clips": 1, "by_reason": {"unreadable audio": 1, "non-finite samples": 1}}
    assert index["skipped_clips"][0]["audio"].endswith("nan.wav")
    assert json.loads((tmp_path / "out" / "shards.json").read_text()) == index
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [s["name"] for s in index["shards"]] + ["shards.json"]

    seen = {}
    keys = []
    for shard in index["shards"]:
        path = tmp_path / "out" / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        groups = tar_samples(path)
        assert len(groups) == shard["samples"]
        for key, members in groups:
            assert set(members) == {"flac", "json"}
            meta = json.loads(members["json"])
            keys.append(key)
            seen[meta["original_path"]] = meta["text"]
            assert meta["label"] in {"low", "middle", "high", "very high"}
            wave, rate = sf.read(io.BytesIO(members["flac"]), dtype="float32")
            original, _ = sf.read(meta["original_path"], dtype="float32")
            assert rate == 16000 and wave.shape == original.shape
            np.testing.assert_allclose(wave, np.clip(original, -1, 1), atol=1.01 / 32768)  # 16-bit FLAC
    assert keys == [f"{i:09d}" for i in range(12)]
    assert seen == expected


def test_wav_format_is_lossless_and_resampling(tmp_path):
    write_noise(tmp_path / "a.wav", 0.5, 16000, seed=1)
    (tmp_path / "m.csv").write_text("audio,caption,lang\na.wav,some noise,en\n")
    write_shards(tmp_path / "m.csv", tmp_path / "wav", audio_format="wav")
    (_, members), = tar_samples(tmp_path / "wav" / "shard-000000.tar")
    np.testing.assert_array_equal(sf.read(io.BytesIO(members["wav"]), dtype="float32")[0],
                                  sf.read(tmp_path / "a.wav", dtype="float32")[0])
    assert json.loads(members["json"])["lang"] == "en"
    write_shards(tmp_path / "m.csv", tmp_path / "8k", sample_rate=8000)
    (_, members), = tar_samples(tmp_path / "8k" / "shard-000000.tar")
    wave, rate = sf.read(io.BytesIO(members["flac"]))
    assert rate == 8000 and len(wave) == 4000


def test_size_limits_split_shards(tmp_path):
    manifest_path = write_tone_split(tmp_path / "data", "train", 10, 0)
    by_count = write_shards(manifest_path, tmp_path / "count", max_samples_per_shard=3)
    assert [s["samples"] for s in by_count["shards"]] == [3, 3, 3, 1]
    one = write_shards(manifest_path, tmp_path / "one", max_samples_per_shard=1000)
    assert len(one["shards"]) == 1
    limit = one["shards"][0]["bytes"] // 3
    by_size = write_shards(manifest_path, tmp_path / "size", max_shard_bytes=limit)
    assert len(by_size["shards"]) >= 3 and sum(s["samples"] for s in by_size["shards"]) == 10
    for shard in by_size["shards"]:
        size = (tmp_path / "size" / shard["name"]).stat().st_size
        assert size == shard["bytes"] <= limit and size % 10240 == 0
    assert tar_size(0) == 10240 and tar_size(10240 - 1024) == 10240 and tar_size(10240 - 1023) == 20480


def test_interrupted_write_leaves_no_torn_shard(tmp_path, monkeypatch):
    manifest_path = write_tone_split(tmp_path / "data", "train", 8, 0)
    out = tmp_path / "out"
    real, calls = shards_mod._encode, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 5:  # the second shard holds clip 4 when this fails
            raise RuntimeError("disk on fire")
        return real(*args)

    monkeypatch.setattr(shards_mod, "_encode", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(manifest_path, out, max_samples_per_shard=3)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]  # no shard-000001.tar, no temp, no index
    assert len(tar_samples(out / "shard-000000.tar")) == 3
    monkeypatch.setattr(shards_mod, "_encode", real)
    with pytest.raises(ShardError, match="already holds shards"):
        write_shards(manifest_path, out)
    assert write_shards(manifest_path, out, overwrite=True, max_samples_per_shard=3)["total_samples"] == 8
    with pytest.raises(BadSampleError, match="unreadable audio"):  # the first bad row aborts
        write_shards(manifest_with_bad_clips(tmp_path / "bad"), tmp_path / "fail", on_bad_sample="fail")


def test_read_back_as_manifest_through_the_spec(tmp_path, shard_cache):
    manifest_path = manifest_with_bad_clips(tmp_path / "data")
    source = open_source(manifest_path)
    write_shards(manifest_path, tmp_path / "corpus" / "train", max_samples_per_shard=5)
    for spec in (f"webdataset:{tmp_path}/corpus/train", f"wds:{tmp_path}/corpus@train"):
        read = open_source(spec)
        assert [r.caption for r in read.rows] == [r.caption for r in source.rows if not str(r.audio).endswith("nan.wav")]
        assert read.labels == [lab for clip, lab in zip(source.clips, source.labels) if not str(clip).endswith("nan.wav")]
        assert len(read.clips) == 12 and read.path.name == "shards.json"
        original = sf.read(source.clips[0], dtype="float32")[0]
        np.testing.assert_allclose(sf.read(read.clips[0], dtype="float32")[0], original, atol=1.01 / 32768)
    assert len(list(shard_cache.iterdir())) == 3  # one folder per shard, extracted once, reused
    assert dataset_splits(f"webdataset:{tmp_path}/corpus") == ["train"]
    assert parse_spec(f"wds:{tmp_path}/corpus").name == "webdataset"
    with pytest.raises(ManifestError, match="name a split.*train"):
        open_source(f"webdataset:{tmp_path}/corpus")
    with pytest.raises(ManifestError, match="not found"):
        open_source(f"webdataset:{tmp_path}/corpus@test")


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def flac(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * 8000)).astype(np.float32)
    sf.write(buf, wave, 8000, format="FLAC")
    return buf.getvalue()


def synthetic_shards(root: Path, counts: list[int], bad: set[int] = frozenset()) -> Path:
    """Shards of short noise clips; sample n has captions "clip n a" / "clip n b"; numbers in ``bad`` hold junk audio."""
    root.mkdir(parents=True)
    n, listed = 0, []
    for s, count in enumerate(counts):
        samples = []
        for _ in range(count):
            audio = b"junk" * 50 if n in bad else flac(0.3, n)
            text = json.dumps({"text": [f"clip {n} a", f"clip {n} b"]}).encode()
            samples.append((f"{n:05d}", {"flac": audio, "json": text}))
            n += 1
        write_tar(root / f"{s}.tar", samples)
        listed.append((f"{s}.tar", count))
    (root / "sizes.json").write_text(json.dumps(dict(listed)))  # LAION-CLAP's index
    return root


def stream(root: Path, batch_size: int, workers: int, **kw) -> ShardStream:
    return ShardStream(open_shards(root), 8000, 0.2, batch_size, seed=3, num_workers=workers, shuffle_buffer=4, **kw)


def flat(batches) -> list[tuple]:
    return [(i, c, a.numpy().tobytes()) for b in batches for i, c, a in zip(b["index"].tolist(), b["caption"], b["audio"])]


def test_stream_two_workers_each_sample_once_and_seeded_order(tmp_path):
    root = synthetic_shards(tmp_path / "wds", [3, 3, 3, 3])
    s = stream(root, batch_size=3, workers=2)
    loader, n = s.loader(0)
    batches = list(loader)
    assert n == len(batches) == 4 and all(len(b["caption"]) == 3 for b in batches)
    numbers = [i for b in batches for i in b["index"].tolist()]
    assert sorted(numbers) == list(range(12))  # every sample exactly once
    plan = s.plan(0)
    assert sorted(sum(plan, [])) == [0, 1, 2, 3] and all(len(p) == 2 for p in plan)
    for j, batch in enumerate(batches):  # workers deliver in turn; each reads only its own shards
        assert {i // 3 for i in batch["index"].tolist()} <= set(plan[j % 2])
    for b in batches:
        assert b["audio"].shape == (3, 1600) and b["bad"] == []
        assert all(c in (f"clip {i} a", f"clip {i} b") for i, c in zip(b["index"].tolist(), b["caption"]))
        assert b["audio_id"].tolist() == b["index"].tolist()
    assert flat(batches) == flat(s.loader(0)[0])  # reproducible per (seed, epoch)
    assert [x[0] for x in flat(s.loader(1)[0])] != numbers  # another order next epoch
    single = stream(root, batch_size=3, workers=0)
    assert sorted(i for b in single.loader(0)[0] for i in b["index"].tolist()) == list(range(12))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumed_at_batch_k_equals_the_uninterrupted_stream(tmp_path, workers):
    root = synthetic_shards(tmp_path / "wds", [5, 3, 4, 1, 2])  # uneven: workers run out at different times
    s = stream(root, batch_size=2, workers=workers)
    full = list(s.loader(1)[0])
    assert len(full) == s.num_batches(1)
    for k in ([1, 2, 3, 5, len(full)] if workers else range(len(full) + 1)):
        loader, n = s.loader(1, skip=k)
        rest = list(loader)
        assert n == len(rest) == len(full) - k
        assert flat(rest) == flat(full[k:]), k


def test_delivery_order_is_round_robin_over_workers_with_batches_left():
    assert delivery_order([3, 1, 2], 0) == ([0, 0, 0], [0, 1, 2])
    assert delivery_order([3, 1, 2], 4) == ([2, 1, 1], [2, 0, 1])  # 0 1 2 0 | next: 2, then 0
    assert delivery_order([3, 1, 2], 9)[0] == [3, 1, 2]  # past the end: all delivered


def test_bad_samples_in_a_stream_are_dropped_and_reported(tmp_path):
    root = synthetic_shards(tmp_path / "wds", [4, 4], bad={2})
    batches = list(stream(root, batch_size=4, workers=0).loader(0)[0])
    assert len(batches) == 2
    bad = [b for b in batches if b["bad"]]
    assert len(bad) == 1 and bad[0]["bad"][0][0] == "0.tar:00002" and len(bad[0]["caption"]) == 3
    with pytest.raises(BadSampleError, match="0.tar:00002"):
        list(stream(root, batch_size=4, workers=0, on_bad_sample="fail").loader(0)[0])


def test_stream_selection_from_the_config(tmp_path):
    root = synthetic_shards(tmp_path / "wds", [4])
    cfg = load_config(None, [f"data.train=webdataset:{root}", "train.batch_size=2", "data.num_workers=0"])
    assert isinstance(stream_for(cfg), ShardStream)
    cfg.data.stream = False
    assert stream_for(cfg) is None
    with pytest.raises(ValueError, match="webdataset:DIR"):
        stream_for(load_config(None, ["data.train=x.csv", "data.stream=true"]))
    with pytest.raises(ValueError, match="noise_ratio"):
        stream_for(load_config(None, [f"data.train=wds:{root}", "data.noise_ratio=0.2"]))


def test_cli_shards_then_train_streaming_and_exact_resume(tone_data, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", str(tone_data["train"]), str(out), "--max-samples-per-shard", "8",
                 "--max-shard-bytes", "1M", "-q"]) == 0
    assert "wrote 32 samples (64 captions) in 4 shards" in capsys.readouterr().out
    args = ["train", "--train", f"webdataset:{out}", "--val", str(tone_data["val"]), "--out", str(tmp_path / "full"),
            "-q", *TINY, "train.batch_size=8", "train.epochs=2", "train.checkpoint_every_steps=1", "data.num_workers=2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 8  # 2 workers x 16 samples / 8 per batch = 4 steps per epoch
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]

    rolled = tmp_path / "rolled"  # back to step 7 (three batches into epoch 2: worker 1 is due), then resume
    shutil.copytree(tmp_path / "full", rolled)
    shutil.rmtree(rolled / "checkpoints" / "step_00000008")
    (rolled / "checkpoints" / "latest").write_text("step_00000007\n")
    assert main([*args[:6], str(rolled), *args[7:], "--resume"]) == 0
    timing = {"data_wait_s", "step_s", "time_s", "data_wait_share"}

    def strip(run):
        return [{k: v for k, v in json.loads(x).items() if k not in timing}
                for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert strip(rolled) == strip(tmp_path / "full")
    assert sha256(rolled / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")


def test_streamed_samples_get_the_wave_augmentation_of_their_number(tmp_path):
    """augment.gain_db / shift_seconds when streaming: each sample is its plain crop, scaled and rolled
    by draws from (seed, epoch, sample number, 1), as in the index-based dataset."""
    root = synthetic_shards(tmp_path / "wds", [3, 3])
    plain = list(stream(root, batch_size=3, workers=0).loader(1)[0])
    augmented = list(stream(root, batch_size=3, workers=0, gain_db=6.0, shift_seconds=0.05).loader(1)[0])
    for p, a in zip(plain, augmented):
        assert p["index"].tolist() == a["index"].tolist() and p["caption"] == a["caption"]
        for row, number in enumerate(p["index"].tolist()):
            rng = np.random.default_rng([3, 1, number, 1])
            g, s = rng.uniform(-6.0, 6.0), int(rng.integers(-400, 401))
            expected = np.roll(p["audio"][row].numpy() * np.float32(10 ** (g / 20)), s)
            np.testing.assert_allclose(a["audio"][row].numpy(), expected, rtol=1e-6)
