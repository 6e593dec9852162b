"""The search web app (clarion.serve.app) over a tiny real index: every endpoint, its errors,
upload limits and path-traversal attempts."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf

from serve_fixtures import tiny_index
from starlette.testclient import TestClient

from clarion.serve.app import create_app
from clarion.serve.index import SearchIndex

MAX_K = 20
SECRET = "TOP-SECRET-NOT-IN-THE-INDEX"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> SearchIndex:
    root = tmp_path_factory.mktemp("serve")
    index = SearchIndex.open(tiny_index(root))
    # a file beside the audio folder that no URL may serve
    (index.audio_root.parent / "secret.txt").write_text(SECRET)
    (index.audio_root / "secret.txt").write_text(SECRET)  # inside the folder, but not indexed
    return index


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    with TestClient(create_app(index, max_k=MAX_K)) as client:
        yield client


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def asgi_request(app, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]] = (), chunks=(b"",)):
    """Call the ASGI app exactly as a server would, with ``raw_path`` untouched by any client-side
    URL normalisation; returns (status, headers, body, how many body chunks the app read)."""
    chunks = list(chunks)
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # a real client would now wait for the answer

    async def send(message):
        sent.append(message)

    path, _, query = raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(path.decode("latin-1")), "raw_path": path, "query_string": query, "root_path": "",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, read


def multipart(fields: dict[str, str], file: bytes | None, filename: str = "clip.wav") -> tuple[bytes, str]:
    boundary = "----clarion-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     f"Content-Type: audio/wav\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def assert_error(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json()["error"]


# --- page and info ---------------------------------------------------------------------------

def test_page_is_served_with_the_elements_the_browser_test_uses(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for marker in ('id="query"', 'id="results"', 'id="clip"', 'id="error"', "/api/search/audio", 'createElement("audio")'):
        assert marker in r.text


def test_info_describes_the_index(client, index):
    info = client.get("/api/info").json()
    assert info["clips"] == len(index) > 0
    assert info["max_k"] == MAX_K and info["max_upload_bytes"] == 20 * 1024 * 1024
    assert set(info) >= {"model", "embed_dim"}


# --- text search -------------------------------------------------------------------------------

@pytest.mark.parametrize("query,k", [("a high tone beeps twice", 3), ("low pitched beep", 1), ("tone", MAX_K)])
def test_text_search_equals_the_index(client, index, query, k):
    body = client.get("/api/search", params={"q": query, "k": k}).json()
    expected = index.search_text(query, k)
    assert body["query"] == query and body["k"] == k
    assert len(body["results"]) == len(expected) == min(k, len(index))
    for got, hit in zip(body["results"], expected):
        assert (got["rank"], got["id"], got["path"]) == (hit.rank, hit.id, hit.path)
        assert got["score"] == pytest.approx(hit.score, abs=1e-6)
        assert got["audio_url"] == f"/api/audio/{hit.id}"
        # a folder index of one-second clips read with `first`: no caption, no offset
        assert got["caption"] == "" and got["offset"] is None and got["duration"] == pytest.approx(1.0, abs=1e-3)
        assert got["peaks"] == index.thumbs[hit.id].tolist() and len(got["peaks"]) == 64 and max(got["peaks"]) > 0
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_text_search_default_k_is_10(client, index):
    assert len(client.get("/api/search", params={"q": "beep"}).json()["results"]) == min(10, len(index))


@pytest.mark.parametrize("params,words", [
    ({}, "q must be a non-empty"),
    ({"q": ""}, "q must be a non-empty"),
    ({"q": "   "}, "q must be a non-empty"),
    ({"q": "x" * 1001}, "at most 1000 characters"),
    ({"q": "beep", "k": "0"}, f"between 1 and {MAX_K}"),
    ({"q": "beep", "k": "-3"}, f"between 1 and {MAX_K}"),
    ({"q": "beep", "k": str(MAX_K + 1)}, f"between 1 and {MAX_K}"),
    ({"q": "beep", "k": "abc"}, "k must be an integer"),
    ({"q": "beep", "k": "2.5"}, "k must be an integer"),
])
def test_bad_text_queries_are_400_with_a_message(client, params, words):
    assert_error(client.get("/api/search", params=params), 400, words)


def test_search_runs_in_a_worker_thread_not_on_the_event_loop(index):
    calls = []

    class Probe:
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def search_text(self, query, k=10):
            try:
                asyncio.get_running_loop()
                calls.append("event loop")
            except RuntimeError:
                calls.append("worker thread")
            return self.inner.search_text(query, k)

    with TestClient(create_app(Probe(index))) as client:
        assert client.get("/api/search", params={"q": "beep", "k": 2}).status_code == 200
    assert calls == ["worker thread"]


# --- audio files -------------------------------------------------------------------------------

def test_audio_endpoint_streams_every_indexed_file_with_its_type(client, index):
    types = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}
    assert {Path(p).suffix for p in index.paths} == set(types)  # the fixture has all three
    for clip, rel in enumerate(index.paths):
        r = client.get(f"/api/audio/{clip}")
        assert r.status_code == 200
        assert r.content == (index.audio_root / rel).read_bytes()
        assert r.headers["content-type"] == types[Path(rel).suffix]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_audio_endpoint_serves_byte_ranges_for_seeking(client, index):
    r = client.get("/api/audio/0", headers={"Range": "bytes=10-99"})
    assert r.status_code == 206 and r.content == index.absolute(0).read_bytes()[10:100]


@pytest.mark.parametrize("clip", ["-1", "999999", "1.0", "0x1", "abc", "", "%EF%BC%91"])
def test_unknown_ids_are_404(client, clip):
    r = client.get(f"/api/audio/{clip}")
    assert r.status_code == 404 and "error" in r.json()


def test_a_missing_file_is_404_not_500(index, tmp_path):
    class Gone:
        def __len__(self):
            return 1

        def absolute(self, clip):
            if clip != 0:
                raise KeyError(clip)
            return tmp_path / "deleted.wav"

    with TestClient(create_app(Gone())) as client:
        assert_error(client.get("/api/audio/0"), 404, "missing")


@pytest.mark.parametrize("raw_path", [
    b"/api/audio/../../etc/passwd",
    b"/api/audio/../secret.txt",
    b"/api/audio/0/../../secret.txt",
    b"/api/audio/%2e%2e%2fsecret.txt",
    b"/api/audio/%2e%2e/%2e%2e/etc/passwd",
    b"/api/audio/..%2f..%2fetc%2fpasswd",
    b"/api/audio/%252e%252e%252fsecret.txt",
    b"/api/audio//etc/passwd",
    b"/api/audio/%2Fetc%2Fpasswd",
    b"/api/audio/secret.txt",
    b"/api/audio/0%00../secret.txt",
    b"/../../etc/passwd",
    b"/static/../../secret.txt",
])
def test_path_traversal_never_reaches_a_file(index, raw_path):
    status, headers, body, _ = asgi_request(create_app(index), "GET", raw_path)
    assert status in (404, 422)
    assert SECRET.encode() not in body and b"root:" not in body
    assert json.loads(body)["error"]


def test_traversal_through_the_client_url_normalisation_too(client):
    for url in ("/api/audio/../../etc/passwd", "/api/audio/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/audio/..%5c..%5csecret.txt"):
        r = client.get(url)
        assert r.status_code in (404, 422) and SECRET not in r.text and "root:" not in r.text


# --- audio search ------------------------------------------------------------------------------

def test_upload_of_a_real_clip_ranks_like_search_audio_file(client, index):
    clip = index.absolute(2)
    r = client.post("/api/search/audio", files={"file": (clip.name, clip.read_bytes(), "audio/wav")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = index.search_audio_file(clip, 5)
    assert body["query"] == clip.name and body["k"] == 5
    assert [x["id"] for x in body["results"]] == [h.id for h in expected]
    assert [x["score"] for x in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert body["results"][0]["id"] == 2  # a clip is its own nearest neighbour


def test_upload_k_as_query_parameter_and_default(client, index):
    clip = index.absolute(0).read_bytes()
    assert len(client.post("/api/search/audio?k=2", files={"file": ("a.wav", clip)}).json()["results"]) == 2
    assert len(client.post("/api/search/audio", files={"file": ("a.wav", clip)}).json()["results"]) == min(10, len(index))


def test_upload_at_another_sample_rate_is_resampled(client, index):
    wave, rate = sf.read(index.absolute(1), dtype="float32")
    stereo = np.stack([wave, wave], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="FLAC")  # (declared at a new rate: pitch changes, but it must decode and rank)
    r = client.post("/api/search/audio", files={"file": ("b.flac", buf.getvalue(), "audio/flac")}, data={"k": "3"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_oversize_upload_is_413_from_content_length(index):
    with TestClient(create_app(index, max_upload_bytes=4096)) as small:
        big = wav_bytes(np.zeros(16000, np.float32))
        assert_error(small.post("/api/search/audio", files={"file": ("big.wav", big)}), 413, "larger than 4096 bytes")
        ok = wav_bytes(np.sin(np.arange(1000) / 5).astype(np.float32))
        assert small.post("/api/search/audio", files={"file": ("ok.wav", ok)}, data={"k": "1"}).status_code == 200


def test_oversize_chunked_upload_is_413_without_reading_it_all(index):
    body, content_type = multipart({"k": "1"}, wav_bytes(np.zeros(160000, np.float32)))
    chunks = [body[i:i + 1024] for i in range(0, len(body), 1024)]  # ~313 KiB, no Content-Length
    status, _, answer, read = asgi_request(create_app(index, max_upload_bytes=8192), "POST", b"/api/search/audio",
                                           [(b"content-type", content_type.encode())], chunks)
    assert status == 413 and b"larger than 8192 bytes" in answer
    assert read <= 9 < len(chunks)  # stopped right after the limit


def test_oversize_content_length_is_refused_before_reading_the_body(index):
    body, content_type = multipart({}, wav_bytes(np.zeros(16000, np.float32)))
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    status, _, answer, read = asgi_request(create_app(index, max_upload_bytes=8192), "POST", b"/api/search/audio",
                                           headers, [body])
    assert (status, read) == (413, 0) and b"larger than 8192 bytes" in answer


def test_lying_content_length_is_still_caught(index):
    body, content_type = multipart({}, wav_bytes(np.zeros(16000, np.float32)))
    chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)]
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"100")]
    status, _, _, read = asgi_request(create_app(index, max_upload_bytes=8192), "POST", b"/api/search/audio", headers, chunks)
    assert status == 413 and read < len(chunks)


def nan_wav() -> bytes:
    wave = np.sin(np.arange(8000) / 7).astype(np.float32)
    wave[100] = np.nan
    return wav_bytes(wave, subtype="FLOAT")


@pytest.mark.parametrize("payload,status,words", [
    (b"this is not audio at all" * 50, 415, "not a readable audio file"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt garbage", 415, "not a readable audio file"),
    (b"", 400, "empty file"),
    (wav_bytes(np.zeros(0, np.float32)), 400, "0 samples"),
    (nan_wav(), 400, "NaN"),
])
def test_malformed_uploads_are_rejected_clearly(client, payload, status, words):
    assert_error(client.post("/api/search/audio", files={"file": ("bad.wav", payload, "audio/wav")}), status, words)


def test_upload_request_errors(client, index):
    clip = index.absolute(0).read_bytes()
    assert_error(client.post("/api/search/audio", content=clip, headers={"content-type": "audio/wav"}), 415, "multipart")
    assert_error(client.post("/api/search/audio", data={"k": "3"}, files={"other": ("x", b"y")}), 400, "field 'file'")
    assert_error(client.post("/api/search/audio", files={"file": ("a.wav", clip)}, data={"k": "0"}), 400, "between 1")
    assert_error(client.post("/api/search/audio", files={"file": ("a.wav", clip)}, data={"k": "x"}), 400, "integer")
    assert_error(client.post("/api/search/audio", files={"file": ("a.wav", clip), "k": ("k.txt", b"3")}), 400, "")
    assert_error(client.get("/api/search/audio"), 405, "")
    assert_error(client.post("/api/search", data={"q": "beep"}), 405, "")
    assert_error(client.get("/api/nothing"), 404, "")


def test_create_app_checks_its_limits(index):
    for bad in ({"max_k": 0}, {"max_upload_bytes": 0}, {"max_upload_seconds": 0}, {"search_threads": 0}):
        with pytest.raises(ValueError):
            create_app(index, **bad)


# --- the command -------------------------------------------------------------------------------

def test_clarion_serve_binds_loopback_and_prints_the_url(index, monkeypatch, capsys):
    import uvicorn

    from clarion.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(index.root), "--port", "8123", "--max-upload-mb", "1", "--max-k", "7"]) == 0
    (app, kw), = calls
    assert (kw["host"], kw["port"]) == ("127.0.0.1", 8123)
    out = capsys.readouterr().out
    assert f"serving {len(index)} clips" in out and "http://127.0.0.1:8123/" in out
    with TestClient(app) as client:
        info = client.get("/api/info").json()
        assert (info["clips"], info["max_k"], info["max_upload_bytes"]) == (len(index), 7, 1024 * 1024)
        assert client.get("/api/search", params={"q": "beep", "k": 2}).status_code == 200


def test_clarion_serve_errors(tmp_path, capsys):
    from clarion.cli import main

    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert "not a clarion index" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
