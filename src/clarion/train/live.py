"""``train.log_to``: the records of ``metrics.jsonl`` also sent, as they are written, to TensorBoard
and/or Weights & Biases (rank 0 only: :class:`~.metrics.MetricsLog` of the other ranks writes nothing).

Scalars (:func:`scalars`): every number of a step or epoch record under its ``metrics.jsonl``
key (``loss``, ``lr``, ``lr_audio``, ``grad_norm``, diagnostics, ``train_loss``,
``val_mean_R@1``, …), the nested ``val`` dict flattened with ``/`` (``val/<key>/<metric>``), at
the record's ``step``. ``type``, ``epoch`` and ``step`` are the axes, not scalars; values that are
not numbers (``None``, ``best: true``) are left out.

Resuming never logs a step twice:

- TensorBoard (``RUN/tensorboard/``): the writer opens with ``purge_step`` = the checkpoint's step,
  so a reader drops every event the interrupted run wrote at or after it, and the records that
  ``metrics.jsonl`` kept at that step are written again; the replay then logs the rest once.
  Every record is flushed at once, so a killed run loses nothing it had logged.
- W&B: the run id is kept in ``RUN/wandb_run.json`` and the run resumed with it
  (``resume="allow"``); records up to the last one the interrupted run had written to
  ``metrics.jsonl`` are not sent again (W&B cannot delete logged steps). A process killed between
  the two writes loses that one record in W&B. W&B runs offline (files under ``RUN/wandb/``,
  uploaded later with ``wandb sync``) unless the user configured it: ``WANDB_MODE`` or
  ``WANDB_API_KEY`` set in the environment.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..config import Config
from ..files import atomic_write_json
from ..rundir import RunError
from .metrics import MetricsLog, record_key

_AXES = ("type", "epoch", "step")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record by tag (see the module docstring)."""
    out: dict[str, float] = {}

    def add(tag: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{tag}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)

    for key, value in record.items():
        if key not in _AXES:
            add(key, value)
    return out


def check_live_loggers(kinds: list[str]) -> None:
    """Refuse to start a run whose ``train.log_to`` names a package that is not installed."""
    for kind, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")):
        if kind in kinds:
            try:
                __import__(module)
            except ImportError:
                raise RunError(f"train.log_to={kind} needs the {module} package: pip install 'clarion[{extra}]'") from None


class TensorBoardLog:
    def __init__(self, directory: Path, metrics: MetricsLog):
        from torch.utils.tensorboard import SummaryWriter

        start = metrics.resumed.step if metrics.resumed is not None else 0
        self.writer = SummaryWriter(str(directory), purge_step=start)
        for record in metrics.kept:
            if record["step"] >= start:
                self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_configured() -> bool:
    """Whether the user chose a W&B mode or gave an API key (else clarion logs offline)."""
    return bool(os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"))


class WandbLog:
    def __init__(self, run: Path, cfg: Config, metrics: MetricsLog):
        import wandb

        id_file = run / "wandb_run.json"
        self.after = None  # the record_key up to which the interrupted process had already sent records
        if id_file.exists():
            try:
                run_id = json.loads(id_file.read_text(encoding="utf-8"))["id"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunError(f"{id_file} is unreadable ({exc}); delete it to start a new W&B run") from exc
            self.after = metrics.logged_until
        else:  # W&B's first session for this run (also when log_to=wandb is added on --resume): send all
            run_id = secrets.token_hex(4)  # W&B run ids: letters and digits
            atomic_write_json(id_file, {"id": run_id})
        try:
            self.run = wandb.init(
                dir=str(run), id=run_id, resume="allow", mode=None if wandb_configured() else "offline",
                project=os.environ.get("WANDB_PROJECT", "clarion"), name=run.name, config=cfg.to_dict(),
            )
        except Exception as exc:  # wandb raises its own errors (no network, bad key, ...): one clear line
            raise RunError(f"train.log_to=wandb: W&B did not start ({type(exc).__name__}: {exc}); "
                           "unset WANDB_MODE / WANDB_API_KEY to log offline, or drop wandb from train.log_to") from exc
        for record in metrics.kept:
            self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        if self.after is not None and record_key(record) <= self.after:
            return
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class LiveLog:
    """The sinks of ``train.log_to`` as one :class:`~.metrics.Sink`."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_live_log(run: Path, cfg: Config, metrics: MetricsLog) -> LiveLog:
    """The sinks ``cfg.train.log_to`` names, caught up with what ``metrics`` kept (see the module docstring)."""
    check_live_loggers(cfg.train.log_to)
    sinks: list[Any] = []
    for kind in dict.fromkeys(cfg.train.log_to):
        if kind == "tensorboard":
            sinks.append(TensorBoardLog(run / "tensorboard", metrics))
        elif kind == "wandb":
            sinks.append(WandbLog(run, cfg, metrics))
    return LiveLog(sinks)
