"""Where rows come from: :func:`open_source`, the one dispatcher every command reads data through.

``path_or_spec`` is an existing manifest file (CSV / JSON lines, :mod:`.manifest`) or a dataset
spec ``NAME:PATH[@SPLIT]`` (:mod:`.sources`: Clotho, AudioCaps, ESC-50, UrbanSound8K, WavCaps,
and webdataset shards through :mod:`.shards.reader`). Either way the rows pass the same
validation (:func:`~clarion.data.manifest.build_manifest`) under the ``on_bad_sample`` policy,
which is checked here, once for every reader below.
"""

from __future__ import annotations

import os

from ..config import OnBadSample, choices
from .manifest import read_manifest
from .records import Manifest
from .sources import parse_spec, read_dataset


def open_source(path_or_spec: str | os.PathLike, on_bad_sample: OnBadSample = "skip", check_audio: bool = True) -> Manifest:
    """The validated :class:`Manifest` of a manifest file or a dataset spec.

    An existing file is always read as a manifest; anything else of the form ``NAME:PATH``
    (``NAME`` two or more letters, digits, ``_`` or ``-``) is a dataset spec, read by
    :func:`clarion.data.sources.read_dataset`; anything else is reported as a missing manifest.
    """
    if on_bad_sample not in choices(OnBadSample):
        raise ValueError(f"on_bad_sample must be one of {choices(OnBadSample)}, got {on_bad_sample!r}")
    if not os.path.isfile(path_or_spec):
        spec = parse_spec(path_or_spec)
        if spec is not None:
            return read_dataset(spec, on_bad_sample, check_audio)
    return read_manifest(path_or_spec, on_bad_sample, check_audio)
