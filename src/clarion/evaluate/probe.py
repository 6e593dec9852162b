"""Linear probe: multinomial logistic regression on frozen audio embeddings, cross-validated by
fold, next to zero-shot accuracy on the same clips (docs/methods.md, "Linear probe").

For each fold f the probe is fitted on the clips of every other fold and scored on fold f; the
result is the accuracy per fold and their mean ± standard deviation (sample, ddof = 1), the
protocol LAION-CLAP and HEAR report for ESC-50 (5 folds) and UrbanSound8K (10 folds). A manifest
without a fold column gets :data:`DEFAULT_FOLDS` folds of its own: each class's clips shuffled
with a fixed seed and dealt round-robin, so every fold holds every class in proportion.

The fit (:func:`fit_logistic`) minimises, in float64 with L-BFGS,

    L(W, b) = Σ_i −log softmax(W x_i + b)_{y_i} + ‖W‖² / (2 C)

(``b`` unpenalised): scikit-learn's ``LogisticRegression(C=C)`` objective (``½‖W‖² + C Σ_i
loss_i``, the same minimiser), so the two agree on the predicted probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..audio import ClipCache
from ..config import Config
from ..data.manifest import Manifest
from ..models import DualEncoder
from .zeroshot import DEFAULT_PROMPT, check_prompts, class_text_embeddings, embed_labelled_clips, sort_folds, zeroshot_metrics

DEFAULT_FOLDS = 5
DEFAULT_C = 1.0


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = DEFAULT_C, max_iter: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` [C, d] and ``b`` [C] (float64) minimising the module docstring's ``L`` on features
    ``x`` [n, d] and classes ``y`` [n] in [0, n_classes). Needs two classes among ``y``."""
    x = torch.as_tensor(x).double()
    y = torch.as_tensor(y, dtype=torch.long)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"need features [n, d] and targets [n]; got {tuple(x.shape)} and {tuple(y.shape)}")
    if not c > 0 or not math.isfinite(c):
        raise ValueError(f"the inverse regularisation strength C must be positive, got {c}")
    if len(torch.unique(y)) < 2:
        raise ValueError("a linear probe needs clips of at least two classes to train on")
    if not torch.isfinite(x).all():
        raise ValueError("features have non-finite entries")
    params = torch.zeros(x.shape[1] + 1, n_classes, dtype=torch.float64, requires_grad=True)  # [W; b]ᵀ
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-15,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xb @ params, y, reduction="sum") + params[:-1].square().sum() / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    params = params.detach()
    return params[:-1].T.contiguous(), params[-1].clone()


def predict(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities [n, C] = softmax(x Wᵀ + b)."""
    return torch.softmax(torch.as_tensor(x).double() @ w.T + b, dim=1)


def assign_folds(targets: torch.Tensor, k: int = DEFAULT_FOLDS, seed: int = 0) -> list[str]:
    """Stratified folds "1".."k": each class's clips in a seeded random order, dealt round-robin
    (a class's clips spread over the folds as evenly as their count allows)."""
    targets = torch.as_tensor(targets, dtype=torch.long).numpy()
    rng = np.random.default_rng(seed)
    folds = [""] * len(targets)
    offset = 0
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        for j, i in enumerate(members):
            folds[i] = str((offset + j) % k + 1)
        offset += len(members)  # the next class starts where this one stopped: fold sizes stay level
    return folds


def probe_metrics(
    audio: torch.Tensor, targets: torch.Tensor, labels: Sequence[str], folds: Sequence[str], c: float = DEFAULT_C
) -> dict:
    """Cross-validated probe accuracy: for each fold f, fit on the other folds, score on f.

    Returns ``{"folds": {f: {"accuracy", "n_train", "n_test"}}, "accuracy_mean", "accuracy_std",
    "C"}``; the std is the sample standard deviation over the folds (at least two are needed)."""
    audio = torch.as_tensor(audio).double()
    targets = torch.as_tensor(targets, dtype=torch.long)
    folds = [str(f) for f in folds]
    if len(folds) != len(targets) or len(audio) != len(targets):
        raise ValueError(f"{len(audio)} embeddings, {len(targets)} targets and {len(folds)} folds")
    names = sort_folds(set(folds))
    if len(names) < 2:
        raise ValueError(f"cross-validation needs at least two folds, got {names}")
    if len(set(targets.tolist())) < 2:
        raise ValueError(f"a linear probe needs at least two classes; all clips are {labels[int(targets[0])]!r}")
    per_fold = {}
    for fold in names:
        test = torch.tensor([f == fold for f in folds])
        if len(torch.unique(targets[~test])) < 2:
            raise ValueError(f"the folds other than {fold} hold a single class: a linear probe needs at least two to train on")
        w, b = fit_logistic(audio[~test], targets[~test], len(labels), c)
        predicted = predict(w, b, audio[test]).argmax(1)
        per_fold[fold] = {
            "accuracy": float((predicted == targets[test]).double().mean()),
            "n_train": int((~test).sum()),
            "n_test": int(test.sum()),
        }
    accuracies = [v["accuracy"] for v in per_fold.values()]
    return {"folds": per_fold, "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies, ddof=1)), "C": c}


def evaluate_probe(
    model: DualEncoder,
    manifest: Manifest,
    cfg: Config,
    device: torch.device,
    cache: ClipCache | None = None,
    prompts: Sequence[str] = (DEFAULT_PROMPT,),
    c: float = DEFAULT_C,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> dict:
    """Linear probe and zero-shot accuracy on the labelled clips of ``manifest`` (each clip
    embedded once), fold by fold. The manifest's ``fold`` column is used when it has one; else
    :func:`assign_folds` (``n_folds``, ``seed``) makes them, and ``fold_source`` says which.

    Returns ``{"probe": probe_metrics, "zeroshot": {"folds": {f: accuracy}, "accuracy_mean",
    "accuracy_std", "accuracy"}, "labels", "prompts", "fold_source", "counts"}``."""
    prompts = check_prompts(prompts)
    if n_folds < 2:
        raise ValueError(f"--folds must be at least 2, got {n_folds}")
    clips = embed_labelled_clips(model, manifest, cfg, device, cache)
    if len(clips.labels) < 2:
        raise ValueError(f"{manifest.path}: a linear probe needs at least two classes, found {clips.labels}")
    folds, source = (clips.folds, "manifest") if clips.folds is not None else (assign_folds(clips.targets, n_folds, seed), "assigned")
    probe = probe_metrics(clips.audio, clips.targets, clips.labels, folds, c)
    text = class_text_embeddings(model, cfg, device, clips.labels, prompts)
    zs = zeroshot_metrics(clips.audio, text, clips.targets, clips.labels, folds)
    fold_accuracy = {f: v["accuracy"] for f, v in zs["folds"].items()}
    return {
        "probe": probe,
        "zeroshot": {"folds": fold_accuracy, "accuracy_mean": float(np.mean(list(fold_accuracy.values()))),
                     "accuracy_std": float(np.std(list(fold_accuracy.values()), ddof=1)), "accuracy": zs["accuracy"]},
        "labels": clips.labels,
        "prompts": prompts,
        "fold_source": source,
        "counts": {"clips": len(clips.targets), "classes": len(clips.labels), "folds": len(fold_accuracy),
                   "unlabelled_clips": clips.unlabelled, "undecodable_clips": clips.undecodable},
    }
