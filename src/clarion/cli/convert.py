"""``clarion convert``: read CLAP checkpoints that other toolkits wrote.

``clarion convert laion-clap FILE.pt --out DIR --tokenizer TOKDIR`` writes a Hugging Face
``ClapModel`` folder (``hf-clap:DIR`` then loads it as a clarion model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", None, "convert a LAION-CLAP or msclap checkpoint",
                    "Convert a checkpoint of another CLAP toolkit, offline (docs/convert.md).")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = add_command(kinds, "laion-clap", _laion, "a LAION-CLAP .pt (HTSAT + RoBERTa) → Hugging Face ClapModel folder",
                    "Map a LAION-CLAP checkpoint (laion-clap's *.pt: HTSAT-tiny/base, fused or not, RoBERTa text) onto "
                    "transformers.ClapModel and write it with its tokenizer and feature extractor. Read with "
                    "weights_only=True; unknown or missing keys are an error that lists them.")
    q.add_argument("checkpoint", type=Path, help="the .pt file (e.g. 630k-audioset-best.pt)")
    q.add_argument("--out", required=True, type=Path, help="folder to write (replaced if it exists)")
    q.add_argument("--tokenizer", required=True, type=Path,
                   help="folder with RoBERTa's tokenizer files (vocab.json, merges.txt; e.g. a saved roberta-base "
                        "tokenizer): LAION uses roberta-base's, which is not downloaded here")
    q.add_argument("--text-heads", type=int, default=None,
                   help="attention heads of the text model (not stored in the weights; default width/64, as RoBERTa)")


def _laion(args: argparse.Namespace) -> int:
    from ..models.convert.laion import convert_laion_checkpoint

    report = convert_laion_checkpoint(args.checkpoint, args.out, args.tokenizer, args.text_heads)
    audio = report["config"]["audio_config"]
    print(json.dumps({
        "out": str(args.out), "tensors": report["mapped"], "dropped": len(report["dropped"]),
        "audio": {"width": audio["patch_embeds_hidden_size"], "depths": audio["depths"], "fusion": audio["enable_fusion"]},
        "projection_dim": report["config"]["projection_dim"],
    }))
    return 0
