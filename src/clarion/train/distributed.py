"""Data-parallel training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

    torchrun --nproc-per-node 2 -m clarion.cli train --train T.csv --out RUN train.batch_size=64

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` reads them and starts the process group (NCCL on CUDA, gloo on the CPU). Without
them (or with ``WORLD_SIZE=1``) :class:`Dist` is the single process and every method below is
the identity, so the one-process path is unchanged.

**``train.batch_size`` is the global batch.** Every step rank r takes rows ``[r·b, (r+1)·b)``
(``b = batch_size / world``) of the global batch the single process would train on, whose
order is a function of ``(seed, epoch)``; so steps, schedule and checkpoints do not depend on
the number of processes, and a run resumes with another one.

**Global negatives.** Each rank embeds its rows, :meth:`Dist.gather` all-gathers them with
:class:`AllGather` (an all-gather that backpropagates, as ``torch.distributed.nn.functional``'s,
deprecated in torch 2.13, does), and the objective sees the whole global batch (embeddings and
clip ids, in rank order: the single process's batch).

**The factor ``world``.** Let ``L(A)`` be the single-process loss on the global batch
``A = [A_0; …; A_{w−1}]`` (``A_r``: rank r's rows) and ``ℓ_r`` the loss rank r backpropagates.
The all-gather's backward sums over ranks what each rank's loss sends to a slice, so rank r's
embeddings receive ``g_r = Σ_s ∂ℓ_s/∂A_r``; DDP then averages the parameter gradients:

    ∇_θ = (1/w) Σ_r (∂A_r/∂θ)ᵀ g_r = Σ_r (∂A_r/∂θ)ᵀ ∂/∂A_r [ (1/w) Σ_s ℓ_s ],

which is ``∂L/∂θ`` exactly when ``(1/w) Σ_s ℓ_s = L``: the ranks' losses must *average* to the
global loss, and no explicit factor is needed (the sum's w cancels DDP's 1/w). Two ways:

- *full* (any objective): every rank computes ``ℓ_r = L`` on the gathered batch (m-LTM needs
  the whole plan, the triplet sampler the whole batch; SVR's radius statistics and loss terms
  are logged as batch values). The objective's work, small next to the encoders', is repeated
  w times, and its diagnostics equal the single process's.
- *local* (objectives with :meth:`~clarion.objectives.Objective.local_loss`: InfoNCE, SigLIP):
  rank r computes only its anchor rows against all columns, the mean ``m_r`` of those anchors'
  terms; with ``L = Σ_r (n_r/B) m_r`` (n_r rows on rank r, B in all), ``ℓ_r = w (n_r/B) m_r``
  (= ``m_r`` for equal shares) averages to L.

The objective's parameters φ (temperature, bias, radius MLP, metric) are not in the DDP module:
rank r's gradient is ``∂ℓ_r/∂φ``, and :meth:`Dist.average_gradients` makes it
``(1/w) Σ_r ∂ℓ_r/∂φ = ∂L/∂φ``. Its buffers (the triplet sampler's draw counter) advance alike
on every rank, which computes the same objective calls; the metric projection after each step
sees the same M everywhere.

Rank 0 alone writes ``metrics.jsonl``, checkpoints and the model, and validates (the others
wait for it). Each rank's dropout RNG is its own (ranks > 0 are seeded from
``(seed, rank, step)``) and checkpoints keep every rank's state, so a resume with the same
number of processes is exact; with another, ranks without a saved state are seeded afresh.
BatchNorm uses each rank's local batch statistics (as usual in DDP; no SyncBatchNorm).
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..objectives import Objective, ObjectiveOutput
from ..runtime import resolve_device

log = logging.getLogger("clarion.train")

TIMEOUT = timedelta(hours=2)  # collectives wait this long, e.g. for rank 0's validation


class AllGather(torch.autograd.Function):
    """Every rank's ``x`` [n, ...] (the same n everywhere) concatenated in rank order, [w·n, ...].

    Backward: rank r's rows receive the sum over ranks of the gradients for them (an all-reduce
    of the whole gradient, then r's slice), the adjoint of the gather when every rank has a loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = len(grad) // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of rank ``rank`` > 0 starting (or resuming without its state) at ``step``."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``Dist()`` is the single process (every method a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started: bool = False  # this process started the process group (and closes it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's rows ``batch[r·b : (r+1)·b]`` of a global batch."""
        if not self.enabled:
            return batch
        lo, hi = self.row_range(len(batch))
        return batch[lo:hi]

    def row_range(self, batch_size: int) -> tuple[int, int]:
        b = batch_size // self.world
        return self.rank * b, (self.rank + 1) * b

    def sizes(self, n: int) -> list[int]:
        """Every rank's number of rows this step (``[n]`` in one process); fewer than b where bad
        samples were dropped."""
        if not self.enabled:
            return [n]
        mine = torch.tensor([n], device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        return [int(x) for x in every]

    def gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The rows of every rank, concatenated in rank order; differentiable (the backward sums
        the ranks' gradients for this rank's rows). Shares may differ in size (padded to send)."""
        if not self.enabled:
            return x
        pad = max(sizes) - len(x)
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        every = AllGather.apply(x)
        step = max(sizes)
        return torch.cat([every[r * step : r * step + n] for r, n in enumerate(sizes)])

    def gather_batch(self, sizes: list[int], a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor, index: torch.Tensor):
        """The global batch: embeddings ``a``, ``t`` (with autograd), clip ids and manifest rows."""
        if not self.enabled:
            return a, t, audio_ids, index
        both = self.gather(torch.cat([a, t], 1), sizes)
        ids = self.gather(torch.stack([audio_ids, index.to(audio_ids.device)], 1), sizes)
        return both[:, : a.shape[1]], both[:, a.shape[1] :], ids[:, 0], ids[:, 1].cpu()

    def objective_loss(
        self, objective: Objective, a: torch.Tensor, t: torch.Tensor, audio_ids: torch.Tensor, sizes: list[int]
    ) -> tuple[ObjectiveOutput, torch.Tensor]:
        """The objective on the gathered batch: ``out.loss`` is what this rank backpropagates
        (ℓ_r, averaging to L over ranks: module docstring) and the second value L itself, detached."""
        if not self.enabled:
            out = objective(a, t, audio_ids)
            return out, out.loss.detach()
        start, n = sum(sizes[: self.rank]), sizes[self.rank]
        local = getattr(objective, "local_loss", None)
        out = local(a, t, audio_ids, slice(start, start + n)) if local is not None else None
        if out is None:  # full: every rank computes the same L
            out = objective(a, t, audio_ids)
            return out, out.loss.detach()
        out.loss = out.loss * (self.world * n / sum(sizes))
        return out, self.mean(out.loss)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of ``params`` (the objective's, outside DDP) over ranks, in one all-reduce."""
        grads = [p.grad for p in params if p.grad is not None] if self.enabled else []
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, value in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(value.view_as(g))

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over ranks (``x`` itself in one process)."""
        if not self.enabled:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / self.world

    def all_sum(self, value: int) -> int:
        if not self.enabled:
            return value
        x = torch.tensor([value], device=self.device)
        dist.all_reduce(x)
        return int(x)

    def broadcast(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (DDP does this for the model; here: the objective)."""
        if self.enabled:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (the model itself in one process). Towers may hold
        parameters the embeddings do not use (a PANNs classifier, a Hugging Face pooler), hence
        ``find_unused_parameters``."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    @staticmethod
    def no_sync(module: nn.Module):
        """DDP's ``no_sync`` (accumulate without all-reduce); a no-op context for a plain module."""
        return module.no_sync() if isinstance(module, DistributedDataParallel) else nullcontext()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The torch RNG states of ranks > 0 (``rng.rank{r}.torch`` / ``.cuda``), for rank 0's
        checkpoint (rank 0's own are saved as ``rng.torch``). Collective."""
        if not self.enabled:
            return {}
        mine = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [])
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine)
        out = {}
        for r, states in enumerate(every[1:], 1):
            out.update(zip((f"rng.rank{r}.torch", f"rng.rank{r}.cuda"), states))
        return out

    def restore_rng(self, tensors: dict[str, torch.Tensor], seed: int, step: int) -> None:
        """Rank r > 0: its saved RNG state, or a fresh stream from ``(seed, r, step)``. Rank 0 keeps
        the state the checkpoint restored (or the seeded one), as a single process does."""
        if self.rank == 0:
            return
        state = tensors.get(f"rng.rank{self.rank}.torch")
        if state is None:
            torch.manual_seed(rank_seed(seed, self.rank, step))
            return
        torch.set_rng_state(state)
        cuda = tensors.get(f"rng.rank{self.rank}.cuda")
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

    def close(self, clean: bool = True) -> None:
        """Destroy the process group this object started; after a clean run, first wait for every rank."""
        if self.started:
            shutdown_process_group(clean)


def shutdown_process_group(clean: bool = True) -> None:
    """Destroy the process group; when ``clean`` (every rank finished the same collectives), first
    wait for all ranks. Without that barrier a rank can tear gloo down while a peer's last send is
    still in flight, which aborts the process at exit ("terminate called without an active
    exception"). After an error no barrier: the other ranks may be inside another collective.

    Garbage is collected first: a DistributedDataParallel wrapper kept alive by a reference cycle
    (the trainer's callbacks hold the trainer) would otherwise be destroyed at interpreter exit,
    after its process group, and its reducer's teardown can abort the process the same way."""
    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def setup(device_name: str, batch_size: int) -> Dist:
    """The process group of a ``torchrun`` job (or an already initialised one), or the single process.

    ``auto``/``cuda`` take GPU ``LOCAL_RANK`` with NCCL; ``cpu`` (or no GPU) uses gloo. Ranks > 0
    log warnings only.
    """
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=resolve_device(device_name))
    rank = dist.get_rank() if initialised else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} is the global batch and must be divisible by the {world} processes "
            f"(each takes batch_size / {world} rows per step)"
        )
    if device_name.startswith("cuda:"):
        raise ValueError(f"train.device={device_name}: under torchrun each process takes GPU LOCAL_RANK; use cuda or auto")
    device = resolve_device("cuda" if device_name == "cuda" else device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not initialised:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if rank != 0:
        logging.getLogger("clarion").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s), global batch %d = %d per process",
             world, dist.get_backend(), batch_size, batch_size // world)
    return Dist(rank, world, local_rank, device, started=not initialised)
