"""Embed a manifest's clips and captions with a dual encoder, and score retrieval on them."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data.audio import ClipCache
from ..data.dataset import ClipDataset, collate
from ..data.manifest import Manifest
from ..models import DualEncoder
from .ot_retrieval import CostFn, euclidean_cost, ot_scores
from .retrieval import retrieval_metrics

log = logging.getLogger("clarion.evaluate")


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def embed_clips(
    model: DualEncoder, manifest: Manifest, cfg: Config, device: torch.device, cache: ClipCache | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Embed every distinct clip (deterministic crop). Returns ``emb`` [n_ok, d] (CPU, fp32),
    ``clip_index`` [n_ok] (index into ``manifest.clips``) and the clips skipped as bad."""
    dataset = ClipDataset(
        manifest, cfg.audio.sample_rate, cfg.audio.clip_seconds, cache, cfg.data.on_bad_sample, cfg.audio.max_seconds
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
        with autocast_for(device, cfg.train.amp):
            embeddings.append(model.embed_audio(batch["audio"].to(device)).float().cpu())
        indices.append(batch["clip"])
    if not embeddings:
        raise ValueError(f"no clip of {manifest.path} could be decoded ({len(bad)} bad)")
    return torch.cat(embeddings), torch.cat(indices), bad


@torch.no_grad()
def embed_captions(model: DualEncoder, captions: list[str], device: torch.device, batch_size: int, amp: bool) -> torch.Tensor:
    """[n, d] caption embeddings (CPU, fp32)."""
    model.eval()
    out = []
    for start in range(0, len(captions), batch_size):
        with autocast_for(device, amp):
            out.append(model.embed_text(captions[start : start + batch_size]).float().cpu())
    return torch.cat(out)


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
    """T2A / A2T metrics on ``manifest`` plus counts; captions of undecodable clips are left out (counted).

    ``scoring="cosine"`` ranks by ``t · a``; ``"ot"`` by the entropic transport plan over the
    whole set (:func:`ot_scores`, cost ``cost_fn``, default the Euclidean one).
    """
    if scoring not in ("cosine", "ot"):
        raise ValueError(f"scoring must be 'cosine' or 'ot', got {scoring!r}")
    audio, clip_index, bad = embed_clips(model, manifest, cfg, device, cache)
    position = torch.full((len(manifest.clips),), -1, dtype=torch.long)
    position[clip_index] = torch.arange(len(clip_index))
    caption_clip = position[torch.from_numpy(manifest.audio_ids)]
    keep = caption_clip >= 0
    captions = [c for c, k in zip(manifest.captions, keep.tolist()) if k]
    text = embed_captions(model, captions, device, cfg.train.eval_batch_size, cfg.train.amp)
    if scoring == "ot":
        scores, info = ot_scores(text, audio, cost_fn or euclidean_cost, eps=ot_eps)
        metrics = retrieval_metrics(scores, caption_clip[keep])
        metrics["scoring"] = {"method": "ot", **info}
    else:
        metrics = retrieval_metrics(text @ audio.T, caption_clip[keep])
        metrics["scoring"] = {"method": "cosine"}
    metrics["counts"] = {"captions": len(captions), "clips": len(clip_index), "skipped_clips": len(bad)}
    if bad:
        log.warning("%d clip(s) of %s could not be decoded and were left out of evaluation", len(bad), manifest.path)
    return metrics
