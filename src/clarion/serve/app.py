"""The search web app: a JSON API over a :class:`SearchIndex` and a single-file page.

``create_app(index)`` returns a Starlette (ASGI) app; ``clarion serve INDEX`` runs it with
uvicorn on 127.0.0.1.

Endpoints (every error is JSON ``{"error": message}`` with a 4xx status):

``GET /``
    The search page (``static/index.html``).
``GET /api/info``
    ``{"clips", "model" (first 12 hex digits of the model fingerprint), "embed_dim", "updated"
    (when the index was last built), "windows" (whether hits carry offsets), "max_k",
    "max_upload_bytes"}``.
``GET /api/search?q=TEXT&k=10``
    Text-to-audio search: ``{"query", "k", "results": [{"rank", "id", "path", "score",
    "audio_url", "duration", "caption", "offset", "peaks"}]}``, best first; ``path`` is relative
    to the index's audio folder, ``duration`` the file's length in seconds (null when unknown),
    ``caption`` its manifest caption ("" for a folder index), ``offset`` the start in seconds of
    the best window (null unless the index keeps windows), ``peaks`` the waveform thumbnail
    (:data:`~clarion.audio.windows.THUMB_BINS` values in 0-255, empty when unknown).
    400 when ``q`` is missing, empty or longer than 1000 characters, or ``k`` is not an
    integer in ``[1, max_k]``.
``POST /api/search/audio``
    Audio-to-audio search by an example clip: a ``multipart/form-data`` body with the clip
    in the field ``file`` (wav, flac, ogg, ... whatever soundfile decodes) and optionally
    ``k`` (form field or query parameter). Same answer as ``/api/search``, with ``query``
    the upload's file name. 413 when the request body is larger than ``max_upload_bytes``
    (refused from Content-Length, and counted while reading when there is none); 415 when
    the body is not multipart or the clip cannot be decoded; 400 when ``file`` is missing
    or empty, or the audio has no samples or NaN/Inf samples. Only the first
    ``max_upload_seconds`` are decoded.
``GET /api/audio/{id}``
    The indexed file ``id`` (an integer from a result), with its audio content type and
    HTTP range support for seeking. Files are addressed by id only, never by path, so no
    URL reaches a file outside the index; 404 for an unknown id or a file gone missing.

Searches are CPU-bound: they run in worker threads, one at a time by default
(``search_threads``), so the event loop keeps serving pages and audio meanwhile.
"""

from __future__ import annotations

import io
import mimetypes
import threading
from pathlib import Path
from typing import Any, Callable

import soundfile as sf
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from ..audio import AudioError, decode_audio
from .index import Hit, SearchIndex

PAGE = Path(__file__).parent / "static" / "index.html"
MAX_QUERY_CHARS = 1000
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
               ".opus": "audio/ogg", ".mp3": "audio/mpeg", ".aif": "audio/aiff", ".aiff": "audio/aiff"}


class _TooLarge(Exception):
    """The request body grew past the upload limit while it was being read."""


def create_app(
    index: SearchIndex,
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_k: int = 100,
    max_upload_seconds: float = 600.0,
    search_threads: int = 1,
) -> Starlette:
    """The search app over ``index``; see the module docstring for its endpoints.

    ``max_upload_bytes`` bounds the body of an audio-search request, ``max_k`` the number of
    results one search may ask for, ``max_upload_seconds`` how much of an uploaded clip is
    decoded, and ``search_threads`` how many searches run at once.
    """
    if max_upload_bytes < 1 or max_k < 1 or max_upload_seconds <= 0 or search_threads < 1:
        raise ValueError("max_upload_bytes, max_k, max_upload_seconds and search_threads must be positive")
    page = PAGE.read_text(encoding="utf-8")
    slots = threading.BoundedSemaphore(search_threads)

    async def search(fn: Callable[..., list[Hit]], *args: Any) -> list[Hit]:
        def call() -> list[Hit]:
            with slots:  # taken inside the worker thread, so waiting never blocks the event loop
                return fn(*args)

        try:
            return await run_in_threadpool(call)
        except ValueError as exc:  # the index's own check of a query
            raise HTTPException(400, str(exc)) from exc

    def answer(query: str, k: int, hits: list[Hit]) -> JSONResponse:
        durations, captions, thumbs = getattr(index, "durations", None), getattr(index, "captions", None), getattr(index, "thumbs", None)
        results = [{"rank": h.rank, "id": h.id, "path": h.path, "score": round(float(h.score), 6),
                    "audio_url": f"/api/audio/{h.id}",
                    "duration": None if durations is None or durations[h.id] is None else round(durations[h.id], 3),
                    "caption": "" if captions is None else captions[h.id],
                    "offset": None if h.offset is None else round(float(h.offset), 3),
                    "peaks": [] if thumbs is None else thumbs[h.id].tolist()} for h in hits]
        return JSONResponse({"query": query, "k": k, "results": results})

    def parse_k(raw: str | None) -> int:
        if raw is None or raw == "":
            return min(10, max_k)
        try:
            k = int(raw)
        except ValueError:
            raise HTTPException(400, f"k must be an integer, got {raw[:40]!r}") from None
        if not 1 <= k <= max_k:
            raise HTTPException(400, f"k must be between 1 and {max_k}, got {k}")
        return k

    async def home(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        meta = getattr(index, "info", {})  # index.json
        return JSONResponse({"clips": len(index), "model": str(meta.get("model_fingerprint") or "")[:12] or None,
                             "embed_dim": meta.get("embed_dim"), "updated": meta.get("updated"),
                             "windows": bool(meta.get("windows")),
                             "max_k": max_k, "max_upload_bytes": max_upload_bytes})

    async def search_text(request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        if not query:
            raise HTTPException(400, "q must be a non-empty text query")
        if len(query) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"q must be at most {MAX_QUERY_CHARS} characters, got {len(query)}")
        k = parse_k(request.query_params.get("k"))
        return answer(query, k, await search(index.search_text, query, k))

    async def search_audio(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, f"bad Content-Length {declared[:40]!r}")
        if declared is not None and int(declared) > max_upload_bytes:  # refused before reading any of it
            raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes")
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPException(415, "send the clip as multipart/form-data in the field 'file'")
        limited = Request(request.scope, _limit(request.receive, max_upload_bytes))
        try:
            async with limited.form(max_files=1, max_fields=4, max_part_size=1024) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(400, "no file in the form field 'file'")
                raw_k = form.get("k", request.query_params.get("k"))
                if raw_k is not None and not isinstance(raw_k, str):
                    raise HTTPException(400, "k must be a plain form field, not a file")
                k = parse_k(raw_k)
                name = Path(upload.filename or "upload").name
                data = await upload.read()
        except _TooLarge:
            raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes") from None
        if not data:
            raise HTTPException(400, f"{name}: empty file")
        wave, rate = await run_in_threadpool(_decode, data, name, max_upload_seconds)
        return answer(name, k, await search(index.search_audio, wave, rate, k))

    async def audio(request: Request) -> Response:
        clip = request.path_params["id"]
        try:
            path = Path(index.absolute(clip))
        except (KeyError, ValueError, IndexError):
            raise HTTPException(404, f"no clip with id {clip}") from None
        if not path.is_file():
            raise HTTPException(404, f"clip {clip} is in the index but its file is missing")
        media_type = AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes = [
        Route("/", home),
        Route("/api/info", info),
        Route("/api/search", search_text),
        Route("/api/search/audio", search_audio, methods=["POST"]),
        Route("/api/audio/{id:int}", audio),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _limit(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`_TooLarge` once more than ``limit`` body bytes arrived."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return limited


def _decode(data: bytes, name: str, max_seconds: float) -> tuple[Any, int]:
    """An uploaded clip as (mono float32 wave at the file's own rate, rate); HTTP errors when unusable."""
    try:
        rate = sf.info(io.BytesIO(data)).samplerate
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise HTTPException(415, f"{name}: not a readable audio file (wav, flac, ogg, ...)") from exc
    try:
        return decode_audio(io.BytesIO(data), rate, max_seconds, name=name), rate
    except AudioError as exc:
        raise HTTPException(400, str(exc)) from exc
