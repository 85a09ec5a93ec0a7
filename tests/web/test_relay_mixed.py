"""One H.264 camera through one relay node to Python viewers and the browser app at once.

Issue 11's open test: "the relay fans one H.264 upstream out to three viewers at once (Python
viewers and headless Chromium in the browser app), and a viewer joining mid-GOP (keyframe
interval 4 s) decodes its first frame less than 1 s after its offer". tests/e2e/test_relay.py
shows the fan-out to Python viewers only; this adds the browser beside them.

Real processes: the cloud, redis-server and a relay node (``tests/web/stack.py``), the RTSP
stand-in (``tests/rtsp.py``: H.264 Main, a keyframe every 4 s) bridged by the camera agent
(``device_sim run --source rtsp://...``) with loopback candidates only, so every viewer goes
through the relay; Chromium on the phone's own network (``tests/web/network.py``), driven by
Playwright as tests/web/test_journey.py does.
"""

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from device_sim.viewer import Viewer, Watch
from peer.network import use_host_addresses
from tests.conftest import PASSWORD
from tests.rtsp import rtsp_camera
from tests.servers import ROOT, stop
from tests.web.test_journey import (  # the browser suite's processes and phone
    Phone,
    Stack,
    browser,  # noqa: F401 (a fixture)
    phone,  # noqa: F401 (a fixture)
    register,
    stack,  # noqa: F401 (a fixture)
)

GOP_S = 4.0  # the camera's keyframe interval
SIZE = (640, 360)


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    """The Python viewers offer loopback host candidates, as the relay node does."""
    use_host_addresses(["127.0.0.1"])


def agent(state: Path, url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``device_sim run --source URL``: the agent bridging the RTSP camera, loopback only."""
    command = [sys.executable, "-m", "device_sim", "--log-level", "INFO", "run"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*command, "--state", str(state), "--source", url],
            cwd=ROOT,
            env={**os.environ, "ICE_HOST_ADDRESSES": "127.0.0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def onboarded(url: str, email: str, tmp_path: Path) -> tuple[Path, str]:
    """A camera of ``email``'s account, activated: its state file and device id."""
    from tests.web.stack import onboard_camera

    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        login = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        ticket = await http.post(
            "/api/v1/onboarding",
            json={
                "device_name": "Porch",
                "camera_model": "IPC-H264",
                "wifi_ssid": "Home",
                "wifi_password": "wifi-pass-789",
            },
            headers=headers,
        )
    assert ticket.status_code == 201, ticket.text
    png, state = tmp_path / "porch.png", tmp_path / "porch.json"
    png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
    device_id = await asyncio.to_thread(onboard_camera, png, state)
    return state, device_id


async def next_keyframe(watch: Watch, timeout_s: float = 2 * GOP_S + 2) -> float:
    """When ``watch``'s viewer next decodes a keyframe (time.monotonic())."""
    last = watch.peer.last_frame
    async with asyncio.timeout(timeout_s):
        while True:
            frame = watch.peer.last_frame
            if frame is not last and frame is not None and frame.key_frame:
                return time.monotonic()
            last = frame
            await asyncio.sleep(0.01)


async def advancing(watches: list[Watch], page: Phone, seconds: float) -> list[float]:
    """Frames a second each viewer decoded over ``seconds``, the browser's last."""
    script = (
        "() => document.querySelector('.video-box video')"
        ".getVideoPlaybackQuality().totalVideoFrames"
    )
    before = [w.frames for w in watches]
    shown = await page.page.evaluate(script)
    await asyncio.sleep(seconds)
    after = [w.frames for w in watches]
    shown_after = await page.page.evaluate(script)
    rates = [(b - a) / seconds for a, b in zip(before, after, strict=True)]
    return [*rates, (shown_after - shown) / seconds]


@pytest.fixture
async def viewers(stack: Stack) -> AsyncIterator[list[Viewer]]:  # noqa: F811 (the fixture)
    opened: list[Viewer] = []
    yield opened
    for viewer in opened:
        await viewer.close()


@pytest.mark.timeout(300)
async def test_one_h264_upstream_reaches_python_viewers_and_chromium_and_late_joiners_start_at_once(
    stack: Stack,  # noqa: F811 (the fixture)
    browser: Browser,  # noqa: F811 (the fixture)
    viewers: list[Viewer],
    tmp_path: Path,
) -> None:
    email = await register(stack.url, "mixed")
    state, device_id = await onboarded(stack.url, email, tmp_path)
    with rtsp_camera(size=SIZE, keyframe_interval_s=GOP_S, profile="main") as ip_camera:
        camera = agent(state, ip_camera.url, stack.tmp / "porch.log")
        stack.processes.append(camera)
        try:
            handset = await Phone.open(browser, stack.url, tmp_path, "mixed")
            page = handset.page
            await handset.sign_in(email)
            card = page.locator(f"li.camera[data-device-id='{device_id}']")
            await expect(card).to_have_attribute("data-online", "true", timeout=30_000)

            # The first viewer (Python) starts the relay's upstream.
            for _ in range(2):
                viewers.append(await Viewer.login(stack.url, email, PASSWORD))
            for viewer in viewers:
                await viewer.connect()
            first = await viewers[0].watch(device_id, mode="relay", timeout_s=30)
            assert first.route == "relay"

            # The browser joins mid-GOP: halfway between two of the camera's keyframes.
            keyframe_at = await next_keyframe(first)
            await asyncio.sleep(GOP_S / 2 - (time.monotonic() - keyframe_at))
            browser_joined_s = time.monotonic() - keyframe_at
            await page.goto(f"{stack.url}/#/live/{device_id}?mode=relay")
            await expect(page.locator(".video-box")).to_have_attribute(
                "data-phase", "playing", timeout=30_000
            )
            await expect(page.locator(".route")).to_have_text("Relay node")
            await handset.expect_codec("H264", "H.264")
            browser_ttff_ms = int(await page.locator(".ttff").get_attribute("data-ms") or "0")

            # A second Python viewer joins mid-GOP too.
            keyframe_at = await next_keyframe(first)
            await asyncio.sleep(GOP_S / 2 - (time.monotonic() - keyframe_at))
            late_joined_s = time.monotonic() - keyframe_at
            late = await viewers[1].watch(device_id, mode="relay", timeout_s=30)
            assert late.route == "relay"

            # All three decode at once, from one upstream (past the late one's GOP catch-up).
            await asyncio.sleep(1.0)
            rates = await advancing([first, late], handset, 2.0)
            frame = late.peer.last_frame
            assert frame is not None
            size = (frame.width, frame.height)
            log = (stack.tmp / "relay.log").read_text()
        finally:
            stop(camera)
            stack.processes.remove(camera)

    print(  # for the record (pytest -s)
        f"browser joined {browser_joined_s:.2f} s into the GOP, first frame {browser_ttff_ms} ms;"
        f" python joined {late_joined_s:.2f} s in, first frame {late.ttff_s:.3f} s; fps {rates}"
    )
    assert 1.0 < browser_joined_s < GOP_S - 1.0, browser_joined_s  # mid-GOP
    assert 1.0 < late_joined_s < GOP_S - 1.0, late_joined_s
    # request (before the offer) to the first decoded frame, through the relay
    assert late.ttff_s is not None
    assert late.ttff_s < 1.0, late.ttff_s
    assert 0 < browser_ttff_ms < 1000, browser_ttff_ms
    assert size == SIZE
    assert all(rate >= 10 for rate in rates), rates  # the camera's 15 fps, give or take
    assert log.count(f"camera {device_id} sends H.264") == 1, log[-3000:]  # one upstream
    await handset.close()
