"""``clarion`` commands over data: shards, data check."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_command, add_on_bad_sample


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "shards", _shards, "write a manifest or dataset as WebDataset tar shards",
                    "Write one sample per clip ({key}.flac|wav + {key}.json with all its captions under "
                    "\"text\") into OUT_DIR/shard-000000.tar, ... and OUT_DIR/shards.json (counts, source, settings, "
                    "skipped rows and clips). Read them back with the spec webdataset:OUT_DIR (--train streams them).")
    p.add_argument("source", metavar="MANIFEST|SPEC", help="manifest file, or dataset spec NAME:PATH[@SPLIT]")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--max-samples-per-shard", type=int, default=1000, help="default 1000")
    p.add_argument("--max-shard-bytes", type=_size, help="close a shard before it grows past this size "
                   "(bytes, or with a K/M/G suffix, powers of 1024)")
    p.add_argument("--format", choices=["flac", "wav"], default="flac",
                   help="flac: 16-bit (default); wav: 32-bit float, lossless")
    p.add_argument("--sample-rate", type=int, help="resample to this rate before writing (default: keep each file's)")
    p.add_argument("--max-seconds", type=float, help="keep only the first seconds of longer clips")
    add_on_bad_sample(p)
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT_DIR")

    p = add_command(sub, "data", None, "inspect manifests and public datasets (data check)",
                    "Tools for manifests and dataset specs NAME:PATH[@SPLIT] (clotho, audiocaps, esc50, "
                    "us8k, wavcaps; see clarion.data.sources).", common=False)
    tools = p.add_subparsers(dest="data_command", required=True)
    c = add_command(tools, "check", _data_check, "validate every row and clip of a manifest or dataset",
                    "Validate every row: file exists and decodes, duration, sample rate, silence, "
                    "NaN/Inf samples, empty captions, duplicate rows and duplicate audio. A dataset spec without "
                    "@SPLIT is checked split by split. Prints a summary per split; exit 0, or 1 with --strict "
                    "when there are problems (missing AudioCaps clips excepted).")
    c.add_argument("target", metavar="MANIFEST|SPEC", help="manifest file, or NAME:PATH[@SPLIT]")
    c.add_argument("--csv", type=Path, help="write the problems here (split, file, source, line, kind, detail)")
    c.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    c.add_argument("--min-seconds", type=float, default=0.1, help="shorter clips are too_short (default 0.1)")
    c.add_argument("--max-seconds", type=float, default=600.0,
                   help="longer clips are too_long (default 600, the decode cap audio.max_seconds)")
    c.add_argument("--silence-db", type=float, default=-60.0, help="clips with RMS below this (dBFS) are silent (default -60)")
    c.add_argument("--headers-only", action="store_true", help="read headers only: no NaN, silence or duplicate-audio checks")
    c.add_argument("--workers", type=int, default=1, help="threads decoding files (default 1)")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000000, 512M, 1G)") from None


def _shards(args: argparse.Namespace) -> int:
    from ..data.shards.writer import write_shards

    index = write_shards(
        args.source, args.out_dir, max_samples_per_shard=args.max_samples_per_shard, max_shard_bytes=args.max_shard_bytes,
        audio_format=args.format, sample_rate=args.sample_rate, max_seconds=args.max_seconds,
        on_bad_sample=args.on_bad_sample, overwrite=args.overwrite,
    )
    skipped = index["skipped"]
    print(
        f"wrote {index['total_samples']} samples ({index['total_captions']} captions) in {len(index['shards'])} shards "
        f"to {args.out_dir}; skipped {skipped['rows']} bad rows and {skipped['clips']} bad clips"
        + (f" ({', '.join(f'{n} {r}' for r, n in skipped['by_reason'].items())})" if skipped["by_reason"] else "")
    )
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from ..data.check import check_data, format_report, write_problems

    result = check_data(args.target, args.min_seconds, args.max_seconds, args.silence_db,
                        decode=not args.headers_only, workers=args.workers)
    print(format_report(result))
    if args.csv:
        print(f"problems written to {write_problems(args.csv, result)}")
    return 1 if args.strict and result.failing else 0
