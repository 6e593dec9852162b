"""What the ``clarion`` commands share: ``-q``, one way to declare a command, and the options
several commands take (device, bad-sample policy, a model folder, batch size, a JSON file).

Imports nothing heavy: ``clarion --help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..config import LongAudio, OnBadSample, WindowPool, choices

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


def add_long_audio(p: argparse.ArgumentParser) -> None:
    """--long, --window-seconds, --hop-seconds, --pool: how long recordings are read (audio.long & co)."""
    g = p.add_argument_group("long recordings (default: the model's audio.long, normally 'first')")
    g.add_argument("--long", choices=choices(LongAudio), help="first: the first audio.clip_seconds of each file; windows: the "
                   "whole file in windows, embeddings pooled")
    g.add_argument("--window-seconds", type=float, help="window length (default audio.window_seconds, else clip_seconds)")
    g.add_argument("--hop-seconds", type=float, help="hop between windows (default: the window)")
    g.add_argument("--pool", choices=choices(WindowPool), help="mean (default) or max of the window embeddings")


def long_audio_overrides(args: argparse.Namespace) -> dict:
    """The long-recording options given on the command line, as ``audio`` keys (positive seconds checked)."""
    for flag, value in (("--window-seconds", args.window_seconds), ("--hop-seconds", args.hop_seconds)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    given = {"long": args.long, "window_seconds": args.window_seconds, "hop_seconds": args.hop_seconds, "pool": args.pool}
    return {k: v for k, v in given.items() if v is not None}


def write_json(metrics: dict, path: Path | None) -> None:
    """Write ``metrics`` to ``path`` (a ``--json`` option), when given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
