"""Training augmentation (audio/augment.py, train/augment.py): each transform against an explicit
reference, determinism from its key, nothing in eval mode, GradCache replay, resume exactness."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clarion.audio.augment import SpecAugment, mask_spans, mix_lambda, mixup, random_gain, time_shift
from clarion.config import AugmentConfig, ConfigError, config_from_dict, load_config
from clarion.data.loaders import AudioTextDataset
from clarion.data.manifest import read_manifest
from clarion.models import build_model, train_tokenizer
from clarion.models.panns import Cnn14
from clarion.objectives import build_objective
from clarion.rundir import sha256
from clarion.train.augment import BatchAugment
from clarion.train.gradcache import GradCache
from clarion.train.loop import train

from conftest import TINY
from test_train import AUGMENTED, epoch_records, tiny_cfg


def test_random_gain_is_exact_in_db_and_within_range():
    wave = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    gains = []
    for k in range(200):
        out, g = random_gain(wave, 6.0, np.random.default_rng(k))
        assert -6.0 <= g <= 6.0
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, wave * 10 ** (g / 20), rtol=1e-6)
        # the level change measured on the signal is the drawn gain
        assert 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2) / np.mean(wave.astype(np.float64) ** 2))) == pytest.approx(g, abs=1e-4)
        gains.append(g)
    assert min(gains) < -5 and max(gains) > 5  # the whole range is drawn


def test_time_shift_is_circular_and_bounded():
    wave = np.arange(50, dtype=np.float32)
    seen = set()
    for k in range(300):
        out, s = time_shift(wave, 7, np.random.default_rng(k))
        assert -7 <= s <= 7
        expected = np.empty_like(wave)
        for i in range(len(wave)):  # out[(i + s) mod n] = wave[i]
            expected[(i + s) % len(wave)] = wave[i]
        np.testing.assert_array_equal(out, expected)
        seen.add(s)
    assert seen == set(range(-7, 8))


def test_mixup_matches_laion_formula_and_lambda_is_beta():
    x = torch.randn(5, 3, 4)
    lam = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    out = mixup(x, lam)
    for i in range(5):
        torch.testing.assert_close(out[i], lam[i] * x[i] + (1 - lam[i]) * x[4 - i])
    draws = mix_lambda(0.5, 20000, np.random.default_rng(1))
    assert draws.dtype == np.float32 and draws.shape == (20000,)
    assert draws.min() >= 0 and draws.max() <= 1
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)); α = 0.5 puts mass at both ends
    assert draws.mean() == pytest.approx(0.5, abs=0.01)
    assert draws.var() == pytest.approx(1 / (4 * 2.0), abs=0.01)
    assert (draws < 0.05).mean() > 0.1 and (draws > 0.95).mean() > 0.1


def _reference_spans(batch, count, max_width, size, seed):
    """The same draws as mask_spans, written as loops."""
    g = torch.Generator().manual_seed(seed)
    width = torch.randint(0, min(max_width, size) + 1, (batch, count), generator=g)
    u = torch.rand(batch, count, generator=g)
    mask = np.zeros((batch, size), dtype=bool)
    for b in range(batch):
        for k in range(count):
            w = int(width[b, k])
            start = int(np.floor(float(u[b, k]) * (size - w + 1)))
            assert 0 <= start and start + w <= size
            mask[b, start : start + w] = True
    return mask, width


@pytest.mark.parametrize("max_width, size", [(5, 40), (60, 40)])
def test_mask_spans_against_loops_and_bounds(max_width, size):
    for seed in range(20):
        mask = mask_spans(6, 2, max_width, size, torch.Generator().manual_seed(seed))
        expected, width = _reference_spans(6, 2, max_width, size, seed)
        np.testing.assert_array_equal(mask.numpy(), expected)
        assert int(width.max()) <= min(max_width, size)
        assert (mask.sum(1) <= 2 * min(max_width, size)).all()


def test_spec_augment_masks_both_axes_in_training_only():
    x = torch.randn(4, 16, 30) + 5  # [B, M, T], no zeros of its own
    spec = SpecAugment(time_masks=2, time_width=6, freq_masks=1, freq_width=4, freq_axis=-2, time_axis=-1).train()
    spec.reseed([3, 17, 0])
    out = spec(x)
    zero = out == 0
    # a masked time frame is zero over every mel bin, a masked bin over every frame
    time_masked = zero.all(1)  # [B, T]
    freq_masked = zero.all(2)  # [B, M]
    assert torch.equal(zero, time_masked[:, None, :] | freq_masked[:, :, None])
    assert (time_masked.sum(1) <= 12).all() and (freq_masked.sum(1) <= 4).all()
    torch.testing.assert_close(out[~zero], x[~zero])
    # reference: the same generator draws, time spans first, then frequency spans
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([3, 17, 0]).generate_state(1, np.uint64)[0] >> np.uint64(1)))
    t_ref = mask_spans(4, 2, 6, 30, g)
    f_ref = mask_spans(4, 1, 4, 16, g)
    assert torch.equal(time_masked, t_ref) and torch.equal(freq_masked, f_ref)
    # the same key gives the same masks, another key others
    spec.reseed([3, 17, 0])
    assert torch.equal(spec(x), out)
    spec.reseed([3, 18, 0])
    assert not torch.equal(spec(x), out)
    assert torch.equal(spec.eval()(x), x)  # never in eval mode


def test_encoders_apply_spec_augment_in_training_and_never_in_eval(tone_data):
    cfg = load_config(None, [*TINY, "augment.time_masks=2", "augment.time_mask_frames=20", "augment.freq_masks=1",
                             "augment.freq_mask_bins=8", "model.dropout=0"])
    model = build_model(cfg, train_tokenizer(["a b"], 50))
    spec = model.audio_encoder.spec_augment
    assert (spec.time_masks, spec.time_width, spec.freq_masks, spec.freq_width) == (2, 20, 1, 8)
    wave = torch.randn(3, 16000)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.embed_audio(wave), model.embed_audio(wave))
    off = build_model(load_config(None, [*TINY, "model.dropout=0"]), train_tokenizer(["a b"], 50))
    off.load_state_dict(model.state_dict())  # no parameters or buffers added: checkpoints are unchanged
    off.eval()
    with torch.no_grad():
        torch.testing.assert_close(off.embed_audio(wave), model.embed_audio(wave))
        model.train(), off.train()
        spec.reseed([0, 1, 0])
        assert not torch.allclose(off.embed_audio(wave), model.embed_audio(wave))
    panns = Cnn14(width=2).train()
    panns.spec_augment.time_masks, panns.spec_augment.time_width = 1, 10
    seen = {}
    panns.features = lambda x: seen.setdefault("x", x).new_zeros(len(x), panns.output_dim, 1, 1)  # record the input
    panns(torch.randn(2, 32000))
    masked = (seen["x"] == 0).all(-1)[:, 0]  # [B, T]: whole frames masked across the 64 mel bins
    assert masked.any() and masked.sum(1).max() <= 10


def test_spec_augment_refused_for_towers_without_a_log_mel():
    cfg = load_config(None, [*TINY, "augment.time_masks=1", "augment.time_mask_frames=4"])
    from clarion.models import _configure_spec_augment

    with pytest.raises(ConfigError, match="not supported by model.audio_encoder"):
        _configure_spec_augment(nn.Linear(2, 2), cfg)


def test_config_defaults_are_off_and_old_configs_load():
    cfg = load_config(None, [])
    assert cfg.augment == AugmentConfig() and not cfg.augment.spec_augment
    old = cfg.to_dict()
    del old["augment"]  # a run directory written before augmentation existed
    assert config_from_dict(old).augment == AugmentConfig()
    with pytest.raises(ConfigError, match="augment.gain_db"):
        load_config(None, ["augment.gain_db=-1"])
    with pytest.raises(ConfigError, match="augment.time_masks"):
        load_config(None, ["augment.time_masks=1.5"])


def test_training_dataset_applies_gain_then_shift_from_its_row_key(tone_data):
    manifest = read_manifest(tone_data["train"])
    augment = AugmentConfig(gain_db=6.0, shift_seconds=0.25)
    plain = AudioTextDataset(manifest, 16000, 1.0, train=True, seed=5)
    augmented = AudioTextDataset(manifest, 16000, 1.0, train=True, seed=5, augment=augment)
    for ds in (plain, augmented):
        ds.set_epoch(2)
    for i in (0, 7, 31):
        rng = np.random.default_rng([5, 2, i, 1])
        g = rng.uniform(-6.0, 6.0)
        s = int(rng.integers(-4000, 4001))
        expected = np.roll(plain[i]["audio"] * np.float32(10 ** (g / 20)), s)
        np.testing.assert_allclose(augmented[i]["audio"], expected, rtol=1e-6)
    evaluation = AudioTextDataset(manifest, 16000, 1.0, train=False, augment=augment)
    np.testing.assert_array_equal(evaluation[3]["audio"], AudioTextDataset(manifest, 16000, 1.0, train=False)[3]["audio"])


def test_trainer_batches_carry_the_wave_augmentation(tone_data, tmp_path):
    """The trainer's own loader: each row is the un-augmented crop with its gain and shift applied."""
    from clarion.train.loop import Trainer

    def trainer(*extra):
        cfg = tiny_cfg(tone_data, *extra)
        train_set = read_manifest(cfg.data.train)
        model = build_model(cfg, train_tokenizer(train_set.captions, cfg.model.vocab_size))
        return Trainer(cfg, tmp_path, model, build_objective("infonce"), train_set, None, torch.device("cpu"), None)

    plain = next(iter(trainer()._epoch_loader(1)[0]))
    augmented = next(iter(trainer("augment.gain_db=6", "augment.shift_seconds=0.25")._epoch_loader(1)[0]))
    assert torch.equal(plain["index"], augmented["index"])
    for row, i in enumerate(plain["index"].tolist()):
        rng = np.random.default_rng([0, 1, i, 1])
        g, s = rng.uniform(-6.0, 6.0), int(rng.integers(-4000, 4001))
        expected = np.roll(plain["audio"][row].numpy() * np.float32(10 ** (g / 20)), s)
        np.testing.assert_allclose(augmented["audio"][row].numpy(), expected, rtol=1e-6)


def test_batch_mixup_is_keyed_to_seed_step_and_rank():
    model = nn.Sequential(SpecAugment(time_masks=1, time_width=2))
    batch = {"audio": torch.randn(6, 100), "caption": list("abcdef"), "audio_id": torch.arange(6), "index": torch.arange(6)}
    augment = BatchAugment(AugmentConfig(mixup_alpha=0.4), model, seed=9, rank=1)
    out = augment(batch, step=12)
    lam = np.random.default_rng([9, 12, 1, 2]).beta(0.4, 0.4, size=6)
    for i in range(6):
        expected = lam[i] * batch["audio"][i] + (1 - lam[i]) * batch["audio"][5 - i]
        torch.testing.assert_close(out["audio"][i], expected.float())
    assert out["caption"] == batch["caption"] and torch.equal(out["audio_id"], batch["audio_id"])
    assert torch.equal(augment(batch, step=12)["audio"], out["audio"])
    assert not torch.equal(augment(batch, step=13)["audio"], out["audio"])
    assert model[0].generator is not None  # the active SpecAugment was seeded
    off = BatchAugment(AugmentConfig(), model, seed=9)
    assert off(batch, step=12) is batch


class _MaskedNet(nn.Module):
    """A toy dual encoder whose audio tower masks its [B, 2, 3] input with SpecAugment."""

    def __init__(self):
        super().__init__()
        self.spec = SpecAugment(time_masks=1, time_width=2, freq_masks=1, freq_width=1)
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4))
        self.text = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, xa, xt):
        return F.normalize(self.audio(self.spec(xa.view(-1, 2, 3)).flatten(1)), dim=-1), F.normalize(self.text(xt), dim=-1)


def test_gradcache_replays_spec_augment_masks():
    """Chunked embedding draws masks per chunk; the second pass must redraw the same ones, so the
    gradient equals a graph-keeping forward of the same chunks from the same seed."""
    torch.manual_seed(0)
    model, objective = _MaskedNet().train(), build_objective("infonce")
    xa, xt, ids = torch.randn(8, 6) + 3, torch.randn(8, 6), torch.arange(8)
    reference, reference_objective = copy.deepcopy(model), copy.deepcopy(objective)
    reference.spec.reseed([1, 2, 0])
    parts = [reference(xa[i:j], xt[i:j]) for i, j in ((0, 3), (3, 6), (6, 8))]
    reference_objective(torch.cat([a for a, _ in parts]), torch.cat([t for _, t in parts]), ids).loss.backward()

    model.spec.reseed([1, 2, 0])
    cache = GradCache(model, model, 3, torch.device("cpu"))
    a, t = cache.embed(xa, xt)
    objective(a, t, ids).loss.backward()
    cache.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_augmented_training_resumes_exactly(tone_data, tmp_path):
    """Roll an augmented run back to its epoch-1 checkpoint and resume: every draw is keyed to the
    seed and step or row, so the replayed epochs equal the original ones."""
    import shutil

    cfg = tiny_cfg(tone_data, "train.epochs=2", *AUGMENTED)
    train(cfg, tmp_path / "full")
    plain = train(tiny_cfg(tone_data, "train.epochs=2"), tmp_path / "plain")
    shutil.copytree(tmp_path / "full", tmp_path / "rolled")
    checkpoints = tmp_path / "rolled" / "checkpoints"
    shutil.rmtree(checkpoints / "step_00000008")
    (checkpoints / "latest").write_text("step_00000004\n")
    assert train(cfg, tmp_path / "rolled", resume=True)["step"] == 8
    timing = {"time_s", "data_wait_share"}
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(epoch_records(tmp_path / "rolled")) == strip(epoch_records(tmp_path / "full"))
    assert sha256(tmp_path / "rolled" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")
    assert sha256(tmp_path / "plain" / "model.safetensors") != sha256(tmp_path / "full" / "model.safetensors")
    assert plain["step"] == 8
