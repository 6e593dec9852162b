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


def encoder_ramp(freeze_steps: int, warmup_steps: int):
    """Extra LR multiplier of the encoders: 0 for the first ``freeze_steps`` steps, then linear
    (s - K + 1)/W over ``warmup_steps`` = W, then 1 (``s``: optimiser steps done, K = ``freeze_steps``)."""

    def factor(step: int) -> float:
        if step < freeze_steps:
            return 0.0
        if step < freeze_steps + warmup_steps:
            return (step - freeze_steps + 1) / warmup_steps
        return 1.0

    return factor


def group_schedule(cfg: Config, roles: list[str], total_steps: int) -> list:
    """One LR multiplier per optimiser group (``roles`` from :func:`build_optimizer`): every group
    follows :func:`warmup_cosine`; encoder groups also :func:`encoder_ramp`. A function of the step
    only, so a resumed run continues the same curve."""
    c = cfg.train
    base = warmup_cosine(c.warmup_steps, total_steps)
    ramp = encoder_ramp(c.encoder_freeze_steps, c.encoder_warmup_steps)

    def encoder(step: int) -> float:
        return base(step) * ramp(step)

    return [base if role == "heads" else encoder for role in roles]


def encoder_rates(cfg: Config) -> dict[str, float]:
    """Base LR of each tower: ``train.{audio,text}_encoder_lr``, else ``train.encoder_lr``, else ``train.lr``."""
    c = cfg.train
    shared = c.encoder_lr if c.encoder_lr is not None else c.lr
    return {"audio": c.audio_encoder_lr if c.audio_encoder_lr is not None else shared,
            "text": c.text_encoder_lr if c.text_encoder_lr is not None else shared}


def per_tower_groups(cfg: Config) -> bool:
    """Whether the optimiser gives each tower its own groups (any per-tower option is set)."""
    c = cfg.train
    return (c.audio_encoder_lr is not None or c.text_encoder_lr is not None
            or c.encoder_freeze_steps > 0 or c.encoder_warmup_steps > 0)


def build_optimizer(cfg: Config, model: DualEncoder, objective: Objective) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and conv kernels only (not biases, norms, objective state).

    Frozen parameters (``requires_grad=False``) are left out. Each group carries a ``role``
    (``heads``, ``encoders``, ``audio``, ``text``; :func:`group_schedule` reads it). Three layouts,
    empty groups dropped, the first group (whose rate ``metrics.jsonl`` logs as ``lr``) always the
    heads':

    - no encoder option set: everything at ``train.lr`` in two groups (decay, no decay), the
      layout of checkpoints written before ``encoder_lr`` existed;
    - ``train.encoder_lr`` only: heads (decay, no decay) at ``train.lr``, then both encoders
      (decay, no decay) at ``encoder_lr``: the layout of checkpoints written before the
      per-tower options;
    - any per-tower option (:func:`per_tower_groups`): heads, audio encoder, text encoder, each
      (decay, no decay), at the rates of :func:`encoder_rates`.

    The objective's learnable state always trains with the heads, at ``train.lr``.
    """

    def split(params: list[torch.nn.Parameter]) -> tuple[list, list]:
        decay = [p for p in params if p.ndim >= 2]
        return decay, [p for p in params if p.ndim < 2]

    wd, lr, encoder_lr = cfg.train.weight_decay, cfg.train.lr, cfg.train.encoder_lr
    trainable = [p for p in model.parameters() if p.requires_grad]
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    if encoder_lr is None and not per_tower_groups(cfg):
        decay, no_decay = split(trainable)
        groups = [
            {"params": decay, "weight_decay": wd, "role": "heads"},
            {"params": no_decay + objective_params, "weight_decay": 0.0, "role": "heads"},
        ]
        return torch.optim.AdamW(groups, lr=lr)
    towers = {"audio": model.audio_encoder, "text": model.text_encoder}
    tower_of = {id(p): side for side, tower in towers.items() for p in tower.parameters()}
    head_decay, head_no_decay = split([p for p in trainable if id(p) not in tower_of])
    groups = [
        {"params": head_decay, "weight_decay": wd, "lr": lr, "role": "heads"},
        {"params": head_no_decay + objective_params, "weight_decay": 0.0, "lr": lr, "role": "heads"},
    ]
    if per_tower_groups(cfg):
        rates = encoder_rates(cfg)
        for side in towers:
            decay, no_decay = split([p for p in trainable if tower_of.get(id(p)) == side])
            groups += [{"params": decay, "weight_decay": wd, "lr": rates[side], "role": side},
                       {"params": no_decay, "weight_decay": 0.0, "lr": rates[side], "role": side}]
    else:
        enc_decay, enc_no_decay = split([p for p in trainable if id(p) in tower_of])
        groups += [{"params": enc_decay, "weight_decay": wd, "lr": encoder_lr, "role": "encoders"},
                   {"params": enc_no_decay, "weight_decay": 0.0, "lr": encoder_lr, "role": "encoders"}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def group_rates(roles: list[str], rates: list[float]) -> dict[str, float]:
    """The step record's rates: ``lr`` (the heads'), and ``lr_audio`` / ``lr_text`` when the
    encoders have their own groups (``roles``/``rates``: per optimiser group)."""
    out = {"lr": rates[0]}
    for role, rate in zip(roles, rates):
        for side in ("audio", "text"):
            if role in (side, "encoders"):
                out.setdefault(f"lr_{side}", rate)
    return out
