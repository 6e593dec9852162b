import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from data_fixtures import sine, write_empty_wav, write_junk, write_nan_wav, write_sine

from clarion.audio import AudioError, ClipCache, LogMel, WindowPlan, fit_length, pad_to, read_audio, wave_windows

SR = 16000


# read_audio


@pytest.mark.parametrize("ext, tol", [("wav", 1e-3), ("flac", 1e-3), ("aiff", 1e-3), ("ogg", 5e-2)])
def test_read_audio_round_trip(tmp_path, ext, tol):
    wave = write_sine(tmp_path / f"a.{ext}")
    out = read_audio(tmp_path / f"a.{ext}", SR)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.shape == wave.shape
    assert np.abs(out - wave).max() < tol


def test_stereo_is_downmixed_by_mean(tmp_path):
    stereo = np.stack([sine(440, 0.5, SR), sine(1000, 0.5, SR, amplitude=0.25)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    out = read_audio(tmp_path / "s.wav", SR)
    np.testing.assert_allclose(out, stereo.mean(axis=1), atol=1e-7)


def test_resample_keeps_frequency_and_length(tmp_path):
    write_sine(tmp_path / "hi.wav", freq=440, seconds=1.0, sample_rate=44100)
    out = read_audio(tmp_path / "hi.wav", SR)
    assert out.shape == (SR,)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SR / len(out)
    assert abs(peak_hz - 440) <= 1.0


@pytest.mark.parametrize("file_rate", [SR, 44100])
def test_max_seconds_caps_length(tmp_path, file_rate):
    full = write_sine(tmp_path / "long.wav", seconds=3.0, sample_rate=file_rate, subtype="FLOAT")
    out = read_audio(tmp_path / "long.wav", SR, max_seconds=0.5)
    assert out.shape == (SR // 2,)
    if file_rate == SR:
        np.testing.assert_array_equal(out, full[: SR // 2])


def test_max_seconds_tolerates_float_error(tmp_path):
    write_sine(tmp_path / "a.wav", seconds=1.0, sample_rate=44100)
    assert read_audio(tmp_path / "a.wav", 44100, max_seconds=0.1).shape == (4410,)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (write_junk, "cannot decode ("),
        (write_empty_wav, "empty audio (0 samples)"),
        (write_nan_wav, "non-finite samples (NaN/Inf)"),
    ],
    ids=["missing", "junk", "empty", "nan"],
)
def test_read_audio_errors(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        read_audio(path, SR)
    assert info.value.reason.startswith(reason)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"


@pytest.mark.parametrize("keep_bytes", [30, 60, 1000])
def test_truncated_wav_decodes_partly_or_raises_audio_error(tmp_path, keep_bytes):
    write_sine(tmp_path / "full.wav")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:keep_bytes])
    try:
        out = read_audio(tmp_path / "cut.wav", SR)
    except AudioError as e:
        assert e.reason
    else:
        assert out.dtype == np.float32 and 0 < len(out) < SR


# fit_length


def test_fit_length_pads_with_zeros_at_end():
    wave = np.arange(1, 6, dtype=np.float32)
    out = fit_length(wave, 8, None)
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 0, 0, 0])
    assert out.dtype == np.float32


def test_repeat_pad_tiles_the_whole_clip_then_zeros():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert pad_to(x, 8, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 0, 0]
    assert pad_to(x, 8, "zeros").tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert pad_to(x, 3, "repeat").tolist() == [1, 2, 3]
    assert pad_to(x, 5, "repeat").tolist() == [1, 2, 3, 0, 0]  # fewer than two copies fit: zeros, as repeatpad does
    assert fit_length(x, 7, None, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="pad must be"):
        pad_to(x, 8, "reflect")


def test_repeat_pad_equals_hugging_faces_repeatpad():
    """The waveform ClapFeatureExtractor builds from a short clip (padding="repeatpad") before its
    log-mel, written out from its documented rule: tile ⌊max/n⌋ times, then zero-pad."""
    rng = np.random.default_rng(0)
    for n, total in ((7, 64), (10, 64), (33, 64), (64, 64)):
        x = rng.standard_normal(n).astype(np.float32)
        expected = np.zeros(total, dtype=np.float32)
        copies = total // n
        expected[: copies * n] = np.concatenate([x] * copies)
        np.testing.assert_array_equal(pad_to(x, total, "repeat"), expected)


def test_windows_past_the_end_follow_the_pad_mode():
    x = np.arange(1, 6, dtype=np.float32)  # 5 samples, windows of 4 every 4
    zeros = [w.tolist() for _, w in wave_windows(x, WindowPlan(4, 4))]
    repeat = [w.tolist() for _, w in wave_windows(x, WindowPlan(4, 4, "repeat"))]
    assert zeros == [[1, 2, 3, 4], [5, 0, 0, 0]]
    assert repeat == [[1, 2, 3, 4], [5, 5, 5, 5]]


def test_fit_length_exact_length_is_unchanged():
    wave = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wave, 5, np.random.default_rng(0)), wave)


def test_fit_length_eval_crop_is_deterministic_from_start():
    wave = np.arange(100, dtype=np.float32)
    first, second = fit_length(wave, 10, None), fit_length(wave, 10, None)
    np.testing.assert_array_equal(first, wave[:10])
    np.testing.assert_array_equal(first, second)


def test_fit_length_random_crop_is_a_slice_that_depends_on_rng():
    wave = np.arange(100, dtype=np.float32)
    offsets = set()
    for seed in range(8):
        out = fit_length(wave, 10, np.random.default_rng(seed))
        offset = int(out[0])
        np.testing.assert_array_equal(out, wave[offset : offset + 10])
        np.testing.assert_array_equal(out, fit_length(wave, 10, np.random.default_rng(seed)))
        offsets.add(offset)
    assert len(offsets) > 1


def test_fit_length_random_crop_reaches_both_ends():
    wave = np.arange(4, dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {int(fit_length(wave, 3, rng)[0]) for _ in range(50)} == {0, 1}


# ClipCache


def test_clip_cache_hits_and_misses(tmp_path):
    wave = write_sine(tmp_path / "a.wav", sample_rate=22050)
    cache = ClipCache(tmp_path / "cache", SR)
    first = cache.load(tmp_path / "a.wav")
    assert (cache.hits, cache.misses) == (0, 1)
    second = cache.load(tmp_path / "a.wav")
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, read_audio(tmp_path / "a.wav", SR))
    assert len(first) == SR and len(wave) == 22050

    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy"
    assert len(files[0].parent.name) == 2 and files[0].name.startswith(files[0].parent.name)


def test_clip_cache_misses_after_file_changes(tmp_path):
    path = tmp_path / "a.wav"
    write_sine(path, freq=440)
    cache = ClipCache(tmp_path / "cache", SR)
    old = cache.load(path)
    mtime = os.stat(path).st_mtime_ns
    write_sine(path, freq=880)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    new = cache.load(path)
    assert (cache.hits, cache.misses) == (0, 2)
    np.testing.assert_array_equal(new, read_audio(path, SR))
    assert not np.allclose(old, new)


def test_clip_cache_key_includes_settings(tmp_path):
    write_sine(tmp_path / "a.wav", seconds=2.0)
    ClipCache(tmp_path / "cache", SR).load(tmp_path / "a.wav")
    capped = ClipCache(tmp_path / "cache", SR, max_seconds=1.0)
    assert len(capped.load(tmp_path / "a.wav")) == SR
    other_rate = ClipCache(tmp_path / "cache", 8000)
    assert len(other_rate.load(tmp_path / "a.wav")) == 16000
    assert (capped.misses, other_rate.misses) == (1, 1)


def test_clip_cache_does_not_store_errors(tmp_path):
    write_nan_wav(tmp_path / "nan.wav")
    cache = ClipCache(tmp_path / "cache", SR)
    for _ in range(2):
        with pytest.raises(AudioError, match="non-finite"):
            cache.load(tmp_path / "nan.wav")
    assert cache.misses == 2
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    with pytest.raises(AudioError, match="file not found"):
        cache.load(tmp_path / "missing.wav")


# LogMel


@pytest.mark.parametrize("n", [16000, 16001, 1000, 480])
def test_logmel_shape(n):
    out = LogMel(n_mels=40)(torch.randn(3, n))
    assert out.shape == (3, 40, 1 + n // 160)
    assert out.dtype == torch.float32


def reference_filterbank(sample_rate, n_fft, n_mels, f_min, f_max):
    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    lo, hi = mel(f_min), mel(f_max)
    edges = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sample_rate / n_fft
            if left < f <= centre:
                weights[k, m] = (f - left) / (centre - left)
            elif centre < f < right:
                weights[k, m] = (right - f) / (right - centre)
    return weights


@pytest.mark.parametrize(
    "sample_rate, n_fft, n_mels, f_min, f_max",
    [(16000, 512, 64, 0.0, None), (32000, 1024, 128, 50.0, 14000.0), (22050, 400, 20, 20.0, 8000.0)],
)
def test_logmel_filterbank_matches_explicit_htk_triangles(sample_rate, n_fft, n_mels, f_min, f_max):
    module = LogMel(sample_rate, n_fft, n_fft // 4, n_mels, f_min, f_max)
    expected = reference_filterbank(sample_rate, n_fft, n_mels, f_min, sample_rate / 2 if f_max is None else f_max)
    assert module.filterbank.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(module.filterbank.numpy(), expected, atol=1e-6)
    assert module.filterbank.max() <= 1.0


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 7000.0])
def test_logmel_tone_peaks_in_nearest_band(freq):
    module = LogMel()
    energy = module(torch.from_numpy(sine(freq, 1.0, SR))[None])[0].mean(dim=1)
    mel_edges = np.linspace(0.0, 2595.0 * math.log10(1 + 8000 / 700), 64 + 2)
    centres = 700.0 * (10.0 ** (mel_edges[1:-1] / 2595.0) - 1.0)
    assert int(energy.argmax()) == int(np.argmin(np.abs(centres - freq)))


def test_logmel_of_silence_is_log_floor():
    out = LogMel()(torch.zeros(2, 4000))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, math.log(1e-6)))


def test_logmel_runs_in_float32_under_autocast():
    module = LogMel()
    wave = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(wave)
        from_bf16 = module(wave.bfloat16())
    assert out.dtype == from_bf16.dtype == torch.float32
    torch.testing.assert_close(out, module(wave))
    torch.testing.assert_close(from_bf16, module(wave.bfloat16().float()))


def test_logmel_buffers_are_not_saved():
    module = LogMel()
    assert module.state_dict() == {}
    assert {name for name, _ in module.named_buffers()} == {"window", "filterbank"}


def test_logmel_rejects_bad_config_and_shape():
    with pytest.raises(ValueError):
        LogMel(sample_rate=16000, f_max=9000.0)
    with pytest.raises(ValueError):
        LogMel()(torch.randn(16000))
