"""Where rows come from: :mod:`.records` (the row types) at the bottom, :mod:`.manifest`
(manifest files, the row checks), :mod:`.sources` (one adapter per public corpus),
:mod:`.shards` (webdataset tar shards), :mod:`.open` (``open_source``, the one dispatcher every
command uses), :mod:`.loaders` (torch datasets, ``collate``), :mod:`.noise`, :mod:`.check`.

This ``__init__`` imports nothing, so importing one of them loads only what it needs.
"""
