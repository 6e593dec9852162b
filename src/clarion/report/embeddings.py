"""Embed a manifest with a run's model for the report, and the pure geometry the plots show.

The pure pieces (:func:`pca_2d`, :func:`first_clips`) take and return arrays; :func:`embed_run`
is the only function here that touches a model. The modality gap is
:func:`clarion.evaluate.geometry.modality_gap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import Manifest


@dataclass
class RunEmbeddings:
    """A run's embeddings of one manifest: ``audio`` [n_clips, d] (the decodable clips, in manifest
    order), ``text`` [n_captions, d] (the captions of those clips) and ``caption_clip`` [n_captions],
    each caption's row in ``audio``."""

    audio: np.ndarray
    text: np.ndarray
    caption_clip: np.ndarray
    skipped_clips: int = 0


def pca_2d(audio: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project audio [Na, d] and text [Nt, d] on the first two principal axes of their joint,
    centred cloud. Returns (audio [Na, 2], text [Nt, 2], explained-variance share [2]).

    Computed by SVD in float64; each axis' sign is fixed so that its largest-magnitude
    loading is positive, so the picture does not flip between runs of the code.
    """
    joint = torch.from_numpy(np.concatenate([audio, text]).astype(np.float64))
    centred = joint - joint.mean(0, keepdim=True)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # d == 1 or a single point: pad with a zero axis
        axes = torch.cat([axes, torch.zeros(2 - axes.shape[0], axes.shape[1], dtype=axes.dtype)])
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    projected = (centred @ axes.T).numpy()
    variance = s.square()
    share = (variance[:2] / variance.sum().clamp(min=1e-300)).numpy()
    share = np.pad(share, (0, 2 - len(share)))
    return projected[: len(audio)], projected[len(audio) :], share


def first_clips(caption_clip: np.ndarray, max_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """The subset for the heatmaps: clip rows ``0 .. min(max_clips, n) - 1`` and the indices of their
    captions, ordered by clip (stable: a clip's captions in manifest order)."""
    caption_clip = np.asarray(caption_clip)
    n_clips = int(caption_clip.max()) + 1 if len(caption_clip) else 0
    clips = np.arange(min(max_clips, n_clips))
    captions = np.nonzero(caption_clip < len(clips))[0]
    captions = captions[np.argsort(caption_clip[captions], kind="stable")]
    return clips, captions


def embed_run(run: str | Path, manifest: Manifest, device: torch.device) -> RunEmbeddings:
    """Embed ``manifest``'s clips and captions with the run's best model (captions of clips
    that fail to decode are left out, as evaluation does)."""
    from ..evaluate.embed import embed_manifest
    from ..rundir import load_model

    cfg, model = load_model(run, device)
    cfg.data.on_bad_sample = "skip"
    data = embed_manifest(model, manifest, cfg, device)
    return RunEmbeddings(data.audio.numpy(), data.text.numpy(), data.caption_clip.numpy(), data.skipped_clips)
