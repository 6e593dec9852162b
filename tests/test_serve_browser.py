"""The search page in a real browser: uvicorn on a loopback port, headless Chromium driven by
Playwright. Skipped when playwright or /usr/bin/chromium is not installed."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

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
from serve_fixtures import tiny_index  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, index) of a live server; the socket is bound before the server starts, so no port race."""
    index = SearchIndex.open(tiny_index(tmp_path_factory.mktemp("browser")))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    guard = time.monotonic() + HANG_GUARD_S
    while not server.started:
        assert time.monotonic() < guard and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", index
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.set_default_timeout(HANG_GUARD_S * 1000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(served[0] + "/")
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


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
