"""``RUN/metrics.jsonl``: one JSON record per logged step and per epoch (see docs/architecture.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from ..files import atomic_write_text
from ..rundir import RunError
from .checkpoint import TrainingState


class Sink(Protocol):
    """Somewhere records also go (:mod:`.live`: TensorBoard, W&B)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def record_key(record: dict[str, Any]) -> tuple[int, int]:
    """The order records are written in: by step, a step's record before the epoch record at that step."""
    return int(record["step"]), 0 if record["type"] == "step" else 1


class MetricsLog:
    """Appends JSON lines to ``RUN/metrics.jsonl``.

    ``resumed=None`` starts an empty log; a :class:`TrainingState` (the checkpoint a run resumes
    from) keeps what that state had logged: step records up to its step and the records of the
    epochs it had finished, so a resumed run drops what the interrupted one logged after its
    checkpoint and the replay logs it again, once. The kept lines are rewritten atomically.
    ``path=None`` logs nothing (processes other than rank 0).

    After construction ``kept`` holds the records kept from an interrupted run, ``logged_until``
    the :func:`record_key` of the last record that run had written (kept or not; None for a new
    log), and every record written is also handed to each of ``sinks``.
    """

    def __init__(self, path: Path | None, resumed: TrainingState | None):
        self.path = path
        self._fh = None
        self.sinks: list[Sink] = []
        self.resumed = resumed
        self.kept: list[dict[str, Any]] = []
        self.logged_until: tuple[int, int] | None = None
        if path is None:
            return
        kept = []
        if path.exists():  # a resumed run (without a checkpoint yet: nothing is kept, but it was logged)
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    if resumed is None:
                        done = False
                    elif record["type"] == "epoch":
                        done = record["epoch"] < resumed.epoch
                    else:
                        done = record["step"] <= resumed.step
                    key = record_key(record)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line torn by the interruption
                self.logged_until = max(self.logged_until or key, key)
                if done:
                    kept.append(line)
                    self.kept.append(record)
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
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        for sink in self.sinks:
            sink.close()
