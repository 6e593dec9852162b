"""The ``clarion`` command: a thin layer over the Python API.

One module per command group: :mod:`.bench` (synth, compare, report), :mod:`.train` (train, objectives), :mod:`.data` (shards,
data check), :mod:`.evaluate` (evaluate, zeroshot), :mod:`.serve` (serve, export, embed, index
build, search), :mod:`.convert` (convert laion-clap, msclap); :mod:`.options` holds what they share. Errors the user can fix (bad config, bad
manifest, missing run files) print one line and exit with status 2; set CLARION_DEBUG=1 to see
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError
from . import bench, convert, data, evaluate, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (bench, train, data, evaluate, serve, convert):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere, also after options (`--objective triplet sampling=hard`)
    trailing = next((name for name in ("overrides", "items") if isinstance(getattr(args, name, None), list)), None)
    if extra and (trailing is None or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, trailing).extend(extra)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from ..audio import AudioError
    from ..data.records import ManifestError
    from ..models.hf import HfLoadError
    from ..rundir import RunError

    try:
        return args.func(args)
    except (ConfigError, ManifestError, RunError, AudioError, HfLoadError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("CLARION_DEBUG"):
            raise
        print(f"clarion {args.command}: error: {exc}", file=sys.stderr)
        return 2
