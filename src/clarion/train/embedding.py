"""One call from a loader batch to the global batch's embeddings, and one call back.

:meth:`BatchEmbedder.embed` hides the two ways a step embeds (all rows in one forward pass, or
chunk by chunk with :class:`~.gradcache.GradCache` when ``train.chunk_size`` is smaller than
this process's rows) and the all-gather of a torchrun job (:meth:`~.distributed.Dist.gather_batch`).
It returns :class:`Embedded`: the global batch ``a``, ``t`` [B, d] (fp32, unit norm, with
autograd to this process's rows), ``audio_ids`` [B], ``index`` [B] (manifest rows) and
:meth:`Embedded.backward`, which takes the loss to the encoders' parameters either way::

    loss.backward()                 # to the embeddings (and the objective's state)
    gradcache.backward()            # under GradCache only: chunk by chunk to the encoders
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import Dist
from .gradcache import GradCache


@dataclass
class Embedded:
    """The embedded global batch (see the module docstring)."""

    a: torch.Tensor
    t: torch.Tensor
    audio_ids: torch.Tensor
    index: torch.Tensor
    cache: GradCache | None = None

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` to every parameter (under GradCache: through the cached embeddings)."""
        loss.backward()
        if self.cache is not None:
            self.cache.backward()


class BatchEmbedder:
    """``model`` is the dual encoder, ``forward`` the module trained (its DDP wrapper, or itself);
    ``context()`` gives the autocast context of every forward pass."""

    def __init__(self, model: nn.Module, forward: nn.Module, dist: Dist, device: torch.device,
                 chunk_size: int | None, context: Callable[[], AbstractContextManager]):
        self.model, self.forward, self.dist, self.device = model, forward, dist, device
        self.chunk_size, self.context = chunk_size, context

    def embed(self, batch: dict, sizes: list[int]) -> Embedded:
        """``batch``: this process's rows (``audio`` [n, samples], ``caption``, ``audio_id``, ``index``);
        ``sizes``: every process's n (:meth:`~.distributed.Dist.sizes`)."""
        wave = batch["audio"].to(self.device, non_blocking=True)
        audio_ids = batch["audio_id"].to(self.device)
        cache = None
        if self.chunk_size and len(wave) > self.chunk_size:
            cache = GradCache(self.model, self.forward, self.chunk_size, self.device, self.context)
            a, t = cache.embed(wave, batch["caption"])
        else:
            with self.context():
                a, t = self.forward(wave, batch["caption"])
        a, t = a.float(), t.float()
        a, t, audio_ids, index = self.dist.gather_batch(sizes, a, t, audio_ids, batch["index"])
        return Embedded(a, t, audio_ids, index, cache)
