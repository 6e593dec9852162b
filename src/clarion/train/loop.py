"""The training loop. It knows no objective: it calls ``objective(a, t, audio_ids)``,
backpropagates the loss and logs whatever diagnostics come back.

Reproducibility: the epoch's batch order comes from ``(seed, epoch)``, each item's random
crop (and gain and shift) from ``(seed, epoch, index)``, mixup and SpecAugment masks from
``(seed, step, rank)`` (:mod:`.augment`) and dropout from the global torch RNG, which checkpoints
save. Resuming at step k of an epoch skips the first k batches of the same order, so a run
killed anywhere and resumed ends where the uninterrupted run ends. Training on webdataset
shards streams them instead (:class:`~clarion.data.shards.stream.ShardStream`, same guarantee while
the shards and settings are unchanged); :meth:`Trainer._epoch_loader` picks the path.

Under ``torchrun`` each process trains on its share of every global batch (``train.batch_size``
is the global batch) with DistributedDataParallel, and the objective sees the gathered global
batch (:mod:`.distributed`). ``train.chunk_size`` embeds a batch in chunks with GradCache
(:mod:`.gradcache`). In one process without ``chunk_size`` both are no-ops; both sit behind one
call, :meth:`~.embedding.BatchEmbedder.embed`. Diagnostics run as :mod:`.probes` on their own
schedules.

Numerical safety: a step whose loss or gradient norm is not finite changes nothing (no optimiser
or scheduler step; BatchNorm statistics and other buffers are restored); it is counted
(``nonfinite_steps`` in the epoch records) and logged with the manifest rows of its batch, and
``train.max_nonfinite_steps`` such steps in a row stop the run with :class:`TrainingDiverged`
(one context, :class:`~.nonfinite.NonFiniteGuard`).

Precision (``train.precision``, :func:`~clarion.runtime.resolve_precision`): the forward passes run
under bf16 or fp16 autocast (the objective always in fp32); fp16 also scales the loss with a
``torch.amp.GradScaler`` whose overflow skips are not counted as non-finite steps (see
:mod:`.nonfinite`), and whose state the checkpoints keep.

Fine-tuning (:mod:`.schedule`, :mod:`clarion.models.freeze`): per-tower learning rates, frozen
blocks or parameter patterns, and an encoder schedule: for the first ``train.encoder_freeze_steps``
steps the encoders' gradients are dropped before clipping (heads only; AdamW never sees them, so
their moments do not move), then their rates ramp up over ``train.encoder_warmup_steps``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..audio import ClipCache
from ..config import Config
from ..data.check import validate_training_data
from ..data.loaders import AudioTextDataset, collate
from ..data.noise import corrupt_captions, write_corrupted_pairs
from ..data.open import open_source
from ..data.records import Manifest
from ..data.shards.stream import ShardStream, stream_for
from ..evaluate.embed import evaluate_retrieval
from ..evaluate.retrieval import mean_r1
from ..files import atomic_write
from ..models import DualEncoder, build_model, train_tokenizer
from ..models.freeze import freeze_layers
from ..objectives import Objective, diagnostics_as_floats
from ..rundir import OBJECTIVE_PREFIX, RunError, build_run_objective, load_run_config, load_tokenizer, model_state, save_model
from ..runtime import precision_autocast, resolve_precision
from ..version import __version__
from .augment import BatchAugment
from .checkpoint import TrainingState, find_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import Dist, setup
from .embedding import BatchEmbedder
from .live import check_live_loggers, open_live_log
from .metrics import MetricsLog
from .nonfinite import NonFiniteGuard, TrainingDiverged  # noqa: F401  (TrainingDiverged: part of this module's API)
from .probes import CollapseMonitor, CollapseProbe, DriftProbe, PlanMassProbe, Probe
from .schedule import (  # noqa: F401  (warmup_cosine, epoch_batches: re-exported)
    build_optimizer, epoch_batches, group_rates, group_schedule, seed_everything, warmup_cosine,
)

log = logging.getLogger("clarion.train")
_SHOWN_ROWS = 8  # rows of a skipped batch named in the log


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
        self.freezing = freeze_layers(self.model, self.cfg.model)  # before DDP wraps the model
        self.model.to(self.device)
        self.objective.to(self.device)
        self.forward = self.dist.wrap(self.model)  # DistributedDataParallel under torchrun
        self.dist.broadcast(self.objective)
        self.dist.restore_rng({}, self.cfg.train.seed, 0)  # ranks > 0: their own dropout stream
        self.optimizer = build_optimizer(self.cfg, self.model, self.objective)
        self.roles = [group["role"] for group in self.optimizer.param_groups]  # before a checkpoint replaces the groups
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.encoder_params = [p for group in self.optimizer.param_groups if group["role"] != "heads" for p in group["params"]]
        self.objective_params = [p for p in self.objective.parameters() if p.requires_grad]
        self.steps_per_epoch = self.stream.num_batches(0) if self.stream else len(self._batches(0))
        total = self.cfg.train.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, group_schedule(self.cfg, self.roles, total))
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
                augment=self.cfg.augment,
                pad=self.cfg.audio.pad,
            )
        self.state = TrainingState(epoch=0, step=0, step_in_epoch=0, best_score=-1.0, best_epoch=-1)
        self.skipped_samples = 0
        c = self.cfg.train
        self.max_grad_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
        self.precision = resolve_precision(c.precision, c.amp, self.device)
        precision_autocast(self.device, self.precision)  # a device without autocast: refused before training
        self.embedder = BatchEmbedder(self.model, self.forward, self.dist, self.device, c.chunk_size,
                                      lambda: precision_autocast(self.device, self.precision))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.augment = BatchAugment(self.cfg.augment, self.model, c.seed, self.dist.rank)  # mixup, SpecAugment seeds
        self.buffers = [b for m in (self.model, self.objective) for b in m.buffers()]  # restored if a step is skipped
        self.guard = NonFiniteGuard(self.optimizer, lambda: self.state, self.describe_rows, c.max_nonfinite_steps, self.run)
        self.collapse = CollapseMonitor(c.collapse_max_cos, c.collapse_min_rank, c.collapse_patience, c.warmup_steps)
        self.probes: list[Probe] = []  # in this order: the step records keep their key order
        if self.corrupted_rows is not None:
            self.probes.append(PlanMassProbe(self.corrupted_rows))
        if c.drift_every:
            self.probes.append(DriftProbe(c.drift_every, self.dist.mean))
        if c.collapse_every:
            self.probes.append(CollapseProbe(c.collapse_every, self.collapse))

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
        if self.scaler.is_enabled() and "scaler" in meta:
            self.scaler.load_state_dict(meta["scaler"])
        self.dist.restore_rng(tensors, self.cfg.train.seed, self.state.step)
        log.info("resumed from %s (epoch %d, step %d)", path, self.state.epoch, self.state.step)
        return True

    def checkpoint(self) -> None:
        ranks_rng = self.dist.rng_states()  # collective: every rank's dropout RNG
        if self.dist.main:
            state = model_state(self.model, self.objective)
            save_checkpoint(self.run, state, self.optimizer, self.scheduler, self.state, extra=ranks_rng,
                            scaler=self.scaler.state_dict() or None)

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """One optimiser step on ``batch`` (this process's share of the global batch); None when
        the step was skipped (too few rows or a non-finite loss or gradient; all processes skip together)."""
        sizes = self.dist.sizes(len(batch["audio"]))  # every process's rows: [len(batch)] in one process
        if sum(sizes) < 2 or min(sizes) == 0:
            return None
        self.model.train()
        self.objective.train()
        step = self.state.step + 1
        batch = self.augment(batch, step)
        with self.guard.step(self.buffers) as guard:  # a NaN/Inf loss or gradient undoes the step
            emb = self.embedder.embed(batch, sizes)  # the global batch (GradCache, all-gather)
            guard.rows = emb.index
            out, loss = self.dist.objective_loss(self.objective, emb.a, emb.t, emb.audio_ids, sizes)
            guard.check("loss", loss)
            for probe in self.probes:
                if probe.due(step):
                    out.diagnostics.update(probe(step, out, emb))
            self.optimizer.zero_grad(set_to_none=True)
            emb.backward(self.scaler.scale(out.loss))  # fp16: scaled; otherwise the loss itself
            self.dist.average_gradients(self.objective_params)  # DDP averages the model's
            if self.state.step < self.cfg.train.encoder_freeze_steps:
                for p in self.encoder_params:  # heads only: AdamW skips parameters without a gradient
                    p.grad = None
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
            if self.scaler.is_enabled() and not torch.isfinite(grad_norm):
                scale = self.scaler.get_scale()
                self.scaler.update()  # unscale_ saw the Inf/NaN: the scale halves
                if scale > 1.0:  # at a scale <= 1 the gradients are not finite without scaling: the guard's case
                    guard.overflow(scale)
            guard.check("gradient norm", grad_norm)  # the same on every process: gradients are averaged first
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.objective.after_optimizer_step()
            extra = {"loss_scale": self.scaler.get_scale()} if self.scaler.is_enabled() else {}
            return diagnostics_as_floats({"loss": loss, "grad_norm": grad_norm, **out.diagnostics, **extra})
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
                             **group_rates(self.roles, self.scheduler.get_last_lr()), **result,
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
        if self.scaler.is_enabled():
            record["overflow_steps"] = self.state.overflow_steps
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
    check_live_loggers(cfg.train.log_to)  # before anything is written
    if cfg.data.validate != "off":  # before anything is written: a refused run leaves no run directory
        validate_training_data(cfg)
    dist = setup(cfg.train.device, cfg.train.batch_size)  # the single process unless under torchrun
    try:
        summary = _train(cfg, run, resume, dist)
    except BaseException:
        dist.close(clean=False)
        raise
    dist.close()
    return summary


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
    train_set = None if stream else open_source(cfg.data.train, cfg.data.on_bad_sample)
    val_set = open_source(cfg.data.val, cfg.data.on_bad_sample) if cfg.data.val else None
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
    if dist.main and cfg.train.log_to:
        metrics.sinks.append(open_live_log(run, cfg, metrics))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2f M parameters; %d steps/epoch on %s, %s", n_params / 1e6, trainer.steps_per_epoch, device,
             trainer.precision)
    log.info(trainer.freezing.line())
    try:
        summary = trainer.fit(metrics)
    finally:
        metrics.close()
    skipped = dist.all_sum(trainer.skipped_samples)
    summary.update({"run": str(run), "skipped_samples": skipped, "bad_rows": len(train_set.bad) if train_set else 0})
    return summary
