"""Zero-shot classification with a dual encoder (docs/methods.md §6: prompt "This is a sound of {label}.").

Each class ``c`` is the text of one or more prompt templates with its label filled in; a clip is
assigned the class whose text embedding is most similar (cosine) to its audio embedding. Reported:
top-1 and top-5 accuracy, per-class accuracy, the confusion matrix and, when the manifest has a
``fold`` column (ESC-50: 5 folds, UrbanSound8K: 10), the same per fold and the mean over folds.
Zero-shot involves no training, so a fold is just the subset of its clips.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..audio import ClipCache
from ..data.manifest import Manifest
from ..models import DualEncoder
from .embed import embed_captions, embed_clips, eval_precision

log = logging.getLogger("clarion.evaluate")

DEFAULT_PROMPT = "This is a sound of {label}."
PLACEHOLDER = "{label}"
TOP_K = 5


def average_templates(text: torch.Tensor) -> torch.Tensor:
    """Class embeddings [C, d] from per-template prompt embeddings ``text`` [T, C, d] (CLIP's
    prompt ensembling): ``e_c = m_c / ‖m_c‖`` with ``m_c = (1/T) Σ_t t_tc / ‖t_tc‖``."""
    if text.ndim != 3:
        raise ValueError(f"text must be [templates, classes, d]; got {tuple(text.shape)}")
    text = torch.nn.functional.normalize(text.double(), dim=-1)
    return torch.nn.functional.normalize(text.mean(0), dim=-1)


def class_embeddings(
    embed_text: Callable[[list[str]], torch.Tensor], labels: Sequence[str], prompts: Sequence[str] = (DEFAULT_PROMPT,)
) -> torch.Tensor:
    """Class embeddings [C, d] (float64, unit norm) of ``labels``: every prompt template filled
    with every label (:func:`fill_prompt`), embedded by ``embed_text`` (list of T·C captions →
    [T·C, d]) and averaged over templates by :func:`average_templates`."""
    prompts = check_prompts(prompts)
    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("at least one label is needed")
    text = embed_text([fill_prompt(t, label) for t in prompts for label in labels])
    return average_templates(text.view(len(prompts), len(labels), -1))


def zeroshot_metrics(
    audio: torch.Tensor,
    text: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str] | None = None,
    folds: Sequence[str] | None = None,
) -> dict:
    """Zero-shot classification metrics on embeddings.

    ``audio`` [n, d] unit-norm clip embeddings; ``text`` [C, d] unit-norm class embeddings, or
    [T, C, d] per-template embeddings, averaged by :func:`average_templates`; ``targets`` [n]
    int class indices in [0, C); ``labels`` the C class names (default "0", "1", ...);
    ``folds`` the n fold names (optional).

    With scores ``s_ic = a_i · e_c``, the true class of clip i ranks at
    ``r_i = #{c : s_ic ≥ s_i,y_i}`` (1-based; ties are pessimistic, as in retrieval.py: a class
    tied with the true one ranks before it, so all-equal scores give r_i = C, never a hit).

    - ``accuracy`` = mean[r_i = 1]; ``top5`` = mean[r_i ≤ min(5, C)].
    - ``per_class[label]`` = accuracy over the clips of that class (None for a class with none);
      ``mean_per_class`` = mean of the defined ones (balanced accuracy).
    - ``confusion`` [C][C] counts, row = true class, column = predicted class. The prediction
      is ``argmax_c s_ic``, ties broken pessimistically too (the first tied class other than the
      true one), so ``trace(confusion) / n == accuracy`` exactly.
    - with ``folds``: ``folds[f] = {"accuracy", "top5", "n"}`` over the clips of fold f (folds
      ordered numerically when all are integers) and ``fold_mean_accuracy`` = their mean.
    """
    audio = torch.as_tensor(audio).double().cpu()
    text = torch.as_tensor(text).double().cpu()
    if text.ndim == 3:
        text = average_templates(text)
    targets = torch.as_tensor(targets, dtype=torch.long).cpu()
    n, n_classes = len(targets), text.shape[0] if text.ndim == 2 else -1
    if audio.ndim != 2 or text.ndim != 2 or audio.shape[0] != n or audio.shape[1] != text.shape[1]:
        raise ValueError(
            f"need audio [n, d], text [C, d] and targets [n]; got {tuple(audio.shape)}, {tuple(text.shape)}, {n} targets"
        )
    if n == 0 or n_classes == 0:
        raise ValueError("zero-shot metrics need at least one clip and one class")
    if bool(((targets < 0) | (targets >= n_classes)).any()):
        raise ValueError(f"targets must lie in [0, {n_classes})")
    labels = [str(c) for c in range(n_classes)] if labels is None else [str(x) for x in labels]
    if len(labels) != n_classes:
        raise ValueError(f"{len(labels)} labels for {n_classes} classes")
    scores = audio @ text.T  # [n, C]
    if not torch.isfinite(scores).all():
        raise ValueError("scores have non-finite entries")

    true_score = scores.gather(1, targets[:, None])
    rank = (scores >= true_score).sum(1)  # [n], pessimistic
    hit1 = rank <= 1
    hitk = rank <= min(TOP_K, n_classes)
    at_max = scores == scores.max(1, keepdim=True).values
    other_at_max = at_max & (torch.arange(n_classes)[None, :] != targets[:, None])
    predicted = torch.where(other_at_max.any(1), other_at_max.double().argmax(1), targets)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((targets, predicted), torch.ones(n, dtype=torch.long), accumulate=True)

    support = torch.bincount(targets, minlength=n_classes)
    correct = torch.bincount(targets[hit1], minlength=n_classes)
    per_class = {
        label: (float(correct[c]) / int(support[c]) if support[c] > 0 else None) for c, label in enumerate(labels)
    }
    defined = [v for v in per_class.values() if v is not None]
    out = {
        "accuracy": float(hit1.double().mean()),
        "top5": float(hitk.double().mean()),
        "mean_per_class": sum(defined) / len(defined),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": labels,
        "n": n,
    }
    if folds is not None:
        folds = [str(f) for f in folds]
        if len(folds) != n:
            raise ValueError(f"{len(folds)} folds for {n} clips")
        out["folds"] = {}
        for fold in sort_folds(set(folds)):
            mask = torch.tensor([f == fold for f in folds])
            out["folds"][fold] = {
                "accuracy": float(hit1[mask].double().mean()),
                "top5": float(hitk[mask].double().mean()),
                "n": int(mask.sum()),
            }
        out["fold_mean_accuracy"] = sum(v["accuracy"] for v in out["folds"].values()) / len(out["folds"])
    return out


def sort_folds(folds: Sequence[str] | set[str]) -> list[str]:
    """Fold names in numeric order when all are integers ("2" before "10"), else as strings."""
    if all(re.fullmatch(r"[+-]?\d+", f) for f in folds):
        return sorted(folds, key=int)
    return sorted(folds)


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompt templates as a list; each must contain ``{label}``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("at least one prompt template is needed")
    for template in prompts:
        if PLACEHOLDER not in template:
            raise ValueError(f"prompt template {template!r} does not contain {PLACEHOLDER}")
    if len(set(prompts)) != len(prompts):
        raise ValueError("prompt templates are repeated")
    return prompts


def fill_prompt(template: str, label: str) -> str:
    """``template`` with every ``{label}`` replaced by the label, underscores read as spaces
    (ESC-50's ``chirping_birds`` → "chirping birds"); other braces are kept as written."""
    return template.replace(PLACEHOLDER, label.replace("_", " "))


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class labels from a text file, one per line (surrounding space stripped, blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    labels = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{path}: no labels (one label per line)")
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"{path}: repeated label(s) {', '.join(map(repr, repeated[:5]))}")
    return labels


def _few(items: Sequence[object], k: int = 5) -> str:
    text = ", ".join(repr(str(x)) for x in items[:k])
    return text + (f" and {len(items) - k} more" if len(items) > k else "")


@dataclass
class LabelledClips:
    """The embedded, labelled clips of a manifest: ``audio`` [n, d] unit-norm embeddings,
    ``targets`` [n] indices into ``labels``, ``folds`` (n fold names, or None), and the counts of
    what was left out (``unlabelled``, ``undecodable``)."""

    audio: torch.Tensor
    targets: torch.Tensor
    labels: list[str]
    folds: list[str] | None
    unlabelled: int
    undecodable: int


def embed_labelled_clips(
    model: DualEncoder,
    manifest: Manifest,
    cfg: Config,
    device: torch.device,
    cache: ClipCache | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledClips:
    """Embed each distinct labelled clip of ``manifest`` once; its label (and fold) is that of
    its first row. Classes are ``labels`` in the order given, or the sorted distinct labels of the
    manifest. Clips without a label and clips that fail to decode are skipped, counted and logged;
    a label that is not in ``labels``, or a labelled clip without a fold when others have one, is
    an error."""
    clip_labels = manifest.labels
    if all(label is None for label in clip_labels):
        raise ValueError(f"{manifest.path} has no labels: classification needs a 'label' column")
    clip_folds = manifest.folds
    unlabelled = [clip for clip, label in zip(manifest.clips, clip_labels) if label is None]
    if unlabelled:
        log.warning("%d clip(s) of %s have no label and are left out, e.g. %s",
                    len(unlabelled), manifest.path, _few([c.name for c in unlabelled], 3))
    if labels is None:
        labels = sorted({label for label in clip_labels if label is not None})
    else:
        labels = [str(x) for x in labels]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("labels must be a non-empty list without repeats")
        known = set(labels)
        unknown = sorted({x for x in clip_labels if x is not None and x not in known})
        if unknown:
            raise ValueError(f"{manifest.path}: {len(unknown)} label(s) not in the class list: {_few(unknown)}")
    class_index = {label: c for c, label in enumerate(labels)}

    labelled = {clip for clip, label in zip(manifest.clips, clip_labels) if label is not None}
    subset = Manifest(manifest.path, [row for row in manifest.rows if row.audio in labelled], list(manifest.bad))
    keep = [i for i, label in enumerate(clip_labels) if label is not None]  # subset clip j = manifest clip keep[j]
    sub_folds = [clip_folds[i] for i in keep]
    has_folds = any(f is not None for f in sub_folds)
    if has_folds and any(f is None for f in sub_folds):
        missing = [manifest.clips[i].name for i in keep if clip_folds[i] is None]
        raise ValueError(f"{manifest.path}: {len(missing)} labelled clip(s) have no fold, e.g. {_few(missing, 3)}")

    audio, clip_index, bad = embed_clips(model, subset, cfg, device, cache)
    if bad:
        log.warning("%d clip(s) of %s could not be decoded and were left out", len(bad), manifest.path)
    sub_labels = [clip_labels[i] for i in keep]
    targets = torch.tensor([class_index[sub_labels[j]] for j in clip_index.tolist()], dtype=torch.long)
    folds = [sub_folds[j] for j in clip_index.tolist()] if has_folds else None
    return LabelledClips(audio, targets, list(labels), folds, len(unlabelled), len(bad))


def evaluate_zeroshot(
    model: DualEncoder,
    manifest: Manifest,
    cfg: Config,
    device: torch.device,
    cache: ClipCache | None = None,
    prompts: Sequence[str] = (DEFAULT_PROMPT,),
    labels: Sequence[str] | None = None,
) -> dict:
    """Zero-shot classification of the clips of ``manifest`` by their ``label`` column.

    The clips are those of :func:`embed_labelled_clips` (classes: ``labels``, or the manifest's
    sorted labels). Returns :func:`zeroshot_metrics` plus ``prompts``, ``skipped`` (all clips
    left out) and ``counts``.
    """
    prompts = check_prompts(prompts)
    clips = embed_labelled_clips(model, manifest, cfg, device, cache, labels)
    text = class_text_embeddings(model, cfg, device, clips.labels, prompts)
    metrics = zeroshot_metrics(clips.audio, text, clips.targets, clips.labels, clips.folds)
    metrics["prompts"] = prompts
    metrics["skipped"] = clips.unlabelled + clips.undecodable
    metrics["counts"] = {
        "clips": len(clips.targets),
        "classes": len(clips.labels),
        "unlabelled_clips": clips.unlabelled,
        "undecodable_clips": clips.undecodable,
    }
    return metrics


def class_text_embeddings(
    model: DualEncoder, cfg: Config, device: torch.device, labels: Sequence[str], prompts: Sequence[str]
) -> torch.Tensor:
    """:func:`class_embeddings` of ``labels`` with the model's text tower."""
    return class_embeddings(
        lambda captions: embed_captions(model, captions, device, cfg.train.eval_batch_size, eval_precision(cfg, device)), labels, prompts
    )
