"""``clarion convert``: read CLAP checkpoints that other toolkits wrote.

``clarion convert laion-clap FILE.pt --out DIR --tokenizer TOKDIR`` writes a Hugging Face
``ClapModel`` folder (``hf-clap:DIR`` then loads it as a clarion model).
``clarion convert msclap-2022 FILE.pth --out EXPORT --tokenizer TOKDIR`` writes a clarion export
directory (``clarion.load``, ``evaluate``, ``zeroshot``, ``embed``, ``serve`` read it; ``train``
fine-tunes from it with ``model.*`` as in its config.yaml).
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

    q = add_command(kinds, "msclap-2022", _msclap, "msclap's 2022 weights (CNN14 + BERT) → clarion export directory",
                    "Map msclap's CLAP_weights_2022.pth onto clarion's towers (audio_encoder=msclap-cnn14: CNN14 with "
                    "the PANNs front end at 44.1 kHz; text_encoder=hf: BERT, first-token pooling; head=msclap) and "
                    "write an export directory. The 2023 weights (HTSAT + GPT-2) are refused with the reason.")
    q.add_argument("checkpoint", type=Path, help="the .pth file (CLAP_weights_2022.pth)")
    q.add_argument("--out", required=True, type=Path, help="export directory to write")
    q.add_argument("--tokenizer", required=True, type=Path,
                   help="folder with bert-base-uncased's tokenizer files (vocab.txt, ...): not downloaded here")
    q.add_argument("--text-heads", type=int, default=None,
                   help="attention heads of BERT (not stored in the weights; default width/64)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing export directory")


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


def _msclap(args: argparse.Namespace) -> int:
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from ..api import ClarionModel
    from ..config import Config
    from ..models.convert.checkpoint import ConversionError, read_state_dict
    from ..models.convert.msclap import MSCLAP_2022, convert_msclap_state_dict

    tok = _bert_tokenizer(args.tokenizer, ConversionError)
    model, report = convert_msclap_state_dict(read_state_dict(args.checkpoint), tok, args.text_heads, str(args.checkpoint))
    cfg = Config()
    cfg.audio.sample_rate = MSCLAP_2022["sample_rate"]
    cfg.audio.clip_seconds = MSCLAP_2022["clip_seconds"]
    m = cfg.model
    m.audio_encoder, m.text_encoder, m.head = "msclap-cnn14", "hf", "msclap"
    m.panns_width, m.embed_dim = report["width"], report["embed_dim"]
    m.text_pooling, m.max_tokens = "cls", MSCLAP_2022["max_tokens"]
    cfg.objective.options = {"init_temperature": report["temperature"]}
    # the hf text tower brings its own tokenizer (RUN/text_encoder/); tokenizer.json is the export
    # format's slot for clarion's own text encoder, left minimal here
    placeholder = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    objective_state = {"temperature.logit_scale": torch.tensor(report["logit_scale"])}
    meta = {"converted_from": str(args.checkpoint), "source_format": "msclap-2022"}
    ClarionModel(cfg, model, placeholder, objective_state, meta, args.checkpoint).save(args.out, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), "tensors": report["mapped"], "width": report["width"],
                      "embed_dim": report["embed_dim"], "temperature": report["temperature"]}))
    return 0


def _bert_tokenizer(folder: Path, error: type[Exception]):
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise error(f"--tokenizer {folder}: not a folder (give a folder with bert-base-uncased's tokenizer files)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise error(f"--tokenizer {folder}: cannot load a tokenizer there ({str(exc).splitlines()[0][:200]})") from None
