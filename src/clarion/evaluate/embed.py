"""Embed a manifest's clips and captions with a dual encoder, and score retrieval on them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..audio import ClipCache, WindowPlan, embed_windowed, file_windows
from ..data.loaders import ClipDataset, collate
from ..data.records import BadRow, BadSampleError, Manifest
from ..models import DualEncoder
from ..runtime import precision_autocast, resolve_precision
from .geometry import embedding_geometry
from .ot_retrieval import CostFn, euclidean_cost, ot_scores
from .retrieval import retrieval_metrics

log = logging.getLogger("clarion.evaluate")


@torch.no_grad()
def embed_clips(
    model: DualEncoder, manifest: Manifest, cfg: Config, device: torch.device, cache: ClipCache | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Embed every distinct clip (deterministic crop). Returns ``emb`` [n_ok, d] (CPU, fp32),
    ``clip_index`` [n_ok] (index into ``manifest.clips``) and the clips skipped as bad.

    With ``cfg.audio.long == "windows"`` each whole clip is embedded as pooled windows
    (:func:`embed_clip_windows`) instead of its first ``clip_seconds``."""
    if cfg.audio.long == "windows":
        return embed_clip_windows(model, manifest, cfg, device)
    dataset = ClipDataset(
        manifest, cfg.audio.sample_rate, cfg.audio.clip_seconds, cache, cfg.data.on_bad_sample, cfg.audio.max_seconds,
        cfg.audio.pad,
    )
    loader = DataLoader(
        dataset, batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers, collate_fn=collate
    )
    model.eval()
    embeddings, indices, bad = [], [], []
    for batch in loader:
        bad.extend(batch["bad"])
        if len(batch["audio"]) == 0:
            continue
        with precision_autocast(device, eval_precision(cfg, device)):
            embeddings.append(model.embed_audio(batch["audio"].to(device)).float().cpu())
        indices.append(batch["clip"])
    if not embeddings:
        raise ValueError(f"no clip of {manifest.path} could be decoded ({len(bad)} bad)")
    return torch.cat(embeddings), torch.cat(indices), bad


@torch.no_grad()
def embed_clip_windows(
    model: DualEncoder, manifest: Manifest, cfg: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """:func:`embed_clips` in windows mode: every clip streamed whole (no cache, no workers: memory
    stays O(batch · window) for any length), windows batched across clips
    (:func:`clarion.audio.embed_windowed`) and pooled by ``cfg.audio.pool``. A clip that cannot be
    decoded is skipped and logged, or raises :class:`BadSampleError` under ``on_bad_sample=fail``."""
    plan = WindowPlan.from_config(cfg.audio)
    first_line: dict = {}
    for row in manifest.rows:
        first_line.setdefault(row.audio, row.line)
    model.eval()

    def embed(windows: np.ndarray) -> torch.Tensor:
        with precision_autocast(device, eval_precision(cfg, device)):
            return model.embed_audio(torch.from_numpy(windows).to(device)).float().cpu()

    sources = [lambda clip=clip: file_windows(clip, cfg.audio.sample_rate, plan) for clip in manifest.clips]
    embeddings, indices, bad = [], [], []
    for item in embed_windowed(sources, embed, cfg.train.eval_batch_size, cfg.audio.pool):
        if item.error is None:
            embeddings.append(item.embedding)
            indices.append(item.index)
            continue
        clip = manifest.clips[item.index]
        if cfg.data.on_bad_sample == "fail":
            raise BadSampleError.for_row(BadRow(manifest.path, first_line[clip], str(clip), item.error.reason)) from item.error
        log.warning("skipping bad clip (%s:%d) %s", manifest.path, first_line[clip], item.error)
        bad.append((str(clip), item.error.reason))
    if not embeddings:
        raise ValueError(f"no clip of {manifest.path} could be decoded ({len(bad)} bad)")
    return torch.stack(embeddings), torch.tensor(indices, dtype=torch.long), bad


def eval_precision(cfg: Config, device: torch.device) -> str:
    """The arithmetic evaluation runs in: the run's training precision (``train.precision``,
    ``auto`` resolved from ``train.amp`` as in training), so a model is scored as it was trained."""
    return resolve_precision(cfg.train.precision, cfg.train.amp, device)


@torch.no_grad()
def embed_captions(
    model: DualEncoder, captions: list[str], device: torch.device, batch_size: int, precision: str = "fp32"
) -> torch.Tensor:
    """[n, d] caption embeddings (CPU, fp32); the forward passes under ``precision``'s autocast."""
    model.eval()
    out = []
    for start in range(0, len(captions), batch_size):
        with precision_autocast(device, precision):
            out.append(model.embed_text(captions[start : start + batch_size]).float().cpu())
    return torch.cat(out)


@dataclass
class EmbeddedSet:
    """An evaluation manifest embedded: every decodable clip once, every caption of those clips."""

    audio: torch.Tensor  # [n_clips, d] unit norm (CPU, fp32)
    text: torch.Tensor  # [n_captions, d]
    caption_clip: torch.Tensor  # [n_captions] row of each caption's clip in ``audio``
    langs: list[str | None]  # [n_captions] the manifest's ``lang`` of each caption
    skipped_clips: int

    def language(self, lang: str) -> EmbeddedSet:
        """The captions in ``lang`` and the clips they describe (re-indexed)."""
        keep = torch.tensor([x == lang for x in self.langs])
        clips, caption_clip = torch.unique(self.caption_clip[keep], return_inverse=True)
        return EmbeddedSet(self.audio[clips], self.text[keep], caption_clip, [lang] * int(keep.sum()), 0)


def embed_manifest(
    model: DualEncoder, manifest: Manifest, cfg: Config, device: torch.device, cache: ClipCache | None = None
) -> EmbeddedSet:
    """Embed ``manifest``; captions of clips that cannot be decoded are left out (the clips are counted)."""
    audio, clip_index, bad = embed_clips(model, manifest, cfg, device, cache)
    if bad:
        log.warning("%d clip(s) of %s could not be decoded and were left out of evaluation", len(bad), manifest.path)
    position = torch.full((len(manifest.clips),), -1, dtype=torch.long)
    position[clip_index] = torch.arange(len(clip_index))
    caption_clip = position[torch.from_numpy(manifest.audio_ids)]
    keep = (caption_clip >= 0).tolist()
    rows = [row for row, k in zip(manifest.rows, keep) if k]
    text = embed_captions(model, [row.caption for row in rows], device, cfg.train.eval_batch_size, eval_precision(cfg, device))
    return EmbeddedSet(audio, text, caption_clip[torch.tensor(keep)], [row.lang for row in rows], len(bad))


def score_retrieval(data: EmbeddedSet, scoring: str = "cosine", cost_fn: CostFn | None = None, ot_eps: float = 0.03) -> dict:
    """T2A / A2T metrics of an embedded set, ranked by cosine or by an OT plan over the whole set."""
    if scoring == "ot":
        scores, info = ot_scores(data.text, data.audio, cost_fn or euclidean_cost, eps=ot_eps)
        return {**retrieval_metrics(scores, data.caption_clip), "scoring": {"method": "ot", **info}}
    if scoring == "cosine":
        return {**retrieval_metrics(data.text @ data.audio.T, data.caption_clip), "scoring": {"method": "cosine"}}
    raise ValueError(f"scoring must be 'cosine' or 'ot', got {scoring!r}")


def mean_over_languages(per_language: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The unweighted mean of every T2A / A2T metric over languages."""
    return {
        side: {k: sum(m[side][k] for m in per_language.values()) / len(per_language) for k in next(iter(per_language.values()))[side]}
        for side in ("t2a", "a2t")
    }


def evaluate_retrieval(
    model: DualEncoder,
    manifest: Manifest,
    cfg: Config,
    device: torch.device,
    cache: ClipCache | None = None,
    scoring: str = "cosine",
    cost_fn: CostFn | None = None,
    ot_eps: float = 0.03,
) -> dict:
    """Retrieval metrics on ``manifest``, with the embedding geometry and counts.

    ``scoring="cosine"`` ranks by ``t · a``; ``"ot"`` by the entropic transport plan over the
    whole set (:func:`ot_scores`, cost ``cost_fn``, default the Euclidean one). Returns
    ``{"t2a", "a2t", "scoring", "geometry", "counts"}``; when the captions carry two or more
    ``lang`` values, also ``"languages": {lang: {"t2a", "a2t"}}`` (each language's captions
    against the clips they describe) and ``"language_mean"``.
    """
    return retrieval_report(embed_manifest(model, manifest, cfg, device, cache), scoring, cost_fn, ot_eps)


def retrieval_report(data: EmbeddedSet, scoring: str = "cosine", cost_fn: CostFn | None = None, ot_eps: float = 0.03) -> dict:
    """The metrics of :func:`evaluate_retrieval` from an embedded set."""
    metrics = score_retrieval(data, scoring, cost_fn, ot_eps)
    metrics["geometry"] = embedding_geometry(data.audio, data.text, data.caption_clip)
    languages = sorted({lang for lang in data.langs if lang})
    if len(languages) >= 2:
        per_language = {}
        for lang in languages:
            scored = score_retrieval(data.language(lang), scoring, cost_fn, ot_eps)
            per_language[lang] = {"t2a": scored["t2a"], "a2t": scored["a2t"]}
        metrics["languages"] = per_language
        metrics["language_mean"] = mean_over_languages(per_language)
    metrics["counts"] = {"captions": len(data.text), "clips": len(data.audio), "skipped_clips": data.skipped_clips}
    return metrics
