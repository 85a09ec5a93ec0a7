"""The camera agent bridging an IP camera, end to end with real processes: GStreamer's RTSP
server as the camera (``tests/rtsp_camera.py``), the cloud, redis-server, coturn, the agent
(``python -m device_sim``) and the test process as the viewer."""

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import pytest

from device_sim.viewer import Viewer, WatchError
from peer.codecs import nal_units
from peer.network import use_host_addresses
from tests.conftest import PASSWORD
from tests.e2e.test_live_video import Owner, Stack, onboarded_camera, simulator, stack  # noqa: F401
from tests.rtsp import rtsp_camera
from tests.servers import ROOT, stop

CAMERA_USER, CAMERA_PASSWORD = "admin", "lens-cap-7731"
SLICES = (1, 5)  # coded slices: non-IDR and IDR (ITU-T H.264 table 7-1)


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


@pytest.fixture
async def owner(stack: Stack) -> Owner:  # noqa: F811
    return await Owner.register(stack.url)


def wait_for_line(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log.name} within {timeout} s:\n{content[-3000:]}")


@contextmanager
def source_slices(url: str) -> Iterator[set[bytes]]:
    """The coded slices the camera serves while the block runs, pulled by a client of our own
    (the server shares one encoding between its clients, as IP cameras do)."""
    found: set[bytes] = set()
    stopping = threading.Event()
    started: queue.Queue[None] = queue.Queue()

    def pull() -> None:
        with av.open(url, options={"rtsp_transport": "tcp"}, timeout=10) as container:
            video = container.streams.video[0]
            for packet in container.demux(video):
                started.put(None)
                for unit in nal_units(bytes(packet)):
                    if unit[0] & 0x1F in SLICES:
                        found.add(unit)
                if stopping.is_set():
                    return

    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    started.get(timeout=15)
    try:
        yield found
    finally:
        time.sleep(1.0)  # what the viewer received last was pulled by then
        stopping.set()
        thread.join(15)


def tap_received_slices(watch: Any) -> list[bytes]:
    """The coded slices the viewer's receiver hands to its decoder from now on: aiortc's
    private ``_RTCRtpReceiver__decoder_queue`` (as relay/media.py's fan-out taps it)."""
    received: list[bytes] = []
    decoder_queue = watch.peer.receiver._RTCRtpReceiver__decoder_queue
    forward = decoder_queue.put

    def put(item: Any, *args: Any, **kwargs: Any) -> None:
        if item is not None:
            codec, frame = item
            assert codec.mimeType == "video/H264"
            received.extend(u for u in nal_units(frame.data) if u[0] & 0x1F in SLICES)
        forward(item, *args, **kwargs)

    decoder_queue.put = put
    return received


@pytest.mark.timeout(240)
async def test_an_agent_onboards_by_scanning_its_camera_and_passes_its_h264_through(
    stack: Stack,  # noqa: F811
    owner: Owner,
) -> None:
    qr = stack.tmp / "door-qr.png"
    await owner.qr_png(qr)
    state, log = stack.tmp / "door.json", stack.tmp / "door.log"
    with rtsp_camera(
        user=CAMERA_USER, password=CAMERA_PASSWORD, image=qr, keyframe_interval_s=2
    ) as camera:
        onboarding = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "device_sim",
                "onboard",
                "--scan",
                camera.url,
                "--state",
                str(state),
                "--scan-timeout",
                "60",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert onboarding.returncode == 0, onboarding.stderr
        assert CAMERA_PASSWORD not in onboarding.stdout + onboarding.stderr
        saved = json.loads(state.read_text())
        assert saved["source"] == camera.url.replace(f":{CAMERA_PASSWORD}@", "@")
        # A client of our own sees every picture the agent gets: it joins the camera first
        # (the server encodes once for all its clients, as IP cameras do).
        agent = None
        try:
            with source_slices(camera.url) as served:
                agent = simulator("run", "--state", str(state), log=log)  # what it scanned
                await owner.online()
                async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
                    watch = await viewer.watch(saved["device_id"])
                    received = tap_received_slices(watch)
                    first = await watch.peer.first_frame(5)
                    assert (first.width, first.height) == (1280, 720)
                    pair = watch.selected_pair()
                    assert pair is not None
                    assert pair["local"]["type"] == "host"
                    await asyncio.sleep(3)
                    await watch.end()
                    assert len(received) >= 30  # 15 fps
                    # the very NAL units the camera encoded: nothing decoded or re-encoded
                    assert set(received) <= served, f"{len(set(received) - served)} not served"

                    relayed = await viewer.watch(saved["device_id"], relay_only=True)
                    pair = relayed.selected_pair()
                    assert pair is not None
                    assert pair["local"]["type"] == "relay"
                    assert relayed.frames >= 1
                    await relayed.end()
        finally:
            if agent is not None:
                stop(agent)
    output = log.read_text()
    assert "H.264 passed through" in output
    assert CAMERA_PASSWORD not in output + state.read_text().replace(
        f'"source_password": "{CAMERA_PASSWORD}"', ""
    )


@pytest.mark.timeout(240)
async def test_the_agent_rides_out_a_camera_restart_and_says_so_when_its_password_is_wrong(
    stack: Stack,  # noqa: F811
    owner: Owner,
) -> None:
    state = await onboarded_camera(stack, owner, "drive")
    device_id = json.loads(state.read_text())["device_id"]
    log = stack.tmp / "drive.log"
    with rtsp_camera(user=CAMERA_USER, password=CAMERA_PASSWORD, keyframe_interval_s=4) as camera:
        agent = simulator("run", "--state", str(state), "--source", camera.url, log=log)
        try:
            await owner.online()
            async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
                watch = await viewer.watch(device_id)
                assert watch.ttff_s is not None
                assert watch.ttff_s < 1.0
                await watch.end()

                camera.restart()  # the camera reboots mid-stream
                deadline = time.monotonic() + 45
                while True:
                    try:
                        again = await viewer.watch(device_id, timeout_s=10)
                        break
                    except WatchError as exc:
                        assert exc.reason in ("video_unavailable", "timeout"), exc
                        assert time.monotonic() < deadline, "the agent did not reconnect"
                        await asyncio.sleep(1)
                assert again.frames >= 1
                await again.end()
                assert "playing" in log.read_text().split("connecting to", 1)[1]
        finally:
            stop(agent)

        wrong = camera.url.replace(CAMERA_PASSWORD, "not-the-password")
        agent = simulator("run", "--state", str(state), "--source", wrong, log=log)
        try:
            await owner.online()
            wait_for_line(log, "refused the user name or password", 30)
            async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
                with pytest.raises(WatchError) as refused:
                    await viewer.watch(device_id, timeout_s=15)
                assert refused.value.reason == "video_unavailable"
            devices = await owner.online()  # its cloud connection stays up
            assert devices[0]["online"]
        finally:
            stop(agent)
    output = log.read_text()
    assert "not-the-password" not in output
    assert CAMERA_PASSWORD not in output


async def test_a_vp8_only_viewer_of_an_h264_camera_is_told_codec_mismatch(
    stack: Stack,  # noqa: F811
    owner: Owner,
) -> None:
    state = await onboarded_camera(stack, owner, "attic")
    device_id = json.loads(state.read_text())["device_id"]
    agent = simulator("run", "--state", str(state), "--size", "320x240", log=stack.tmp / "a.log")
    try:
        await owner.online()
        async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
            viewer.codecs = ("video/vp8",)
            with pytest.raises(WatchError) as refused:
                await viewer.watch(device_id)
            assert refused.value.reason == "codec_mismatch"
    finally:
        stop(agent)
