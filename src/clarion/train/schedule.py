"""What a run's schedule is made of: seeding, the batches of an epoch, the LR curve, the optimiser."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from ..config import Config
from ..models import DualEncoder
from ..objectives import Objective


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(audio_ids: np.ndarray, pairs: str, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The row indices of every batch of ``epoch``; full batches only (drop_last).

    ``pairs="all"``: every row once, shuffled. ``pairs="one_per_clip"``: one random caption
    row per clip, shuffled.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    if pairs == "all":
        rows = rng.permutation(len(audio_ids))
    elif pairs == "one_per_clip":
        order = rng.permutation(len(audio_ids))  # first occurrence of each clip in a random order
        _, first = np.unique(audio_ids[order], return_index=True)
        rows = rng.permutation(order[first])
    else:
        raise ValueError(f"data.pairs must be 'all' or 'one_per_clip', got {pairs!r}")
    n_batches = len(rows) // batch_size
    if n_batches == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {len(rows)} training pairs per epoch")
    return [rows[i * batch_size : (i + 1) * batch_size].tolist() for i in range(n_batches)]


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear 0→1 over ``warmup_steps``, then cosine 1→0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(cfg: Config, model: DualEncoder, objective: Objective) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and conv kernels only (not biases, norms, objective state).

    Frozen parameters (``requires_grad=False``) are left out. ``train.encoder_lr`` applies to the
    audio and text encoders, ``train.lr`` to the projection heads and the objective's state. With
    ``encoder_lr`` None everything runs at ``train.lr`` in two groups (decay, no decay), the
    layout of checkpoints written before ``encoder_lr`` existed; otherwise the groups are
    heads (decay, no decay), then encoders (decay, no decay), empty groups dropped, so the
    first group (whose rate ``metrics.jsonl`` logs) is always the heads'.
    """

    def split(params: list[torch.nn.Parameter]) -> tuple[list, list]:
        decay = [p for p in params if p.ndim >= 2]
        return decay, [p for p in params if p.ndim < 2]

    wd, lr, encoder_lr = cfg.train.weight_decay, cfg.train.lr, cfg.train.encoder_lr
    trainable = [p for p in model.parameters() if p.requires_grad]
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    if encoder_lr is None:
        decay, no_decay = split(trainable)
        groups = [
            {"params": decay, "weight_decay": wd},
            {"params": no_decay + objective_params, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr)
    in_encoders = {id(p) for tower in (model.audio_encoder, model.text_encoder) for p in tower.parameters()}
    head_decay, head_no_decay = split([p for p in trainable if id(p) not in in_encoders])
    enc_decay, enc_no_decay = split([p for p in trainable if id(p) in in_encoders])
    groups = [
        {"params": head_decay, "weight_decay": wd, "lr": lr},
        {"params": head_no_decay + objective_params, "weight_decay": 0.0, "lr": lr},
        {"params": enc_decay, "weight_decay": wd, "lr": encoder_lr},
        {"params": enc_no_decay, "weight_decay": 0.0, "lr": encoder_lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
