"""The search page in a real browser: uvicorn on a loopback port, headless Chromium driven by
Playwright. Skipped when playwright or /usr/bin/chromium is not installed."""

from __future__ import annotations

import contextlib
import csv
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(f"no browser at {CHROMIUM}", allow_module_level=True)
# Hang guards, not speed assumptions: each wait ends as soon as the page shows what it waits for.
HANG_GUARD_S = 120
sync_api.expect.set_options(timeout=HANG_GUARD_S * 1000)

from clarion.serve.app import create_app  # noqa: E402
from clarion.serve.index import SearchIndex  # noqa: E402
from clarion.serve.index import build_index  # noqa: E402
from serve_fixtures import CLIPS, tiny_index, tiny_run, write_clips  # noqa: E402


@contextlib.contextmanager
def serving(index: SearchIndex):
    """The base URL of a live server over ``index``; the socket is bound before the server starts, so no port race."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    guard = time.monotonic() + HANG_GUARD_S
    while not server.started:
        assert time.monotonic() < guard and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (Playwright's sync API allows one driver at a time)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


@contextlib.contextmanager
def browsing(browser, url: str):
    """A page open at ``url``; JavaScript errors on it fail the tests that used it."""
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    page.set_default_timeout(HANG_GUARD_S * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, index) of a live server over the folder index of serve_fixtures.tiny_index."""
    index = SearchIndex.open(tiny_index(tmp_path_factory.mktemp("browser")))
    with serving(index) as url:
        yield url, index


@pytest.fixture(scope="module")
def page(chromium, served):
    with browsing(chromium, served[0] + "/") as page:
        yield page


def test_type_a_query_see_ranked_results_and_play_one(page, served, tmp_path):
    _, index = served
    sync_api.expect(page.locator("#info")).to_contain_text(f"{len(index)} clips")
    page.fill("#k", "5")
    page.fill("#query", "a high tone beeps twice")
    page.press("#query", "Enter")
    rows = page.locator("#results .result")
    sync_api.expect(rows).to_have_count(5)
    expected = index.search_text("a high tone beeps twice", 5)
    assert rows.locator(".path").all_text_contents() == [h.path for h in expected]
    assert rows.nth(0).locator(".score").inner_text() == f"score {expected[0].score:.4f}"
    sync_api.expect(page.locator("#status")).to_contain_text("5 results")

    audio = rows.nth(0).locator("audio")
    box = audio.bounding_box()
    assert box and box["width"] > 100
    page.mouse.click(box["x"] + 18, box["y"] + box["height"] / 2)  # the play button of the native controls
    page.wait_for_function("() => { const a = document.querySelector('.result audio'); "
                           "return !a.paused && a.currentTime > 0.2; }")
    played = audio.evaluate("a => ({src: a.currentSrc, paused: a.paused, t: a.currentTime, error: a.error})")
    assert played["error"] is None and played["src"].endswith(f"/api/audio/{expected[0].id}")
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
    assert (tmp_path / "search.png").stat().st_size > 10_000
    # playing another result pauses the first
    rows.nth(1).locator("audio").evaluate("a => a.play()")
    page.wait_for_function("() => document.querySelectorAll('.result audio')[0].paused")


def test_search_by_uploaded_clip(page, served):
    _, index = served
    clip = index.absolute(3)
    page.fill("#k", "4")
    page.set_input_files("#clip", str(clip))
    page.click("#search-audio")
    expected = index.search_audio_file(clip, 4)
    sync_api.expect(page.locator("#status")).to_contain_text(f"results for “{clip.name}”")
    assert page.locator("#results .result .path").all_text_contents() == [h.path for h in expected]


def test_errors_are_shown_on_the_page(page, tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"definitely not audio" * 20)
    page.set_input_files("#clip", str(bad))
    page.click("#search-audio")
    sync_api.expect(page.locator("#error")).to_be_visible()
    sync_api.expect(page.locator("#error")).to_contain_text("not a readable audio file")
    assert page.locator("#results .result").count() == 0
    page.fill("#k", "3")
    page.fill("#query", "beep")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result")).to_have_count(3)
    sync_api.expect(page.locator("#error")).to_be_hidden()


# --- an index of whole recordings built from a manifest: captions, durations, thumbnails, offsets

EVENT_AT = 40  # seconds


def _event(rate: int = 16000):
    import numpy as np

    t = np.arange(rate) / rate
    return (0.6 * np.sin(2 * np.pi * 3000 * t * (1 - 0.4 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def long_served(tmp_path_factory):
    """A windowed index over a manifest: the 12 test clips and a 60 s recording silent but for an event at 40 s."""
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("long_browser")
    rels = write_clips(root / "audio")
    wave = np.zeros(60 * 16000, np.float32)
    wave[EVENT_AT * 16000 : (EVENT_AT + 1) * 16000] = _event()
    sf.write(root / "audio" / "recording.wav", wave, 16000, subtype="FLOAT")
    sf.write(root / "event.wav", _event(), 16000, subtype="FLOAT")
    with open(root / "clips.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "caption"])
        writer.writerows([(f"audio/{rel}", f"{kind} at {freq:g} Hz") for (rel, kind, freq) in CLIPS])
        writer.writerow(["audio/recording.wav", "a quiet minute, then a falling chirp"])
    assert len(rels) == 12
    tiny_run(root / "run")
    build_index(root / "clips.csv", root / "run", root / "index", device="cpu", windows=True)
    index = SearchIndex.open(root / "index")
    with serving(index) as url:
        yield url, index, root


@pytest.fixture(scope="module")
def long_page(chromium, long_served):
    with browsing(chromium, long_served[0] + "/") as page:
        yield page


def test_hits_show_duration_thumbnail_caption_and_a_loaded_player(long_page, long_served):
    _, index, _ = long_served
    long_page.fill("#k", "13")
    long_page.fill("#query", "a falling chirp")
    long_page.press("#query", "Enter")
    rows = long_page.locator("#results .result")
    sync_api.expect(rows).to_have_count(13)
    expected = index.search_text("a falling chirp", 13)
    assert rows.locator(".path").all_text_contents() == [h.path for h in expected]
    assert rows.locator(".caption").all_text_contents() == [index.captions[h.id] for h in expected]
    durations = ["1:00" if h.path == "audio/recording.wav" else "0:01" for h in expected]
    assert rows.locator(".duration").all_text_contents() == durations
    row = rows.nth([h.path for h in expected].index("audio/recording.wav"))
    heights = [float(x) for x in row.locator(".thumb rect").evaluate_all("rs => rs.map(r => r.getAttribute('height'))")]
    peaks = index.thumbs[index.paths.index("audio/recording.wav")]
    assert heights == pytest.approx([max(1.0, 24 * p / 255) for p in peaks.tolist()])
    assert [i for i, h in enumerate(heights) if h > 1] == [42, 43]  # loud only where the event is (40-41 s of 60)
    # the player knows the file's length before anything is played (no more "0:00 / 0:00")
    long_page.wait_for_function("() => [...document.querySelectorAll('.result audio')].every(a => a.duration > 0)")
    lengths = rows.locator("audio").evaluate_all("as => as.map(a => a.duration)")
    assert [round(x) for x in lengths] == [60 if d == "1:00" else 1 for d in durations]


def test_offset_is_shown_and_playback_starts_there(long_page, long_served):
    _, _, root = long_served
    long_page.fill("#k", "3")
    long_page.set_input_files("#clip", str(root / "event.wav"))
    long_page.click("#search-audio")
    first = long_page.locator("#results .result").nth(0)
    sync_api.expect(first.locator(".path")).to_have_text("audio/recording.wav")
    sync_api.expect(first.locator(".offset")).to_have_text("at 0:40")
    audio = first.locator("audio")
    audio.evaluate("a => a.play()")
    long_page.wait_for_function("() => { const a = document.querySelector('.result audio'); return !a.paused && a.currentTime > 0; }")
    assert audio.evaluate("a => a.currentTime") >= EVENT_AT
    audio.evaluate("a => a.pause()")


def test_query_lives_in_the_url_and_back_runs_the_previous_search(long_page, long_served):
    url, index, _ = long_served
    long_page.goto(f"{url}/?q={quote('a quiet minute')}&k=4")  # a shared link runs its search
    rows = long_page.locator("#results .result .path")
    sync_api.expect(rows).to_have_count(4)
    assert rows.all_text_contents() == [h.path for h in index.search_text("a quiet minute", 4)]
    assert long_page.input_value("#query") == "a quiet minute" and long_page.input_value("#k") == "4"

    long_page.fill("#query", "a high tone")
    long_page.fill("#k", "2")
    long_page.press("#query", "Enter")
    sync_api.expect(rows).to_have_count(2)
    long_page.wait_for_url("**/?q=a%20high%20tone&k=2")
    assert rows.all_text_contents() == [h.path for h in index.search_text("a high tone", 2)]

    long_page.go_back()
    long_page.wait_for_url(f"**/?q={quote('a quiet minute')}&k=4")
    sync_api.expect(rows).to_have_count(4)
    sync_api.expect(long_page.locator("#query")).to_have_value("a quiet minute")
    assert rows.all_text_contents() == [h.path for h in index.search_text("a quiet minute", 4)]
    long_page.go_forward()
    sync_api.expect(rows).to_have_count(2)
