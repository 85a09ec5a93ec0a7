"""Event clips (relay/clips.py) play in Chromium: the final H.264 MP4 and VP8 WebM with their
right duration, and a growing clip's prefix, as uploaded mid-thread, from its start to its
end.

The clips are served by a loopback HTTP server as the cloud would store them (the whole file,
its ``Content-Type``), to Debian's Chromium driven by Playwright with stock flags. The page
comes from the same server: from ``about:blank``, Chromium refused the very same files
(``MEDIA_ELEMENT_ERROR: Format error``).
"""

import functools
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from relay.remux import CONTENT_TYPES, ClipMuxer
from tests.relay.test_clips import FPS, HEIGHT, WIDTH, encode

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINAL_FRAMES = 7 * FPS + 4  # a clip of 7.27 s
PREFIX_AT = 4 * FPS  # the upload made 4 s into it


class Clips(http.server.BaseHTTPRequestHandler):
    """``GET /`` an empty page, ``GET /<name>`` a stored clip."""

    def __init__(self, stored: dict[str, tuple[bytes, str]], *args: Any) -> None:
        self.stored = stored
        super().__init__(*args)

    def do_GET(self) -> None:
        name = self.path.strip("/")
        if name:
            data, content_type = self.stored[name]
        else:
            data, content_type = b"<!doctype html><title>clips</title>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[bytes, str]]:
    """For each codec, the final clip and the prefix uploaded while it grew."""
    stored: dict[str, tuple[bytes, str]] = {}
    for codec in ("h264", "vp8"):
        muxer = ClipMuxer("h264" if codec == "h264" else "vp8")
        for n, (packet, keyframe) in enumerate(encode(codec, FINAL_FRAMES / FPS), 1):
            muxer.add(packet, keyframe)
            if n == PREFIX_AT:
                prefix = muxer.snapshot()
                assert prefix is not None
                stored[f"{codec}-growing"] = prefix, muxer.content_type
        final = muxer.finish()
        assert final is not None
        stored[f"{codec}-final"] = final, CONTENT_TYPES[codec]
    return stored


@pytest.fixture(scope="module")
def server(clips: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Clips, clips))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser, server: str) -> AsyncIterator[Page]:
    page = await browser.new_page()
    await page.goto(server + "/")
    try:
        yield page
    finally:
        await page.close()


# Loads a clip into a muted <video>; once it has data (or failed), what the element says;
# with play, also plays it to its end (fast) and says where that was.
LOAD = """async ([src, play]) => {
  const video = document.createElement('video');
  video.muted = true;
  video.src = src;
  document.body.appendChild(video);
  const outcome = await new Promise((resolve) => {
    video.addEventListener('loadeddata', () => resolve('loadeddata'));
    video.addEventListener('error', () => resolve('error'));
  });
  const loaded = {
    outcome, readyState: video.readyState, duration: video.duration,
    width: video.videoWidth, height: video.videoHeight, error: video.error && video.error.message,
  };
  if (!play || outcome !== 'loadeddata') return loaded;
  video.playbackRate = 4;
  const ended = new Promise((resolve) => video.addEventListener('ended', resolve));
  await video.play();
  await ended;
  return {...loaded, endedAt: video.currentTime, finalDuration: video.duration};
}"""


async def load(page: Page, server: str, name: str, play: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(LOAD, [f"{server}/{name}", play])
    return result


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_a_finished_clip_plays_in_chromium_with_its_duration(
    page: Page, server: str, codec: str
) -> None:
    video = await load(page, server, f"{codec}-final")
    assert video["outcome"] == "loadeddata", video
    assert video["readyState"] >= 2
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    assert video["duration"] == pytest.approx(FINAL_FRAMES / FPS, abs=0.3)


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_a_clip_uploaded_while_it_grows_plays_in_chromium_to_its_end(
    page: Page, server: str, codec: str
) -> None:
    video = await load(page, server, f"{codec}-growing", play=True)
    assert video["outcome"] == "loadeddata", video
    assert video["readyState"] >= 2
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    # it holds 3-4 s (a fragment or a cluster lags at most 1 s), and plays through all of it
    assert 3 - 0.3 <= video["endedAt"] <= PREFIX_AT / FPS
    assert video["finalDuration"] == pytest.approx(video["endedAt"], abs=0.01)
