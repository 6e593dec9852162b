"""WebDataset tar shards: :mod:`.format` (layout, reading samples), :mod:`.writer` (``clarion
shards``), :mod:`.reader` (the shard index, a split as manifest rows), :mod:`.stream` (training
batches with exact resume).

This package's ``__init__`` imports nothing: :mod:`clarion.data.sources` reads shards through
:mod:`.reader`, while :mod:`.writer` reads its input through :func:`clarion.data.open.open_source`,
which sits above the sources.
"""
