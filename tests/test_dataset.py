import logging

import numpy as np
import pytest
import torch
from data_fixtures import write_nan_wav, write_noise

from clarion.audio import ClipCache, fit_length, read_audio
from clarion.data.loaders import AudioTextDataset, ClipDataset, collate
from clarion.data.manifest import BadSampleError, read_manifest, write_manifest

SR = 16000
CLIP_SECONDS = 0.25
N = round(CLIP_SECONDS * SR)


@pytest.fixture
def manifest(tmp_path):
    """Clips a, b (1 s of noise), c (0.1 s, shorter than a crop) with 2 captions each, then a NaN clip.

    Rows (CSV lines 2..8): a, b, a, c, b, c, nan.
    """
    write_noise(tmp_path / "a.wav", 1.0, seed=1)
    write_noise(tmp_path / "b.wav", 1.0, seed=2)
    write_noise(tmp_path / "c.wav", 0.1, seed=3)
    write_nan_wav(tmp_path / "nan.wav")
    order = ["a", "b", "a", "c", "b", "c", "nan"]
    write_manifest(tmp_path / "m.csv", [{"audio": f"{n}.wav", "caption": f"{n} {i}"} for i, n in enumerate(order)])
    return read_manifest(tmp_path / "m.csv")


def test_train_item_fields_and_crop(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=3)
    assert len(ds) == 7
    item = ds[2]
    assert item["caption"] == "a 2" and item["audio_id"] == 0 and item["index"] == 2
    assert item["audio"].dtype == np.float32 and item["audio"].shape == (N,)
    full = read_audio(manifest.rows[2].audio, SR)
    offset = int(np.flatnonzero(full == item["audio"][0])[0])
    np.testing.assert_array_equal(item["audio"], full[offset : offset + N])
    short = ds[3]["audio"]
    np.testing.assert_array_equal(short[: SR // 10], read_audio(manifest.rows[3].audio, SR))
    assert not short[SR // 10 :].any()


def test_train_crops_reproducible_and_vary_with_epoch(manifest):
    first = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=7)
    again = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=7)
    other_seed = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=8)
    for ds in (first, again, other_seed):
        ds.set_epoch(4)
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(first[i]["audio"], again[i]["audio"])
    assert any(not np.array_equal(first[i]["audio"], other_seed[i]["audio"]) for i in (0, 1, 2, 4))
    epoch4 = [first[i]["audio"] for i in (0, 1, 2, 4)]
    first.set_epoch(5)
    assert any(not np.array_equal(a, first[i]["audio"]) for a, i in zip(epoch4, (0, 1, 2, 4)))
    # rows 0 and 2 share a clip but draw their own crops
    assert not np.array_equal(first[0]["audio"], first[2]["audio"])


def test_eval_items_are_deterministic(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=False, seed=1)
    ds.set_epoch(9)
    for i in (0, 1, 4):
        np.testing.assert_array_equal(ds[i]["audio"], ds[i]["audio"])
        np.testing.assert_array_equal(ds[i]["audio"], read_audio(manifest.rows[i].audio, SR)[:N])


def test_nan_clip_skipped_with_reason(manifest, caplog):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True)
    with caplog.at_level(logging.WARNING, logger="clarion.data"):
        item = ds[6]
        assert ds[6] == item
    assert item == {"bad": (str(manifest.rows[6].audio), "non-finite samples (NaN/Inf)"), "index": 6}
    assert len(caplog.records) == 1
    assert "nan.wav" in caplog.records[0].getMessage()


def test_nan_clip_fails_under_fail_policy(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, on_bad_sample="fail")
    with pytest.raises(BadSampleError) as info:
        ds[6]
    assert str(info.value).startswith(f"{manifest.path}:8: non-finite samples (NaN/Inf)")
    assert ds[0]["audio"].shape == (N,)


def test_collate_drops_bad_items(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=False)
    batch = collate([ds[i] for i in (5, 6, 1)])
    assert batch["audio"].dtype == torch.float32 and batch["audio"].shape == (2, N)
    torch.testing.assert_close(batch["audio"][1], torch.from_numpy(ds[1]["audio"]))
    assert batch["caption"] == ["c 5", "b 1"]
    assert batch["audio_id"].tolist() == [2, 1] and batch["audio_id"].dtype == torch.long
    assert batch["index"].tolist() == [5, 1]
    assert batch["bad"] == [(str(manifest.rows[6].audio), "non-finite samples (NaN/Inf)")]


def test_collate_all_bad(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=False)
    batch = collate([ds[6], ds[6]])
    assert batch["audio"].shape == (0, 0)
    assert batch["index"].shape == (0,)
    assert len(batch["bad"]) == 2


def test_dataloader_with_workers_matches_direct_access(manifest):
    ds = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=5)
    ds.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    seen, bad = {}, []
    for batch in loader:
        for index, audio in zip(batch["index"].tolist(), batch["audio"]):
            seen[index] = audio.numpy()
        bad += batch["bad"]
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert [reason for _, reason in bad] == ["non-finite samples (NaN/Inf)"]
    for index, audio in seen.items():
        np.testing.assert_array_equal(audio, ds[index]["audio"])


def test_dataset_through_cache(manifest, tmp_path):
    cache = ClipCache(tmp_path / "cache", SR)
    cached = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, cache=cache, seed=2)
    plain = AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, seed=2)
    for _ in range(2):
        for i in range(6):
            np.testing.assert_array_equal(cached[i]["audio"], plain[i]["audio"])
    assert cache.misses == 3 and cache.hits == 9
    assert cached[6]["bad"][1] == "non-finite samples (NaN/Inf)"


def test_cache_settings_must_match(manifest, tmp_path):
    with pytest.raises(ValueError, match="Hz"):
        AudioTextDataset(manifest, SR, CLIP_SECONDS, train=True, cache=ClipCache(tmp_path / "c", 8000))
    with pytest.raises(ValueError, match="caps"):
        ClipDataset(manifest, SR, CLIP_SECONDS, cache=ClipCache(tmp_path / "c", SR, 5.0), max_seconds=2.0)


def test_clip_dataset(manifest):
    ds = ClipDataset(manifest, SR, CLIP_SECONDS)
    assert len(ds) == 4
    for j in range(3):
        item = ds[j]
        assert item["clip"] == j
        np.testing.assert_array_equal(item["audio"], fit_length(read_audio(manifest.clips[j], SR), N, None))
    assert ds[3] == {"bad": (str(manifest.clips[3]), "non-finite samples (NaN/Inf)"), "clip": 3}
    batch = collate([ds[j] for j in range(4)])
    assert batch["audio"].shape == (3, N) and batch["clip"].tolist() == [0, 1, 2]
    assert "caption" not in batch and "audio_id" not in batch and len(batch["bad"]) == 1

    strict = ClipDataset(manifest, SR, CLIP_SECONDS, on_bad_sample="fail")
    with pytest.raises(BadSampleError, match=r"m\.csv:8: non-finite"):
        strict[3]
