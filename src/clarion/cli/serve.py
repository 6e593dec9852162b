"""``clarion`` commands around a trained model: serve, export, embed, index build, search."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_batch_size, add_command, add_device, add_long_audio, add_model, long_audio_overrides


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", None, "a web search page over a search index",
                    description="Serve a search page (text query or example clip, in-page playback) and its JSON "
                    "API (documented in clarion.serve.app) over an index made by `clarion index build`. Binds "
                    "127.0.0.1, this machine only, unless --host says otherwise; there is no authentication.")
    p.add_argument("index", type=Path, metavar="INDEX", help="index folder")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the page to "
                   "the network)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest example clip accepted (default 20 MiB)")
    p.add_argument("--max-k", type=int, default=100, help="most results one search may ask for (default 100)")
    add_device(p, "cpu", "device that embeds queries (default cpu)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve.app import create_app
    from ..serve.index import SearchIndex

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    index = SearchIndex.open(args.index, device=args.device)
    index.model  # load (and check) the model now: a broken index fails here, not at the first search
    app = create_app(index, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {len(index)} clips from {args.index} at http://{host}:{args.port}/ (Ctrl+C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"clarion serve: warning: {args.host} may be reachable from other machines, and the page has no "
              "authentication", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


EXPORT_FORMATS = ("clarion", "hf", "onnx")  # the keys of clarion.export.FORMATS (imported only when exporting)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", None, "export a run's model as a self-contained folder",
                    description="Write the model of a run (or of another export, or hf-clap:PATH) to OUT. "
                    "--format clarion (default): config.yaml, tokenizer.json, model.safetensors (+ model.json) and "
                    "the pretrained towers' files; clarion.load(OUT) and --model OUT need nothing else. --format hf: "
                    "a Hugging Face ClapModel folder with its ClapProcessor files (runs whose towers are both "
                    "hf-clap), for transformers.ClapModel.from_pretrained and the zero-shot-audio-classification "
                    "pipeline.")
    p.add_argument("run", type=Path, metavar="RUN", help="run or export directory, or hf-clap:PATH")
    p.add_argument("--out", required=True, type=Path, help="export directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="clarion",
                   help="clarion: the folder above (default); hf: the Hugging Face folder above; onnx: audio.onnx + "
                   "text.onnx + tokenizer, checked against torch under onnxruntime (needs the 'onnx' extra)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..api import load
    from ..export import FORMATS

    model = load(args.run, device="cpu")
    out = FORMATS[args.format](model, args.out, args.overwrite)
    print(f"exported {args.run} to {out} as {args.format} (fingerprint {model.fingerprint[:12]})")
    if args.format == "onnx":
        parity = json.loads((out / "onnx.json").read_text())["parity_max_abs"]
        print(f"audio.onnx, text.onnx: max |onnxruntime - torch| {max(parity.values()):.2g}")
    return 0


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", None, "embed a folder of audio files or a manifest to .npy + .csv",
                    description="Write FILE.npy (float32 [N, d], unit-norm rows) and FILE.csv (row, path[, caption]). "
                    "Audio: every audio file under a folder (recursive) or every distinct clip of a manifest; --text: "
                    "every caption of a manifest. Files that cannot be decoded are skipped and listed in "
                    "FILE.skipped.csv.")
    p.add_argument("input", metavar="INPUT", help="audio folder, manifest file, or dataset spec NAME:PATH@SPLIT")
    _add_embedding_options(p, "FILE.npy to write (FILE.csv goes beside it)")
    p.add_argument("--text", action="store_true", help="embed the manifest's captions instead of its audio")
    p.set_defaults(func=_embed)


def _add_embedding_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """What `embed` and `index build` share: the model, where to write, batch size, device, long files."""
    add_model(p)
    p.add_argument("--out", required=True, type=Path, help=out_help)
    add_batch_size(p)
    add_device(p, "auto")
    add_long_audio(p)


def _load_model(args: argparse.Namespace):
    """The model of --model on --device, with the long-recording options applied."""
    from ..api import load

    return load(args.model, args.device, **long_audio_overrides(args))


def _embed(args: argparse.Namespace) -> int:
    from ..bulk import embed_source, write_embedded

    model = _load_model(args)
    data = embed_source(args.input, model, text=args.text, batch_size=args.batch_size, progress=not args.quiet)
    npy, index, skipped = write_embedded(args.out, data)
    what = "captions" if args.text else "clips"
    print(f"embedded {len(data.rows)} {what} (d={data.embeddings.shape[1]}) to {npy}, index {index}")
    if skipped:
        print(f"clarion embed: skipped {len(data.bad)} bad input(s), listed in {skipped}", file=sys.stderr)
    return 0


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "index", None, "build or update a search index over an audio folder or a manifest",
                    description="Search indexes (clarion.serve.index): embeddings of every audio file under a folder "
                    "(or every clip of a manifest) and the model export, for `clarion search` and `clarion serve`.",
                    common=False)
    tools = p.add_subparsers(dest="index_command", required=True)
    b = add_command(tools, "build", None, "index every audio file under a folder or every clip of a manifest (incremental)",
                    description="Embed every audio file under SOURCE (a folder, recursive) or every clip of SOURCE (a "
                    "manifest or dataset spec NAME:PATH@SPLIT; the page then shows each clip's caption) into INDEX. "
                    "Re-running it embeds only new and changed files (size + mtime) and drops removed ones; a build "
                    "that was killed resumes from its committed chunks. An index is tied to one source, one model "
                    "and one way of reading long files: --rebuild to change any. Undecodable files are skipped and "
                    "listed in INDEX/skipped.csv.")
    b.add_argument("source", metavar="SOURCE", help="audio folder, manifest file, or dataset spec NAME:PATH@SPLIT")
    _add_embedding_options(b, "index directory")
    b.add_argument("--rebuild", action="store_true", help="embed everything again (another model, source or settings)")
    b.add_argument("--windows", action="store_true", help="keep every window's embedding (implies --long windows): a hit "
                   "is a file's best window and reports its start")
    b.add_argument("--chunk-files", type=int, default=256, help="files per committed chunk (default 256): what a killed "
                   "build may have to embed again")
    b.set_defaults(func=_index_build)


def _index_build(args: argparse.Namespace) -> int:
    from ..serve.index import build_index

    summary = build_index(args.source, _load_model(args), args.out, batch_size=args.batch_size, rebuild=args.rebuild,
                          progress=not args.quiet, windows=args.windows, chunk_files=args.chunk_files)
    windows = f", {summary['windows']} windows" if args.windows else ""
    print(f"index {summary['index']}: {summary['total']} files{windows} ({summary['added']} added, {summary['updated']} "
          f"updated, {summary['unchanged']} unchanged, {summary['removed']} removed, {summary['skipped']} skipped; "
          f"{summary['embedded']} embedded now, {summary['resumed']} resumed from an unfinished build)")
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "search", None, "search an index by text or by an example clip",
                    description="Print the k best matches in INDEX for a text QUERY or, with --audio, for the "
                    "sound of a file: rank, cosine score, path (relative to the indexed folder).")
    p.add_argument("index", type=Path, metavar="INDEX")
    p.add_argument("query", nargs="?", help="text query (leave out with --audio)")
    p.add_argument("-k", type=int, default=10, help="results (default 10)")
    p.add_argument("--audio", type=Path, metavar="FILE", help="search by this clip instead of text")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    add_device(p, "cpu")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..serve.index import SearchIndex

    if (args.query is None) == (args.audio is None):
        raise ValueError("give either a text QUERY or --audio FILE")
    index = SearchIndex.open(args.index, device=args.device)
    hits = index.search_audio_file(args.audio, args.k) if args.audio else index.search_text(args.query, args.k)
    if args.json:
        query = {"audio": str(args.audio)} if args.audio else {"text": args.query}
        print(json.dumps({**query, "audio_root": str(index.audio_root), "hits": [asdict(h) for h in hits]}, indent=2))
    else:
        for hit in hits:
            at = "" if hit.offset is None else f"  at {_clock(hit.offset)}"
            print(f"{hit.rank:3d}  {hit.score:+.4f}  {hit.path}{at}")
    return 0


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour), as the search page writes offsets."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_add_serve, _add_export, _add_embed, _add_index, _add_search):
        add(sub)
