"""A training step that meets a NaN or Inf changes nothing: one context, :class:`NonFiniteGuard`.

Inside ``with guard.step(buffers):`` the step calls :meth:`NonFiniteGuard.check` on its loss and
on its gradient norm; a non-finite value leaves the block at once, and the guard then drops the
gradients, restores the buffers the forward pass updated (BatchNorm statistics, …), counts the
skip in the :class:`~.checkpoint.TrainingState` and logs it with the rows of the batch.
``max_steps`` skips in a row raise :class:`TrainingDiverged`. Optimiser and scheduler have not
stepped yet at either check, so they are untouched.

Under ``train.precision=fp16`` a gradient scaler multiplies the loss before backward. Gradients
that overflow at that scale are the scaler's business, not a failure: the step calls
:meth:`NonFiniteGuard.overflow` after the scaler halved its scale, and the guard undoes the step
the same way but counts it apart (``overflow_steps``), outside the streak that stops the run.
A non-finite loss is always the guard's (it is checked before any scaling), and so are
non-finite gradients once the scale is at or below 1 (the caller decides: see
:meth:`~.loop.Trainer.train_step`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..rundir import RunError
from .checkpoint import TrainingState

log = logging.getLogger("clarion.train")


class TrainingDiverged(RunError):
    """``train.max_nonfinite_steps`` consecutive steps had a non-finite loss or gradient."""


class _NonFinite(Exception):
    def __init__(self, what: str, value: float):
        super().__init__(what)
        self.what, self.value = what, value


class _Overflow(Exception):
    def __init__(self, scale: float):
        super().__init__("overflow")
        self.scale = scale


class NonFiniteGuard:
    """``optimizer``: whose gradients a skipped step drops; ``state()``: the training state to count
    in; ``describe(rows)``: the batch rows for the log; ``run``: named in the divergence message."""

    def __init__(self, optimizer: torch.optim.Optimizer, state: Callable[[], TrainingState],
                 describe: Callable[[list[int]], str], max_steps: int, run: Path):
        self.optimizer, self.state, self.describe, self.max_steps, self.run = optimizer, state, describe, max_steps, run
        self.rows: torch.Tensor | None = None  # the step's global batch rows, once known
        self.skipped = False

    @staticmethod
    def check(what: str, value: torch.Tensor) -> None:
        """Leave the step when ``value`` (0-dim) is NaN or ±Inf."""
        if not torch.isfinite(value):
            raise _NonFinite(what, float(value))

    @staticmethod
    def overflow(scale: float) -> None:
        """Leave the step: its scaled gradients overflowed at loss scale ``scale`` (not counted as non-finite)."""
        raise _Overflow(scale)

    @contextmanager
    def step(self, buffers: list[torch.Tensor]) -> Iterator[NonFiniteGuard]:
        """Snapshot ``buffers``; on a failed :meth:`check` undo the step (see the module docstring)."""
        saved = [b.detach().clone() for b in buffers]
        self.rows, self.skipped = None, False
        try:
            yield self
        except (_NonFinite, _Overflow) as bad:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)
            self.skipped = True
            if isinstance(bad, _Overflow):
                st = self.state()
                st.overflow_steps += 1
                log.info("fp16 gradients overflowed at loss scale %g after step %d; step skipped, scale halved "
                         "(%d such steps in all)", bad.scale, st.step, st.overflow_steps)
            else:
                self._count(bad.what, bad.value)
        else:
            self.state().nonfinite_streak = 0

    def _count(self, what: str, value: float) -> None:
        st = self.state()
        st.nonfinite_steps += 1
        st.nonfinite_streak += 1
        rows = self.describe(self.rows.tolist() if self.rows is not None else [])
        log.warning("non-finite %s (%s) after step %d (epoch %d, batch %d); step skipped (%d in a row, %d in all); rows: %s",
                    what, value, st.step, st.epoch + 1, st.step_in_epoch + 1, st.nonfinite_streak, st.nonfinite_steps, rows)
        if st.nonfinite_streak >= self.max_steps:
            raise TrainingDiverged(
                f"training stopped: {st.nonfinite_streak} consecutive steps had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps={self.max_steps}; last: {what} {value} after step {st.step}, epoch {st.epoch + 1}, "
                f"rows {rows}). The weights are those of the last finite step; checkpoints in {self.run / 'checkpoints'} "
                "are intact. Lower train.lr, check the data (clarion data check), or raise train.max_nonfinite_steps."
            )
