"""GradCache (Gao et al., 2021): the gradient of a loss over a whole batch of embeddings, with
the activation memory of ``train.chunk_size`` rows.

1. :meth:`GradCache.embed`: embed every chunk without a graph; the embeddings of the whole
   batch become leaves that require grad.
2. The trainer computes the loss on the whole batch and backpropagates it to those leaves
   (the objective's parameters get their gradients here): ``G = ∂L/∂(a, t)``.
3. :meth:`GradCache.backward`: re-embed each chunk k with a graph and backpropagate its slice
   ``G_k``. The loss depends on the encoders' parameters θ only through the embeddings, so
   ``Σ_k (∂(a_k, t_k)/∂θ)ᵀ G_k = ∂L/∂θ``.

This is exact when step 3 reproduces step 1's embeddings: each chunk re-runs from the RNG
states it started from in step 1 (torch CPU and CUDA: dropout; numpy and python: random crops a
feature extractor may draw; generators held by modules, such as SpecAugment's), and the model's
buffers are restored after step 1, so BatchNorm running statistics are updated once per chunk
(in step 3), not twice.

**Limitation:** BatchNorm in train mode normalises by the statistics of the *chunk* (in both
passes), so with BatchNorm the gradient is that of per-chunk statistics, not the full-batch
step's; with per-sample norms (LayerNorm), eval-mode or frozen BatchNorm and no dropout it is
the full-batch gradient. Dropout masks are drawn per chunk: a different draw from the one a
full-batch forward would make, reproduced exactly in both passes.

Under DDP, step 3 runs through the DDP wrapper and all-reduces only on the last chunk
(``no_sync`` before); the gathered loss of step 2 already holds the factor derived in
:mod:`.distributed`, so the result is the same exact gradient.
"""

from __future__ import annotations

import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .distributed import Dist


def rng_state(device: torch.device) -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def set_rng_state(state: tuple[Any, ...], device: torch.device) -> None:
    cpu, cuda, numpy_state, python_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class GradCache:
    """One step's chunked embedding: :meth:`embed`, the caller's loss backward, then :meth:`backward`.

    ``model`` maps ``(wave, captions)`` to ``(a, t)`` (a :class:`~clarion.models.DualEncoder`);
    ``forward`` is the same model as trained (its DDP wrapper, or itself); ``context`` makes the
    autocast context of both passes.
    """

    def __init__(
        self, model: nn.Module, forward: nn.Module, chunk_size: int, device: torch.device,
        context: Callable[[], AbstractContextManager] = nullcontext,
    ):
        if chunk_size < 1:
            raise ValueError(f"train.chunk_size must be >= 1, got {chunk_size}")
        self.model, self.forward, self.chunk_size, self.device, self.context = model, forward, chunk_size, device, context

    def embed(self, wave: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """All embeddings, computed chunk by chunk without a graph: leaves ``a``, ``t`` requiring grad."""
        n = -(-len(wave) // self.chunk_size)  # chunks of near-equal sizes ≤ chunk_size: no tiny last one
        size, extra = divmod(len(wave), n)
        starts = [k * size + min(k, extra) for k in range(n + 1)]
        self.chunks = [(wave[i:j], captions[i:j]) for i, j in zip(starts, starts[1:])]
        # generators held by modules (SpecAugment's), replayed per chunk like the global RNGs
        self.generators = [m.generator for m in self.model.modules() if isinstance(getattr(m, "generator", None), torch.Generator)]
        self.states, outputs = [], []
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        with torch.no_grad():
            for chunk_wave, chunk_captions in self.chunks:
                self.states.append((rng_state(self.device), [g.get_state() for g in self.generators]))
                with self.context():
                    outputs.append(self.model(chunk_wave, chunk_captions))
        for buffer, saved in buffers:  # step 1 leaves no trace in BatchNorm statistics
            buffer.copy_(saved)
        self.a = torch.cat([a for a, _ in outputs]).requires_grad_()
        self.t = torch.cat([t for _, t in outputs]).requires_grad_()
        return self.a, self.t

    def backward(self) -> None:
        """After the loss's backward filled ``a.grad`` and ``t.grad``: accumulate the parameters'
        gradients chunk by chunk (each chunk's graph freed before the next)."""
        grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in (self.a, self.t)]
        after = rng_state(self.device), [g.get_state() for g in self.generators]
        start = 0
        for k, ((chunk_wave, chunk_captions), state) in enumerate(zip(self.chunks, self.states)):
            self._restore(state)
            last = k == len(self.chunks) - 1
            with nullcontext() if last else Dist.no_sync(self.forward):
                with self.context():
                    a, t = self.forward(chunk_wave, chunk_captions)
                end = start + len(chunk_wave)
                torch.autograd.backward([a, t], [g[start:end] for g in grads])
            start = end
        self._restore(after)

    def _restore(self, state: tuple[tuple[Any, ...], list[torch.Tensor]]) -> None:
        set_rng_state(state[0], self.device)
        for generator, saved in zip(self.generators, state[1]):
            generator.set_state(saved)
