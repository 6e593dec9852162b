"""Feature-collapse statistics (against explicit formulas) and the monitor's warning."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clarion.config import load_config
from clarion.evaluate.geometry import collapse_diagnostics, effective_rank, mean_pairwise_cosine
from clarion.models.dual import DualEncoder
from clarion.train.probes import CollapseMonitor
from clarion.train.loop import train

from conftest import TINY


def test_effective_rank_closed_forms_and_numpy_reference():
    assert effective_rank(torch.ones(6, 4)).item() == pytest.approx(1.0)
    assert effective_rank(3.0 * torch.eye(5)[:3]).item() == pytest.approx(3.0)
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(x).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)


def test_mean_pairwise_cosine_matches_a_loop():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = F.normalize(x, dim=-1)
    pairs = [float(u[i] @ u[j]) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(x).item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)


def test_collapsed_and_spread_batches():
    g = torch.Generator().manual_seed(2)
    b, d = 64, 32
    spread = collapse_diagnostics(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g))
    assert abs(spread["collapse_audio_cos"]) < 0.05
    assert spread["collapse_audio_std"] == pytest.approx(1.0, abs=0.1)  # uniform directions: std·√d ≈ 1
    assert spread["collapse_text_rank"] > 0.7 * d
    point = torch.randn(1, d, generator=g) + 1e-4 * torch.randn(b, d, generator=g)
    collapsed = collapse_diagnostics(point, point.clone())
    assert collapsed["collapse_audio_cos"] > 0.999 and collapsed["collapse_text_std"] < 0.01
    assert collapsed["collapse_audio_rank"] < 1.1


def stats(cos=0.1, rank=20.0):
    return {f"collapse_{m}_{k}": v for m in ("audio", "text") for k, v in (("cos", cos), ("rank", rank), ("std", 0.9))}


def test_monitor_warns_once_after_patience_and_ignores_warmup(caplog):
    monitor = CollapseMonitor(max_cos=0.9, min_rank=2.0, patience=3, after_step=20)
    caplog.set_level(logging.WARNING, logger="clarion.train")
    assert not any(monitor.update(step, stats(cos=0.999, rank=1.0)) for step in (10, 20))  # warm-up
    assert not monitor.update(30, stats(cos=0.95))
    assert not monitor.update(40, stats(rank=1.5))
    assert not monitor.update(50, stats())  # a healthy check resets the streak
    fired = [monitor.update(step, stats(cos=0.97)) for step in (60, 70, 80, 90, 100)]
    assert fired == [False, False, True, False, False]
    assert monitor.warned_at_step == 80
    warnings = [r for r in caplog.records if "feature collapse" in r.getMessage()]
    assert len(warnings) == 1 and "0.970" in warnings[0].getMessage()


def test_healthy_statistics_never_warn():
    monitor = CollapseMonitor(patience=1)
    assert not any(monitor.update(step, stats(cos=0.5, rank=3.0)) for step in range(1, 100))


def test_trainer_logs_collapse_statistics_and_warns_on_collapsed_embeddings(tone_data, tmp_path, monkeypatch, caplog):
    def collapsed_audio(self, wave):  # every clip on one direction, still a function of the weights
        e = self.audio_projection(self.audio_encoder(wave)).float()
        return F.normalize(e.mean(0, keepdim=True).expand_as(e) + 1e-6 * e, dim=-1)

    monkeypatch.setattr(DualEncoder, "embed_audio", collapsed_audio)
    caplog.set_level(logging.WARNING, logger="clarion.train")
    cfg = load_config(None, [
        *TINY, f"data.train={tone_data['train']}", "train.batch_size=16", "train.epochs=3",
        "train.collapse_every=1", "train.collapse_patience=2", "train.device=cpu",
    ])
    summary = train(cfg, tmp_path / "run")
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["type"] == "step"]
    assert all(r["collapse_audio_cos"] > 0.99 and r["collapse_audio_rank"] < 1.5 for r in steps)
    assert all(r["collapse_text_cos"] < 0.99 for r in steps)
    warnings = [r for r in caplog.records if "feature collapse" in r.getMessage()]
    assert len(warnings) == 1
    assert summary["collapse_warning_step"] == cfg.train.warmup_steps + 2
