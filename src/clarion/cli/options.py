"""What the ``clarion`` commands share: ``-q``, one way to declare a command, and the options
several commands take (device, bad-sample policy, a model folder, batch size, a JSON file).

Imports nothing heavy: ``clarion --help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..config import OnBadSample, choices

COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

Command = Callable[[argparse.Namespace], int]


def add_command(sub: argparse._SubParsersAction, name: str, func: Command | None, help: str,
                description: str | None = None, common: bool = True) -> argparse.ArgumentParser:
    """A subcommand ``name`` that runs ``func(args)`` (its exit status); ``common`` adds ``-q``."""
    p = sub.add_parser(name, parents=[COMMON] if common else [], help=help, description=description)
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_device(p: argparse.ArgumentParser, default: str | None = "auto", help: str | None = None) -> None:
    p.add_argument("--device", default=default, help=help)


def add_on_bad_sample(p: argparse.ArgumentParser, default: str | None = "skip") -> None:
    p.add_argument("--on-bad-sample", choices=list(choices(OnBadSample)), default=default)


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="run or export directory, or hf-clap:PATH (a pretrained "
                   "Hugging Face CLAP folder or cached hub id, used untrained)")


def add_batch_size(p: argparse.ArgumentParser, default: int | None = 32) -> None:
    p.add_argument("--batch-size", type=int, default=default)


def write_json(metrics: dict, path: Path | None) -> None:
    """Write ``metrics`` to ``path`` (a ``--json`` option), when given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
