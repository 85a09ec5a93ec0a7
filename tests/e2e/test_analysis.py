"""Unattended analysis end to end: cloud, redis-server, relay nodes and camera simulators as
processes; nobody watches. The cameras play motion episodes (``--motion start:duration``,
seconds after the simulator starts)."""

import asyncio
import io
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest
from bson import ObjectId
from pymongo import MongoClient

from peer.network import use_host_addresses
from tests.e2e.test_live_video import Owner, onboarded_camera, simulator
from tests.e2e.test_relay import RELAY_SECRET, RelayStack
from tests.servers import cloud_process, redis_server, stop


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayStack]:
    tmp = tmp_path_factory.mktemp("analysis")
    database = "analysis_" + secrets.token_hex(4)
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": database,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
        "RELAY_SECRET": RELAY_SECRET,
        "PRESENCE_TTL_S": "3",
    }
    with (
        redis_server() as redis_url,
        cloud_process({**env, "REDIS_URL": redis_url}, tmp / "cloud.log") as url,
    ):
        yield RelayStack(url, tmp, database, mongodb_url)


@pytest.fixture
def stack(cloud: RelayStack) -> Iterator[RelayStack]:
    """Two relay nodes (motion only, no YOLO), started for each test and stopped after it."""
    relay_ids = {f"relay-{secrets.token_hex(3)}" for _ in range(2)}
    for relay_id in relay_ids:
        cloud.start_relay(relay_id, yolo=False)
    try:
        deadline = time.monotonic() + 60
        while not relay_ids <= cloud.online_relays():
            assert time.monotonic() < deadline, "the relays did not register"
            time.sleep(0.3)
        yield cloud
    finally:
        for relay_id in relay_ids:
            stop(cloud.relays.pop(relay_id))


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


class Camera:
    def __init__(self, stack: RelayStack, owner: Owner, device_id: str) -> None:
        self.stack, self.owner, self.id = stack, owner, device_id

    async def get(self, path: str = "", **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=15) as http:
            url = f"/api/v1/devices/{self.id}{path}" if not path.startswith("/") else path
            r = await http.get(url, params=params, headers=self.owner.headers)
            assert r.status_code == 200, r.text
            return r.json()

    async def patch(self, **fields: Any) -> None:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=15) as http:
            r = await http.patch(
                f"/api/v1/devices/{self.id}", json=fields, headers=self.owner.headers
            )
            assert r.status_code == 200, r.text

    async def analysis(self, want: str, timeout: float) -> str | None:
        """Wait for the analysis state ``want``; the relay node's id."""
        deadline = time.monotonic() + timeout
        while (got := (await self.get())["analysis"])["state"] != want:
            assert time.monotonic() < deadline, f"analysis stayed {got}, not {want}"
            await asyncio.sleep(0.2)
        return got["relay_id"]  # type: ignore[no-any-return]

    async def threads(self, kind: str = "motion") -> list[dict[str, Any]]:
        listed = await self.get("/api/v1/events", device_id=self.id, kind=kind)
        return sorted(listed["events"], key=lambda e: e["started_at"])

    async def thread(self, index: int, *, ended: bool, timeout: float) -> dict[str, Any]:
        """The ``index``-th motion thread, once it has ended (or while it is open)."""
        deadline = time.monotonic() + timeout
        while True:
            threads = await self.threads()
            if len(threads) > index and (threads[index]["state"] == "end") == ended:
                return threads[index]
            assert time.monotonic() < deadline, f"thread #{index} not {ended=}: {threads}"
            await asyncio.sleep(0.3)

    async def clip(self, event_id: str, timeout: float = 20) -> tuple[dict[str, Any], bytes]:
        """The event thread's clip once complete: its metadata and its bytes."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.get(f"/api/v1/events/{event_id}")
            if event.get("clip_id"):
                media = await self.get(f"/api/v1/media/{event['clip_id']}")
                if media["state"] == "ready":
                    break
            assert time.monotonic() < deadline, f"no complete clip: {event}"
            await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=15) as http:
            content = await http.get(media["content_url"])  # the signed URL a <video> uses
            assert content.status_code == 200, content.text
            assert content.headers["content-type"] == media["content_type"]
        return media, content.content

    def reporter(self, event_id: str) -> str:
        with MongoClient(self.stack.mongodb_url) as client:
            doc = client[self.stack.database]["events"].find_one({"_id": ObjectId(event_id)})
            assert doc is not None
            return str(doc["relay_id"])


@pytest.fixture
async def camera_factory(stack: RelayStack) -> AsyncIterator[Any]:
    processes = []

    async def start(name: str, *motion: str, **arming: Any) -> Camera:
        owner = await Owner.register(stack.url)
        state = await onboarded_camera(stack, owner, name)  # type: ignore[arg-type]
        camera = Camera(stack, owner, json.loads(state.read_text())["device_id"])
        if arming:
            await camera.patch(**arming)
        args = ["run", "--state", str(state), "--size", "320x240"]
        for episode in motion:
            args += ["--motion", episode]
        processes.append(simulator(*args, log=stack.tmp / f"{name}.log"))
        return camera

    try:
        yield start
    finally:
        for process in processes:
            stop(process)


@pytest.mark.timeout(180)
async def test_an_armed_camera_nobody_watches_is_analysed_and_moves_when_its_node_dies(
    stack: RelayStack, camera_factory: Any
) -> None:
    # Episodes: the first analysed by one node, the second by the other after the first
    # node is killed, the third cut short by killing the second (the cloud ends it).
    camera: Camera = await camera_factory("porch", "12:4", "40:4", "60:20")
    first = await camera.analysis("active", timeout=30)
    one = await camera.thread(0, ended=True, timeout=40)
    assert camera.reporter(one["id"]) == first
    assert one["snapshot_url"] is not None
    # Its clip: the camera's H.264 in an MP4, from at least 4 s before the motion began to
    # the thread's end and its post-roll (5 s each by default).
    clip, data = await camera.clip(one["id"])
    assert clip["content_type"] == "video/mp4"
    started, motion = (datetime.fromisoformat(t) for t in (clip["started_at"], one["started_at"]))
    ended = datetime.fromisoformat(one["ended_at"])
    assert (motion - started).total_seconds() >= 4, (one, clip)
    expected = (ended - started).total_seconds() + 5
    assert abs(clip["duration_s"] - expected) < 1.5, (clip, one)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 240)
        assert abs(float(container.duration or 0) / av.time_base - clip["duration_s"]) < 0.5
        assert sum(1 for _ in container.decode(stream)) >= 10 * expected  # 15 fps, played

    stack.relays[str(first)].kill()  # no goodbye: its connection drops
    killed_at = time.monotonic()
    while (second := (await camera.get())["analysis"]).get("relay_id") in (first, None):
        assert time.monotonic() - killed_at < 10, f"not moved within 10 s: {second}"
        await asyncio.sleep(0.2)
    assert second["state"] == "active"

    two = await camera.thread(1, ended=True, timeout=40)
    assert camera.reporter(two["id"]) == second["relay_id"]

    three = await camera.thread(2, ended=False, timeout=40)  # the third episode is on
    stack.relays[str(second["relay_id"])].kill()
    ended = await camera.thread(2, ended=True, timeout=10)  # the cloud, not the node, ends it
    assert ended["id"] == three["id"]
    assert ended["ended_at"] is not None  # the last time the node reported it
    assert await camera.analysis("waiting_for_relay", timeout=10) is None


@pytest.mark.timeout(150)
async def test_on_motion_a_node_attaches_for_the_cameras_own_motion_and_disarmed_gives_nothing(
    stack: RelayStack, camera_factory: Any
) -> None:
    watched: Camera = await camera_factory("gate", "16:8", analysis_mode="on_motion")
    off: Camera = await camera_factory("shed", "16:8", armed=False)
    assert await watched.analysis("active", timeout=30) is not None
    assert await off.analysis("disarmed", timeout=5) is None
    await asyncio.sleep(5)  # online, assigned, no motion yet: no node watches either camera
    for camera in (watched, off):
        assert not any(stack.open_sessions(r, camera.id) for r in stack.relays)

    one = await watched.thread(0, ended=False, timeout=40)  # a node attached for the motion
    assert any(stack.open_sessions(r, watched.id) for r in stack.relays)
    assert watched.reporter(one["id"]) in stack.relays
    await watched.thread(0, ended=True, timeout=30)
    deadline = time.monotonic() + 20  # the motion stopped: the node lets go after its grace
    while any(stack.open_sessions(r, watched.id) for r in stack.relays):
        assert time.monotonic() < deadline, "a node stayed on after the motion"
        await asyncio.sleep(0.3)
    assert await off.threads() == []
    assert not any(stack.open_sessions(r, off.id) for r in stack.relays)


async def snapshot(camera: Camera) -> tuple[str, tuple[int, ...]]:
    """A snapshot of the camera: who answered, and the picture's shape."""
    async with httpx.AsyncClient(base_url=camera.stack.url, timeout=15) as http:
        r = await http.get(f"/api/v1/devices/{camera.id}/snapshot", headers=camera.owner.headers)
    assert r.status_code == 200, r.text
    picture = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    return r.headers["x-snapshot-source"], tuple(picture.shape)


async def recorded(camera: Camera, duration_s: int) -> tuple[dict[str, Any], datetime]:
    """Ask for a recording; (the recording once ready, when it was asked for)."""
    async with httpx.AsyncClient(base_url=camera.stack.url, timeout=15) as http:
        asked = await http.post(
            f"/api/v1/devices/{camera.id}/recordings",
            json={"duration_s": duration_s},
            headers=camera.owner.headers,
        )
    assert asked.status_code == 201, asked.text
    made = asked.json()
    assert (made["kind"], made["state"], made["size"]) == ("recording", "recording", 0)
    deadline = time.monotonic() + duration_s + 20
    while (got := await camera.get(f"/api/v1/media/{made['id']}"))["state"] != "ready":
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.3)
    return got, datetime.fromisoformat(made["created_at"])


@pytest.mark.timeout(150)
async def test_a_recording_on_request_of_a_disarmed_camera_and_of_an_analysed_one(
    stack: RelayStack, camera_factory: Any
) -> None:
    camera: Camera = await camera_factory("hall", "8:4", armed=False)
    await camera.analysis("disarmed", timeout=30)
    await camera.owner.online()
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        url = f"/api/v1/devices/{camera.id}/recordings"
        for bad in ({"duration_s": 0}, {"duration_s": 601}, {"duration_s": "5"}, {}):
            r = await http.post(url, json=bad, headers=camera.owner.headers)
            assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), bad
        stranger = await Owner.register(stack.url)
        r = await http.post(url, json={"duration_s": 5}, headers=stranger.headers)
        assert r.status_code == 404

    # Nobody watches it: the camera itself answers a snapshot.
    assert await snapshot(camera) == ("camera", (240, 320))

    # Disarmed: a node attaches for the recording only; the motion during it is no event.
    recording, asked_at = await recorded(camera, 6)
    assert recording["content_type"] == "video/mp4"
    assert 3 <= recording["duration_s"] <= 7, recording
    assert datetime.fromisoformat(recording["started_at"]) >= asked_at  # nothing held before
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        content = await http.get(recording["content_url"])
    with av.open(io.BytesIO(content.content)) as container:
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert frames >= 10 * 3
    assert await camera.threads() == []
    deadline = time.monotonic() + 20  # the recording over: the node lets go after its grace
    while any(stack.open_sessions(r, camera.id) for r in stack.relays):
        assert time.monotonic() < deadline, "a node stayed on after the recording"
        await asyncio.sleep(0.3)

    # Analysed: the recording starts with the seconds the node held before it was asked.
    await camera.patch(armed=True)
    await camera.analysis("active", timeout=15)
    await asyncio.sleep(7)  # the node's pre-roll fills
    assert await snapshot(camera) == ("relay", (240, 320))  # from the node's latest frame
    recording, asked_at = await recorded(camera, 3)
    held = (asked_at - datetime.fromisoformat(recording["started_at"])).total_seconds()
    assert held >= 4, recording
    assert 7 <= recording["duration_s"] <= 11, recording


def synthetic_mp4(path: Path, seconds: float, motion: tuple[float, float]) -> None:
    """An H.264 MP4 of the synthetic room (320x240, 15 fps) with one intruder episode."""
    from device_sim.media import SyntheticVideo

    video = SyntheticVideo(width=320, height=240, fps=15, motion=[motion])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for n in range(round(seconds * 15)):
            frame = av.VideoFrame.from_ndarray(video.picture(n), format="bgr24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.timeout(120)
async def test_an_uploaded_video_is_analysed_and_its_events_say_where_in_the_file(
    stack: RelayStack, camera_factory: Any
) -> None:
    camera: Camera = await camera_factory("garage", armed=False)  # events from the file only
    path = stack.tmp / "garage-upload.mp4"
    synthetic_mp4(path, seconds=12, motion=(4.0, 3.0))
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        made = await http.post(
            f"/api/v1/devices/{camera.id}/uploads",
            params={"filename": "garage.mp4"},
            content=path.read_bytes(),
            headers=camera.owner.headers,
        )
        assert made.status_code == 201, made.text
        upload_id = made.json()["id"]
        deadline = time.monotonic() + 60
        while (got := await camera.get(f"/api/v1/uploads/{upload_id}"))["analysis"] != "analysed":
            assert got["analysis"] in ("pending", "analysing"), got
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.3)
    assert got["progress"] == 1.0
    threads = await camera.threads()
    assert len(threads) == 1, threads
    (thread,) = threads
    assert (thread["source"], thread["upload_id"], thread["state"]) == ("upload", upload_id, "end")
    assert 3.5 <= thread["offset_s"] <= 5.0, thread  # the intruder enters at 4 s
    assert 6.5 <= thread["end_offset_s"] <= 8.5, thread  # and leaves at 7 s
