"""Load test of `clarion serve`: latency percentiles and throughput under concurrent requests, as JSON.

    python benchmarks/serve_load.py [--index INDEX | --url http://127.0.0.1:8000]
        [--requests 500] [--concurrency 16] [--endpoint search|upload|audio] [--k 10]

Without --url, starts `clarion serve INDEX` in a subprocess on a free loopback port (so the
server does not share this process's GIL) and stops it afterwards; without --index, first
builds a small index: --clips synthetic test clips embedded by an untrained model of the
default size (latency depends on the model's size and the index's length, not on training). Requests
go only to the loopback address or the --url given, a bounded number of them, from
--concurrency threads sharing one keep-alive connection pool.

Endpoints: ``search`` (GET /api/search with varied text queries), ``upload`` (POST
/api/search/audio with an indexed clip) and ``audio`` (GET /api/audio/{id}, the whole file).
Latency is measured per request from send to the last byte; errors are non-200 answers and
failed connections.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

QUERIES = [
    "a dog barks twice", "rain falling on a roof", "a high tone beeps", "footsteps in a hallway", "birds singing",
    "a car engine idles", "low rumbling noise", "someone knocks on a door", "a bell rings three times", "wind",
]


def build_small_index(tmp: Path, clips: int) -> Path:
    """An index over ``clips`` synthetic test clips, embedded by an untrained model of the
    default (``make demo``) size."""
    import torch

    from clarion.config import load_config
    from clarion.data.manifest import read_manifest
    from clarion.synth.generate import generate
    from clarion.models import build_model, train_tokenizer
    from clarion.rundir import build_run_objective, save_model
    from clarion.serve.index import build_index

    generate(tmp / "synth", n_train=64, n_val=4, n_test=clips, seed=0, workers=1)
    torch.manual_seed(0)
    cfg = load_config(None, [])
    tokenizer = train_tokenizer(read_manifest(tmp / "synth" / "train.csv").captions, cfg.model.vocab_size)
    run = tmp / "run"
    run.mkdir()
    cfg.save(run / "config.yaml")
    tokenizer.save(str(run / "tokenizer.json"))
    save_model(run, build_model(cfg, tokenizer).eval(), build_run_objective(cfg), {"epoch": 0})
    build_index(tmp / "synth" / "audio" / "test", run, tmp / "index", device="cpu")
    return tmp / "index"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarion.cli", "serve", str(index), "--port", str(port), "-q"],
        stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"clarion serve exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("clarion serve did not answer within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--index", type=Path, help="index folder to serve (default: build a small one)")
    where.add_argument("--url", help="a running server to load instead (its base URL)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--endpoint", choices=["search", "upload", "audio"], default="search")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clips", type=int, default=200, help="clips in the index built without --index (default 200)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.url
        if url is None:
            index = args.index or build_small_index(Path(tmp), args.clips)
            proc, url = start_server(index)
        try:
            result = run_load(url.rstrip("/"), args)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    json.dump(result, sys.stdout, indent=2)
    print()


def run_load(url: str, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    with httpx.Client(base_url=url, limits=limits, timeout=args.timeout) as client:
        info = client.get("/api/info").raise_for_status().json()
        clip = client.get("/api/audio/0").raise_for_status().content if args.endpoint == "upload" else b""

        def one(i: int) -> tuple[float, bool]:
            start = time.perf_counter()
            try:
                if args.endpoint == "search":
                    r = client.get("/api/search", params={"q": f"{QUERIES[i % len(QUERIES)]} {i}", "k": args.k})
                elif args.endpoint == "upload":
                    r = client.post("/api/search/audio", files={"file": ("clip.wav", clip)}, data={"k": str(args.k)})
                else:
                    r = client.get(f"/api/audio/{i % info['clips']}")
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - start, ok

        for i in range(min(8, args.requests)):  # warm-up: model load, first allocations
            one(i)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start

    latency = np.array([t for t, _ in results]) * 1000
    return {
        "endpoint": args.endpoint,
        "url": "loopback (clarion serve subprocess)" if args.url is None else args.url,
        "index_clips": info["clips"],
        "embed_dim": info.get("embed_dim"),
        "k": args.k,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "errors": sum(not ok for _, ok in results),
        "latency_ms": {name: round(float(np.percentile(latency, q)), 2) for name, q in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "throughput_rps": round(args.requests / wall, 1),
        "wall_s": round(wall, 2),
        "cpu": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, client and server together)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # inherited by the server subprocess
    }


if __name__ == "__main__":
    main()
