"""The training loop. It knows no objective: it calls ``objective(a, t, audio_ids)``,
backpropagates the loss and logs whatever diagnostics come back.

Reproducibility: the epoch's batch order comes from ``(seed, epoch)``, each item's random
crop from ``(seed, epoch, index)`` and dropout from the global torch RNG, which checkpoints
save. Resuming at step k of an epoch skips the first k batches of the same order, so a run
killed anywhere and resumed ends where the uninterrupted run ends. Training on webdataset
shards streams them instead (:class:`~clarion.data.shards.ShardStream`, same guarantee while
the shards and settings are unchanged); :meth:`Trainer._epoch_loader` picks the path.

Under ``torchrun`` each process trains on its share of every global batch (``train.batch_size``
is the global batch) with DistributedDataParallel, and the objective sees the gathered global
batch (:mod:`.distributed`). ``train.chunk_size`` embeds a batch in chunks with GradCache
(:mod:`.gradcache`). In one process without ``chunk_size`` both are no-ops.

Numerical safety: a step whose loss or gradient norm is not finite changes nothing (no optimiser
or scheduler step; BatchNorm statistics and other buffers are restored); it is counted
(``nonfinite_steps`` in the epoch records) and logged with the manifest rows of its batch, and
``train.max_nonfinite_steps`` such steps in a row stop the run with :class:`TrainingDiverged`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..config import Config
from ..data.audio import ClipCache
from ..data.check import validate_training_data
from ..data.dataset import AudioTextDataset, collate
from ..data.manifest import Manifest, read_manifest
from ..data.noise import corrupt_captions, write_corrupted_pairs
from ..data.shards import ShardStream, stream_for
from ..evaluate.embed import autocast_for, evaluate_retrieval
from ..evaluate.geometry import collapse_diagnostics, drift_diagnostics, plan_mass_by_pair_kind
from ..evaluate.retrieval import mean_r1
from ..models import DualEncoder, build_model, train_tokenizer
from ..objectives import Objective, diagnostics_as_floats
from ..rundir import (
    OBJECTIVE_PREFIX, RunError, atomic_write, atomic_write_text, build_run_objective, load_run_config, load_tokenizer,
    model_state, save_model,
)
from .checkpoint import TrainingState, find_checkpoint, restore_checkpoint, save_checkpoint
from .collapse import CollapseMonitor
from .distributed import Dist, resolve_device, setup  # noqa: F401  (resolve_device: re-exported)
from .gradcache import GradCache

log = logging.getLogger("clarion.train")
_SHOWN_ROWS = 8  # rows of a skipped batch named in the log


class TrainingDiverged(RunError):
    """``train.max_nonfinite_steps`` consecutive steps had a non-finite loss or gradient."""


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


class MetricsLog:
    """Appends JSON lines to ``RUN/metrics.jsonl``.

    ``resumed=None`` starts an empty log; a :class:`TrainingState` (the checkpoint a run resumes
    from) keeps what that state had logged: step records up to its step and the records of the
    epochs it had finished, so a resumed run drops what the interrupted one logged after its
    checkpoint and the replay logs it again, once. The kept lines are rewritten atomically.
    ``path=None`` logs nothing (processes other than rank 0).
    """

    def __init__(self, path: Path | None, resumed: TrainingState | None):
        self.path = path
        self._fh = None
        if path is None:
            return
        kept = []
        if resumed is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    done = record["epoch"] < resumed.epoch if record["type"] == "epoch" else record["step"] <= resumed.step
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by the interruption
                if done:
                    kept.append(line)
        try:
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
            self._fh = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise RunError(f"cannot write {path}: {exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            try:
                self._fh.write(json.dumps(record) + "\n")
                self._fh.flush()
            except OSError as exc:
                raise RunError(f"cannot write {self.path}: {exc} (disk full?)") from exc

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@dataclass
class Trainer:
    cfg: Config
    run: Path
    model: DualEncoder
    objective: Objective
    train_set: Manifest | None  # None when streaming shards
    val_set: Manifest | None
    device: torch.device
    cache: ClipCache | None
    corrupted_rows: torch.Tensor | None = None  # [rows] bool: captions shuffled by the noise protocol
    stream: ShardStream | None = None  # webdataset shards streamed instead of train_set's index-based batches
    dist: Dist = Dist()  # this process's rank in a torchrun job (the single process by default)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.objective.to(self.device)
        self.forward = self.dist.wrap(self.model)  # DistributedDataParallel under torchrun
        self.dist.broadcast(self.objective)
        self.dist.restore_rng({}, self.cfg.train.seed, 0)  # ranks > 0: their own dropout stream
        self.optimizer = build_optimizer(self.cfg, self.model, self.objective)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.objective_params = [p for p in self.objective.parameters() if p.requires_grad]
        self.steps_per_epoch = self.stream.num_batches(0) if self.stream else len(self._batches(0))
        total = self.cfg.train.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.cfg.train.warmup_steps, total)
        )
        if self.stream is None:
            self.dataset = AudioTextDataset(
                self.train_set,
                self.cfg.audio.sample_rate,
                self.cfg.audio.clip_seconds,
                train=True,
                cache=self.cache,
                on_bad_sample=self.cfg.data.on_bad_sample,
                seed=self.cfg.train.seed,
                max_seconds=self.cfg.audio.max_seconds,
            )
        self.state = TrainingState(epoch=0, step=0, step_in_epoch=0, best_score=-1.0, best_epoch=-1)
        self.skipped_samples = 0
        c = self.cfg.train
        self.collapse = CollapseMonitor(c.collapse_max_cos, c.collapse_min_rank, c.collapse_patience, c.warmup_steps)

    def _batches(self, epoch: int) -> list[list[int]]:
        c = self.cfg
        return epoch_batches(self.train_set.audio_ids, c.data.pairs, c.train.batch_size, c.train.seed, epoch)

    def _epoch_loader(self, epoch: int) -> tuple[Iterable[dict], int]:
        """The batches of ``epoch`` from ``state.step_in_epoch`` on, and their number (either data path)."""
        c = self.cfg.train
        if self.stream is not None:
            return self.stream.loader(epoch, skip=self.state.step_in_epoch, pin_memory=self.device.type == "cuda")
        batches = [self.dist.shard(b) for b in self._batches(epoch)[self.state.step_in_epoch :]]
        self.dataset.set_epoch(epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(c.seed * 100003 + epoch),
        )
        return loader, len(batches)

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(OBJECTIVE_PREFIX)})
        self.objective.load_state_dict(
            {k[len(OBJECTIVE_PREFIX) :]: v for k, v in state.items() if k.startswith(OBJECTIVE_PREFIX)}
        )

    def resume(self) -> bool:
        found = find_checkpoint(self.run)
        if found is None:
            return False
        path, tensors, meta = found
        self.state = restore_checkpoint(tensors, meta, self._load_model_state, self.optimizer, self.scheduler)
        self.dist.restore_rng(tensors, self.cfg.train.seed, self.state.step)
        log.info("resumed from %s (epoch %d, step %d)", path, self.state.epoch, self.state.step)
        return True

    def checkpoint(self) -> None:
        ranks_rng = self.dist.rng_states()  # collective: every rank's dropout RNG
        if self.dist.main:
            state = model_state(self.model, self.objective)
            save_checkpoint(self.run, state, self.optimizer, self.scheduler, self.state, extra=ranks_rng)

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """One optimiser step on ``batch`` (this process's share of the global batch); None when
        the step was skipped (too few rows or a non-finite loss; all processes skip together)."""
        wave = batch["audio"].to(self.device, non_blocking=True)
        sizes = self.dist.sizes(len(wave))  # every process's rows: [len(wave)] in one process
        if sum(sizes) < 2 or min(sizes) == 0:
            return None
        audio_ids = batch["audio_id"].to(self.device)
        self.model.train()
        self.objective.train()
        c = self.cfg.train
        buffers = [b for m in (self.model, self.objective) for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]  # BatchNorm statistics: restored if the step is skipped
        cache = None
        if c.chunk_size and len(wave) > c.chunk_size:
            cache = GradCache(self.model, self.forward, c.chunk_size, self.device, lambda: autocast_for(self.device, c.amp))
            a, t = cache.embed(wave, batch["caption"])
        else:
            with autocast_for(self.device, c.amp):
                a, t = self.forward(wave, batch["caption"])
        a, t = a.float(), t.float()
        a, t, audio_ids, index = self.dist.gather_batch(sizes, a, t, audio_ids, batch["index"])  # the global batch
        out, loss = self.dist.objective_loss(self.objective, a, t, audio_ids, sizes)
        if not torch.isfinite(loss):
            return self._skip_nonfinite("loss", float(loss), index, buffers, saved)
        if out.plan is not None and self.corrupted_rows is not None:
            out.diagnostics.update(plan_mass_by_pair_kind(out.plan, self.corrupted_rows[index]))
        drift = self.cfg.train.drift_every
        if drift and (self.state.step + 1) % drift == 0:
            out.diagnostics.update(drift_diagnostics(out.loss, a, t, self.dist.mean))
            if out.drift is not None:  # the objective's own (e.g. SVR's radius against ‖a − t‖)
                out.diagnostics.update(out.drift())
        every = self.cfg.train.collapse_every
        if every and (self.state.step + 1) % every == 0:
            stats = collapse_diagnostics(a, t)
            self.collapse.update(self.state.step + 1, stats)
            out.diagnostics.update(stats)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # under GradCache: to the embeddings and the objective only
        if cache is not None:
            cache.backward()  # ... then to the encoders, chunk by chunk
        self.dist.average_gradients(self.objective_params)  # DDP averages the model's
        clip = self.cfg.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip if clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):  # the same on every process: gradients are averaged first
            return self._skip_nonfinite("gradient norm", float(grad_norm), index, buffers, saved)
        self.state.nonfinite_streak = 0
        self.optimizer.step()
        self.scheduler.step()
        self.objective.after_optimizer_step()
        return diagnostics_as_floats({"loss": loss, "grad_norm": grad_norm, **out.diagnostics})

    def _skip_nonfinite(self, what: str, value: float, index: torch.Tensor, buffers: list, saved: list) -> None:
        """Undo a step whose ``what`` is ``value`` (NaN/Inf): drop its gradients, restore the
        buffers its forward pass updated, count and log it; raise :class:`TrainingDiverged` after
        ``train.max_nonfinite_steps`` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        st = self.state
        st.nonfinite_steps += 1
        st.nonfinite_streak += 1
        rows = self.describe_rows(index.tolist())
        log.warning("non-finite %s (%s) after step %d (epoch %d, batch %d); step skipped (%d in a row, %d in all); rows: %s",
                    what, value, st.step, st.epoch + 1, st.step_in_epoch + 1, st.nonfinite_streak, st.nonfinite_steps, rows)
        limit = self.cfg.train.max_nonfinite_steps
        if st.nonfinite_streak >= limit:
            raise TrainingDiverged(
                f"training stopped: {st.nonfinite_streak} consecutive steps had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps={limit}; last: {what} {value} after step {st.step}, epoch {st.epoch + 1}, "
                f"rows {rows}). The weights are those of the last finite step; checkpoints in {self.run / 'checkpoints'} "
                "are intact. Lower train.lr, check the data (clarion data check), or raise train.max_nonfinite_steps."
            )
        return None

    def describe_rows(self, rows: list[int]) -> str:
        """``MANIFEST: line L (AUDIO), ...`` for the first rows of a batch (sample numbers when streaming)."""
        more = f", ... ({len(rows) - _SHOWN_ROWS} more)" if len(rows) > _SHOWN_ROWS else ""
        if self.train_set is None:
            return f"samples {rows[:_SHOWN_ROWS]}{more}"
        shown = [self.train_set.rows[i] for i in rows[:_SHOWN_ROWS]]
        return f"{self.train_set.path}: " + ", ".join(f"line {r.line} ({r.audio})" for r in shown) + more

    def fit(self, metrics: MetricsLog) -> dict[str, Any]:
        c = self.cfg.train
        for epoch in range(self.state.epoch, c.epochs):
            self.state.epoch = epoch
            loader, n_batches = self._epoch_loader(epoch)
            started, wait = time.perf_counter(), 0.0
            progress = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, mininterval=1,
                            disable=not self.dist.main)
            fetch_start = time.perf_counter()
            for batch in progress:
                fetched = time.perf_counter()
                wait += fetched - fetch_start
                if batch["bad"]:
                    self.skipped_samples += len(batch["bad"])
                    log.warning("skipped %d bad sample(s): %s", len(batch["bad"]), batch["bad"][:3])
                result = self.train_step(batch)
                self.state.step_in_epoch += 1
                if result is not None:
                    self.state.step += 1
                    self.state.epoch_loss_sum += result["loss"]
                    self.state.epoch_loss_count += 1
                    progress.set_postfix(loss=f"{result['loss']:.3f}")
                    if self.state.step % c.log_every == 0:
                        metrics.write(
                            {"type": "step", "epoch": epoch, "step": self.state.step,
                             "lr": self.scheduler.get_last_lr()[0], **result,
                             "data_wait_s": fetched - fetch_start, "step_s": time.perf_counter() - fetched}
                        )
                if c.checkpoint_every_steps and self.state.step_in_epoch % c.checkpoint_every_steps == 0:
                    self.checkpoint()
                fetch_start = time.perf_counter()
            record = self.end_epoch(epoch, time.perf_counter() - started, wait)
            metrics.write(record)  # before the checkpoint that marks the epoch done: never lost to a kill
            self.checkpoint()
            self.dist.barrier()
            log.info(
                "epoch %d/%d: train loss %.4f, val mean R@1 %s (%.1f s)", epoch + 1, c.epochs,
                record["train_loss"], record.get("val_mean_R@1"), record["time_s"],
            )
        return {
            "best_epoch": self.state.best_epoch, "best_val_mean_R@1": self.state.best_score, "step": self.state.step,
            "collapse_warning_step": self.collapse.warned_at_step, "nonfinite_steps": self.state.nonfinite_steps,
        }

    def end_epoch(self, epoch: int, seconds: float, wait: float) -> dict[str, Any]:
        """Validate, keep the best model (by mean R@1; the last one without validation); the caller
        logs the record, then checkpoints. Under torchrun rank 0 validates and writes while the others wait."""
        record: dict[str, Any] = {
            "type": "epoch", "epoch": epoch, "step": self.state.step,
            "train_loss": self.state.epoch_loss_sum / max(1, self.state.epoch_loss_count),
            "time_s": seconds, "data_wait_share": wait / seconds if seconds else 0.0,
            "skipped_samples": self.dist.all_sum(self.skipped_samples), "nonfinite_steps": self.state.nonfinite_steps,
            "collapse_warning_step": self.collapse.warned_at_step,
        }
        if self.dist.main:
            score = float(epoch)
            if self.val_set is not None:
                val = evaluate_retrieval(self.model, self.val_set, self.cfg, self.device, self.cache)
                score = mean_r1(val)
                record.update({"val": val, "val_mean_R@1": score})
            if score > self.state.best_score:
                self.state.best_score, self.state.best_epoch = score, epoch
                meta = {"clarion": __version__, "epoch": epoch, "step": self.state.step, "val": record.get("val")}
                save_model(self.run, self.model, self.objective, meta)
                record["best"] = True
        self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0
        return record


def prepare_run(cfg: Config, run: Path, resume: bool) -> Config:
    """Create the run directory, or check it can be resumed; returns the config to train with."""
    if (run / "config.yaml").exists() and not resume:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and (run / "config.yaml").exists():
        saved = load_run_config(run)
        if saved.to_dict() != cfg.to_dict():
            log.info("resuming with the config given now; it differs from %s/config.yaml", run)
    probe = run / ".write-test"
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"run directory {run} is not writable: {exc}") from exc
    cfg.save(run / "config.yaml")
    return cfg


def check_free_space(run: Path, model: DualEncoder, objective: Objective) -> None:
    """Refuse to start when ``run``'s file system cannot hold one checkpoint and the model
    (weights + two AdamW moments + the best weights, 4 bytes each), rather than fail at the first write."""
    n = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in objective.parameters())
    needed = 4 * n * 4
    free = shutil.disk_usage(run).free
    if free < needed:
        raise RunError(
            f"not enough disk space in {run}: {free / 1e6:.1f} MB free, a checkpoint and the model need about "
            f"{needed / 1e6:.1f} MB; free some space or choose another --out"
        )


def train(cfg: Config, run: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a dual encoder with ``cfg`` into the run directory ``run``; returns a summary.

    Under ``torchrun`` every process calls this; rank 0 writes the run directory.
    """
    run = Path(run)
    if not cfg.data.train:
        raise ValueError("no training manifest: pass --train CSV (or data.train=...)")
    if cfg.data.validate != "off":  # before anything is written: a refused run leaves no run directory
        validate_training_data(cfg)
    dist = setup(cfg.train.device, cfg.train.batch_size)  # the single process unless under torchrun
    try:
        return _train(cfg, run, resume, dist)
    finally:
        dist.close()


def _train(cfg: Config, run: Path, resume: bool, dist: Dist) -> dict[str, Any]:
    tokenizer_path = run / "tokenizer.json"
    saved_tokenizer = resume and tokenizer_path.exists()  # decided before rank 0 writes one
    if dist.main:
        prepare_run(cfg, run, resume)
    dist.barrier()
    seed_everything(cfg.train.seed)
    device = dist.device

    # webdataset shards are streamed (data.stream); anything else is a manifest
    stream = stream_for(cfg, dist.row_range(cfg.train.batch_size) if dist.enabled else None)
    train_set = None if stream else read_manifest(cfg.data.train, cfg.data.on_bad_sample)
    val_set = read_manifest(cfg.data.val, cfg.data.on_bad_sample) if cfg.data.val else None
    log.info("train: %s", stream.index.summary() if stream else train_set.summary())
    corrupted_rows = None
    if cfg.data.noise_ratio > 0:
        train_set, corrupted = corrupt_captions(train_set, cfg.data.noise_ratio, cfg.data.noise_seed)
        if dist.main:
            write_corrupted_pairs(run / "noisy_pairs.csv", corrupted)
        corrupted_rows = torch.zeros(len(train_set), dtype=torch.bool)
        corrupted_rows[[pair.row for pair in corrupted]] = True
        log.info("noise: captions of %d training rows corrupted (listed in %s)", len(corrupted), run / "noisy_pairs.csv")
    if val_set is not None:
        log.info("val: %s", val_set.summary())

    if saved_tokenizer:
        tokenizer = load_tokenizer(run)
    else:  # deterministic: every process builds the same one
        tokenizer = train_tokenizer(stream.captions() if stream else train_set.captions, cfg.model.vocab_size)
        if dist.main:
            atomic_write(tokenizer_path, lambda tmp: tokenizer.save(str(tmp)))
    model = build_model(cfg, tokenizer)
    objective = build_run_objective(cfg)
    if dist.main:
        check_free_space(run, model, objective)
    cache = ClipCache(cfg.data.cache_dir, cfg.audio.sample_rate, cfg.audio.max_seconds) if cfg.data.cache_dir else None

    trainer = Trainer(cfg, run, model, objective, train_set, val_set, device, cache, corrupted_rows, stream, dist)
    resumed = resume and trainer.resume()
    metrics = MetricsLog(run / "metrics.jsonl" if dist.main else None, trainer.state if resumed else None)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2f M parameters; %d steps/epoch on %s", n_params / 1e6, trainer.steps_per_epoch, device)
    try:
        summary = trainer.fit(metrics)
    finally:
        metrics.close()
    skipped = dist.all_sum(trainer.skipped_samples)
    summary.update({"run": str(run), "skipped_samples": skipped, "bad_rows": len(train_set.bad) if train_set else 0})
    return summary
