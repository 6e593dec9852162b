"""GradCache (train/gradcache.py): chunked embedding with the whole batch's gradient."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clarion.config import load_config
from clarion.data.manifest import read_manifest
from clarion.models import build_model, train_tokenizer
from clarion.objectives import build_objective
from clarion.rundir import build_run_objective
from clarion.train.gradcache import GradCache
from clarion.train.loop import Trainer, seed_everything

from conftest import TINY

B, D_IN, DIM = 10, 6, 4


class Net(nn.Module):
    """A toy dual encoder on feature vectors: Linear → norm → ReLU → Dropout → Linear per modality."""

    def __init__(self, norm: type[nn.Module], dropout: float):
        super().__init__()

        def tower() -> nn.Module:
            return nn.Sequential(nn.Linear(D_IN, 16), norm(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, DIM))

        self.audio, self.text = tower(), tower()

    def forward(self, xa: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.audio(xa), dim=-1), F.normalize(self.text(xt), dim=-1)


def _setup(norm, dropout):
    torch.manual_seed(0)
    model, objective = Net(norm, dropout).train(), build_objective("infonce")
    xa, xt = torch.randn(B, D_IN), torch.randn(B, D_IN)
    ids = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6, 6, 7])
    return model, objective, xa, xt, ids


def _gradcache_step(model, objective, xa, xt, ids, chunk):
    cache = GradCache(model, model, chunk, torch.device("cpu"))
    a, t = cache.embed(xa, xt)
    objective(a, t, ids).loss.backward()
    cache.backward()


def _grads(*modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters() if p.grad is not None}


def _assert_same(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)


def test_gradcache_equals_the_full_batch_step_with_per_sample_norms():
    """LayerNorm, no dropout: the chunked gradients are the plain full-batch step's (fp32)."""
    model, objective, xa, xt, ids = _setup(nn.LayerNorm, 0.0)
    plain, plain_objective = copy.deepcopy(model), copy.deepcopy(objective)
    plain_objective(*plain(xa, xt), ids).loss.backward()
    _gradcache_step(model, objective, xa, xt, ids, chunk=4)
    _assert_same(_grads(model, objective), _grads(plain, plain_objective))


def test_gradcache_replays_dropout_and_updates_batchnorm_once():
    """Dropout and BatchNorm in train mode: the gradient equals a forward of the same chunks with
    graphs (same dropout draws, per-chunk BatchNorm statistics) and backward, the computation
    GradCache does with one chunk's memory; running statistics move once per chunk; the RNG ends
    where that forward leaves it. The plain full-batch step differs: batch statistics per chunk."""
    model, objective, xa, xt, ids = _setup(nn.BatchNorm1d, 0.3)
    chunked, chunked_objective, plain = copy.deepcopy(model), copy.deepcopy(objective), copy.deepcopy(model)
    start = torch.get_rng_state()
    parts = [chunked(xa[i:j], xt[i:j]) for i, j in ((0, 3), (3, 6), (6, 8), (8, 10))]  # 10 rows, chunk_size 3
    chunked_objective(torch.cat([a for a, _ in parts]), torch.cat([t for _, t in parts]), ids).loss.backward()
    end = torch.get_rng_state()

    torch.set_rng_state(start)
    _gradcache_step(model, objective, xa, xt, ids, chunk=3)
    assert torch.equal(torch.get_rng_state(), end)
    _assert_same(_grads(model, objective), _grads(chunked, chunked_objective))
    for (name, buffer), expected in zip(model.named_buffers(), chunked.buffers()):
        assert torch.equal(buffer, expected), name  # running mean / var / count: one update per chunk

    torch.set_rng_state(start)
    plain_objective = build_objective("infonce")
    plain_objective(*plain(xa, xt), ids).loss.backward()
    with pytest.raises(AssertionError):
        _assert_same(_grads(plain), _grads(model))


def _trainer(tone_data, tmp_path, *extra) -> Trainer:
    cfg = load_config(None, [*TINY, f"data.train={tone_data['train']}", "train.batch_size=16", "train.grad_clip=0",
                             "objective.name=infonce+svr", "model.freeze_audio=true", "model.dropout=0", *extra])
    seed_everything(cfg.train.seed)
    train_set = read_manifest(cfg.data.train)
    model = build_model(cfg, train_tokenizer(train_set.captions, cfg.model.vocab_size))
    return Trainer(cfg, tmp_path, model, build_run_objective(cfg), train_set, None, torch.device("cpu"), None)


def test_trainer_step_with_chunks_equals_the_plain_step(tone_data, tmp_path):
    """``train.chunk_size``: the trainer's step gives the plain step's gradients (model and objective
    parameters; audio tower frozen, so its BatchNorm is in eval mode; text chunks pad differently)."""
    plain, chunked = _trainer(tone_data, tmp_path), _trainer(tone_data, tmp_path, "train.chunk_size=6")
    batch = next(iter(plain._epoch_loader(0)[0]))
    expected, actual = plain.train_step(batch), chunked.train_step(batch)
    assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    _assert_same(_grads(chunked.model, chunked.objective), _grads(plain.model, plain.objective))
    with pytest.raises(ValueError, match="chunk_size"):
        GradCache(plain.model, plain.model, 0, torch.device("cpu"))
