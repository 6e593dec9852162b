"""WebDataset shards as a corpus (spec ``webdataset:DIR[@SPLIT]``, alias ``wds``): see :mod:`clarion.data.shards`."""

from __future__ import annotations

from ..shards.reader import load_shard_split, shard_splits
from .common import Adapter
from .wavcaps import stripped_split

ADAPTER = Adapter("webdataset", shard_splits, load_shard_split, stripped_split,
                  "a subfolder holding shards, e.g. train, valid, test (or none: PATH's own shards)",
                  "shards.json, sizes.json or *.tar in PATH or PATH/SPLIT")
