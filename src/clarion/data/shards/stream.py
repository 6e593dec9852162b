"""Streaming webdataset shards for training, with exact resume.

**Streaming** (:class:`ShardStream`; training on large corpora): per epoch the shard order
is shuffled by ``(seed, epoch)`` and shard i goes to logical worker ``i % W``
(``W = max(1, data.num_workers)``), so each shard is read by exactly one DataLoader
worker. A worker streams its shards' samples through a shuffle buffer (seeded by
``(seed, epoch, worker)``), draws one caption per sample and crops like
:class:`~clarion.data.loaders.AudioTextDataset` (offset from ``(seed, epoch, sample)``),
and yields full batches only (drop_last per worker: up to ``batch_size - 1`` samples
per worker and epoch are left out). The DataLoader takes batches from the workers in
turn; an undecodable sample stays in its batch position as a bad item that ``collate``
drops, so batch boundaries never depend on decoding. Resuming at batch k of an epoch
recomputes from the shard counts which batches each worker had delivered, skips those
samples without decoding them and lets the workers deliver in the order the
uninterrupted run would: exact as long as the shards (and their counts in
``shards.json``), the seed, the batch size, the shuffle buffer and ``data.num_workers``
are unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ...audio import AudioError, decode_audio, fit_length
from ...audio.augment import augment_wave
from ...config import OnBadSample
from ..loaders import collate
from ..records import BadSampleError
from .format import Record, parse_meta, read_records, sample_problem, is_webdataset_spec, logger
from .reader import ShardIndex, open_shards


def _shuffled(records: Iterable[Record], size: int, rng: np.random.Generator) -> Iterator[Record]:
    """A shuffle buffer of ``size`` samples: each new sample replaces a random one, which is emitted."""
    if size <= 1:
        yield from records
        return
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], record = record, buffer[j]
        yield record
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def delivery_order(counts: list[int], skip: int) -> tuple[list[int], list[int]]:
    """How a DataLoader that takes batches from its workers in turn delivers after ``skip`` batches.

    ``counts[w]`` is logical worker w's batches. Returns the batches each worker had delivered
    (``done``) and the order in which DataLoader slots must serve the logical workers so that
    the rest comes in the uninterrupted order: those with batches left, starting with the
    one due next, then the others.
    """
    n = len(counts)
    done, w = [0] * n, 0
    for _ in range(min(skip, sum(counts))):
        while done[w] >= counts[w]:
            w = (w + 1) % n
        done[w] += 1
        w = (w + 1) % n
    cycle = [(w + i) % n for i in range(n)]
    active = [v for v in cycle if done[v] < counts[v]]
    return done, active + [v for v in cycle if v not in active]


class ShardStream:
    """Training batches streamed from shards; :meth:`loader` gives one epoch's DataLoader.

    Batches are :func:`~clarion.data.loaders.collate` dicts; ``audio_id`` and ``index`` are
    the samples' global numbers (each sample is its own clip).
    """

    def __init__(
        self,
        index: ShardIndex,
        sample_rate: int,
        clip_seconds: float,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        on_bad_sample: OnBadSample = "skip",
        max_seconds: float | None = None,
        rank_rows: tuple[int, int] | None = None,
        gain_db: float = 0.0,
        shift_seconds: float = 0.0,
        pad: str = "zeros",
    ):
        if batch_size < 1 or shuffle_buffer < 0 or num_workers < 0:
            raise ValueError("batch_size must be >= 1, shuffle_buffer and num_workers >= 0")
        self.index = index
        self.sample_rate = sample_rate
        self.n_samples = round(clip_seconds * sample_rate)
        self.pad = pad
        if self.n_samples <= 0:
            raise ValueError(f"clip_seconds must give at least one sample, got {clip_seconds}")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.on_bad_sample = on_bad_sample
        self.max_seconds = max_seconds
        self.gain_db = gain_db  # training augmentation (augment.*), drawn from (seed, epoch, sample, 1)
        self.shift_samples = round(shift_seconds * sample_rate)
        # under torchrun: this process decodes and yields rows [lo, hi) of every global batch
        self.rank_rows = rank_rows or (0, batch_size)
        if self.num_batches(0) == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the samples each of {self.workers} worker(s) streams "
                f"({index.total} samples in {len(index.shards)} shards)"
            )

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    def plan(self, epoch: int) -> list[list[int]]:
        """The shards (indices into ``index.shards``) of each logical worker in ``epoch``, in reading order."""
        order = np.random.default_rng([self.seed, epoch, 11]).permutation(len(self.index.shards)).tolist()
        return [order[w :: self.workers] for w in range(self.workers)]

    def worker_batches(self, epoch: int) -> list[int]:
        return [sum(self.index.shards[i].samples for i in shards) // self.batch_size for shards in self.plan(epoch)]

    def num_batches(self, epoch: int, skip: int = 0) -> int:
        return max(0, sum(self.worker_batches(epoch)) - skip)

    def epoch(self, epoch: int, skip: int = 0) -> ShardEpoch:
        """The IterableDataset of ``epoch`` without its first ``skip`` batches."""
        return ShardEpoch(self, epoch, skip)

    def loader(self, epoch: int, skip: int = 0, pin_memory: bool = False) -> tuple[DataLoader, int]:
        """A DataLoader over the batches of ``epoch`` from batch ``skip`` on, and their number.

        Its own generator keeps the DataLoader from drawing its workers' base seed from the
        global torch RNG, which a resumed run restores (dropout) after the loader of the
        interrupted run had already drawn it.
        """
        loader = DataLoader(self.epoch(epoch, skip), batch_size=None, num_workers=self.num_workers,
                            collate_fn=_identity, pin_memory=pin_memory,
                            generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        return loader, self.num_batches(epoch, skip)

    def captions(self) -> Iterator[str]:
        return self.index.captions()


def _identity(batch: dict) -> dict:
    return batch


class ShardEpoch(IterableDataset):
    """One epoch of a :class:`ShardStream`; each DataLoader worker reads its own shards."""

    def __init__(self, stream: ShardStream, epoch: int, skip: int):
        self.stream, self.epoch, self.skip = stream, epoch, skip
        self._warned: set[str] = set()

    def __iter__(self) -> Iterator[dict]:
        s = self.stream
        info = torch.utils.data.get_worker_info()
        slot, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != s.workers:
            raise RuntimeError(f"the stream was planned for {s.workers} worker(s) but runs in {n}")
        counts = s.worker_batches(self.epoch)
        done, slots = delivery_order(counts, self.skip)
        worker = slots[slot]
        offsets = s.index.offsets
        records = (r for i in s.plan(self.epoch)[worker] for r in read_records(s.index.shards[i].path, s.on_bad_sample, offsets[i]))
        rng = np.random.default_rng([s.seed, self.epoch, 13, worker])
        first, last = done[worker] * s.batch_size, counts[worker] * s.batch_size
        lo, hi = s.rank_rows
        items: list[dict] = []
        for position, record in enumerate(_shuffled(records, s.shuffle_buffer, rng)):
            if position >= last:
                break
            if position < first:
                continue  # delivered before the interruption: not decoded
            row = position % s.batch_size
            if lo <= row < hi:  # this process's share of the global batch
                items.append(self._item(record))
            if row == s.batch_size - 1:
                yield collate(items)
                items = []

    def _item(self, record: Record) -> dict:
        s = self.stream
        meta = parse_meta(record.members.get("json"))
        problem = sample_problem(record, meta)
        if problem is None:
            ext, data = record.audio()
            try:
                wave = decode_audio(io.BytesIO(data), s.sample_rate, s.max_seconds, name=record.name)
            except AudioError as e:
                problem = e.reason
        if problem is not None:
            if s.on_bad_sample == "fail":
                raise BadSampleError(f"{record.name}: {problem}; {BadSampleError.hint}")
            if record.name not in self._warned:
                self._warned.add(record.name)
                logger.warning("skipping bad sample %s: %s", record.name, problem)
            return {"bad": (record.name, problem), "index": record.number}
        rng = np.random.default_rng([s.seed, self.epoch, record.number])
        caption = meta["text"][int(rng.integers(len(meta["text"])))]
        audio = fit_length(wave, s.n_samples, rng, s.pad)
        if s.gain_db > 0 or s.shift_samples > 0:
            audio = augment_wave(audio, s.gain_db, s.shift_samples, np.random.default_rng([s.seed, self.epoch, record.number, 1]))
        return {"audio": audio, "caption": caption, "audio_id": record.number, "index": record.number}


def stream_for(cfg, rank_rows: tuple[int, int] | None = None) -> ShardStream | None:
    """The training stream for ``cfg``, or None for the index-based path.

    ``data.stream`` None (the default) streams exactly when ``data.train`` is a webdataset
    spec; ``false`` reads such a spec as a manifest (extracted, index-based); ``true``
    requires one. ``rank_rows``: a torchrun process's rows of each global batch.
    """
    d = cfg.data
    spec = is_webdataset_spec(d.train)
    stream = spec if d.stream is None else d.stream
    if not stream:
        return None
    if not spec:
        raise ValueError(f"data.stream=true needs --train webdataset:DIR (write shards with `clarion shards`), got {d.train!r}")
    if d.noise_ratio > 0:
        raise ValueError("data.noise_ratio needs a manifest; it is not supported when streaming shards (data.stream=false)")
    if d.pairs != "one_per_clip":
        logger.info("streaming draws one random caption per sample and epoch (data.pairs=%s does not apply)", d.pairs)
    return ShardStream(
        open_shards(d.train), cfg.audio.sample_rate, cfg.audio.clip_seconds, cfg.train.batch_size, cfg.train.seed,
        d.num_workers, d.shuffle_buffer, d.on_bad_sample, cfg.audio.max_seconds, rank_rows,
        cfg.augment.gain_db, cfg.augment.shift_seconds, cfg.audio.pad,
    )
