"""Relay nodes end to end: cloud, redis-server, two relay processes, a simulated camera."""

import asyncio
import contextlib
import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from pymongo import MongoClient

from device_sim.viewer import Viewer, WatchError
from peer.network import use_host_addresses
from tests.conftest import PASSWORD, unique_email
from tests.e2e.test_live_video import Owner, onboarded_camera, simulator
from tests.peers import connect
from tests.rtsp import rtsp_camera
from tests.servers import cloud_process, redis_server, relay_process, stop

RELAY_SECRET = "relay-" + secrets.token_hex(8)


@dataclass
class RelayStack:
    url: str
    tmp: Path
    database: str
    mongodb_url: str
    relays: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_relay(self, relay_id: str, yolo: bool = True) -> None:
        env = {
            "CLOUD_URL": self.url,
            "RELAY_ID": relay_id,
            "RELAY_SECRET": RELAY_SECRET,
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "YOLO_MODEL": "yolo11n.yaml" if yolo else "none",
            "YOLO_OFFLINE": "1",
            "YOLO_CONFIG_DIR": str(self.tmp / "yolo"),
            "ANALYSIS_FPS": "5",
        }
        self.relays[relay_id] = relay_process(env, self.tmp / f"{relay_id}.log")

    def relay_log(self, relay_id: str) -> str:
        return (self.tmp / f"{relay_id}.log").read_text()

    def online_relays(self) -> set[str]:
        with MongoClient(self.mongodb_url) as client:
            docs = client[self.database]["relays"].find({"online": True})
            return {d["relay_id"] for d in docs}

    def open_sessions(self, viewer_id: str, device_id: str) -> int:
        from bson import ObjectId

        with MongoClient(self.mongodb_url) as client:
            return int(
                client[self.database]["sessions"].count_documents(
                    {"viewer_id": viewer_id, "device_id": ObjectId(device_id), "ended_at": None}
                )
            )


@pytest.fixture(scope="module")
def relay_stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayStack]:
    tmp = tmp_path_factory.mktemp("relay")
    database = "relay_" + secrets.token_hex(4)
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
        stack = RelayStack(url, tmp, database, mongodb_url)
        try:
            stack.start_relay("relay-a")
            stack.start_relay("relay-b")
            deadline = time.monotonic() + 120  # the first start loads torch and the model
            while stack.online_relays() != {"relay-a", "relay-b"}:
                for relay_id, process in stack.relays.items():
                    assert process.poll() is None, stack.relay_log(relay_id)[-3000:]
                assert time.monotonic() < deadline, "the relays did not register"
                time.sleep(0.5)
            yield stack
        finally:
            for process in stack.relays.values():
                stop(process)


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


async def share(url: str, owner: Owner, email: str, device_id: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        r = await http.post(
            f"/api/v1/devices/{device_id}/shares", json={"email": email}, headers=owner.headers
        )
        assert r.status_code == 201, r.text


async def account(url: str, prefix: str) -> str:
    email = unique_email(prefix)
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        assert (
            await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        ).status_code == 201
    return email


@contextlib.asynccontextmanager
async def new_owners_camera(stack: RelayStack, name: str) -> AsyncIterator[tuple[Owner, str]]:
    """A new account's camera simulator, online: (the owner, the device id)."""
    owner = await Owner.register(stack.url)
    state = await onboarded_camera(stack, owner, name)  # type: ignore[arg-type]
    camera = simulator(
        "run", "--state", str(state), "--size", "320x240", log=stack.tmp / f"{name}.log"
    )
    try:
        await owner.online()
        yield owner, json.loads(state.read_text())["device_id"]
    finally:
        stop(camera)


async def disarmed(stack: RelayStack, owner: Owner, device_id: str) -> None:
    """Disarm the camera and wait until no relay node analyses it any more."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        r = await http.patch(
            f"/api/v1/devices/{device_id}", json={"armed": False}, headers=owner.headers
        )
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15  # the next assignment, and the node's grace period
    while any(stack.open_sessions(r, device_id) for r in stack.relays):
        assert time.monotonic() < deadline, "a relay node kept analysing a disarmed camera"
        await asyncio.sleep(0.3)


@pytest.mark.timeout(240)
async def test_relayed_viewers_share_one_upstream_and_a_motion_episode_makes_one_event_thread(
    relay_stack: RelayStack,
) -> None:
    stack = relay_stack
    owner = await Owner.register(stack.url)
    friend, stranger = await account(stack.url, "friend"), await account(stack.url, "stranger")
    state = await onboarded_camera(stack, owner, "yard")  # type: ignore[arg-type]
    device_id = json.loads(state.read_text())["device_id"]
    await share(stack.url, owner, friend, device_id)
    # Motion 12 s after the camera starts, for 4 s: the viewers are watching by then.
    camera = simulator(
        "run",
        "--state",
        str(state),
        "--size",
        "320x240",
        "--motion",
        "12:4",
        log=stack.tmp / "yard.log",
    )
    viewers: list[Viewer] = []
    try:
        await owner.online()
        viewers = [
            await Viewer.login(stack.url, owner.email, PASSWORD),
            await Viewer.login(stack.url, friend, PASSWORD),
            await Viewer.login(stack.url, owner.email, PASSWORD),
            await Viewer.login(stack.url, stranger, PASSWORD),
        ]
        for v in viewers:
            await v.connect()
        watches = [await v.watch(device_id, mode="relay", timeout_s=30) for v in viewers[:3]]
        for w in watches:
            assert w.route == "relay"
            assert w.frames >= 1
        # Three viewers, one relay, one upstream session from that relay to the camera.
        upstreams = {r: stack.open_sessions(r, device_id) for r in stack.relays}
        assert sorted(upstreams.values()) == [0, 1], upstreams
        with pytest.raises(WatchError) as refused:
            await viewers[3].watch(device_id, mode="relay")
        assert refused.value.reason == "device_not_found"

        async def thread_of(v: Viewer) -> list[str]:
            states: list[str] = []
            deadline = time.monotonic() + 60
            while "end" not in states:
                left = deadline - time.monotonic()
                assert left > 0, f"no complete motion thread: {states}"
                push = await asyncio.wait_for(v.pushes.get(), left)
                if push["type"] == "event" and push["kind"] == "motion":
                    # The thread's clip, once linked, is pushed with the state it is in.
                    linked = push.get("clip_id") is not None and push["state"] == "new"
                    states.append("new (clip)" if linked and states else push["state"])
            return states

        owner_states, friend_states = await asyncio.gather(
            thread_of(viewers[0]), thread_of(viewers[1])
        )
        for states in (owner_states, friend_states):
            assert states[0] == "new"
            assert states[-1] == "end"
            assert set(states[1:-1]) <= {"update", "new (clip)"}, states
        async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
            listed = (
                await http.get("/api/v1/events", params={"kind": "motion"}, headers=owner.headers)
            ).json()
            motion = [e for e in listed["events"] if e["device_id"] == device_id]
            assert len(motion) == 1
            assert motion[0]["state"] == "end"
            snap = await http.get(motion[0]["snapshot_url"], headers=owner.headers)
            assert snap.headers["content-type"] == "image/jpeg"
            login = await http.post(
                "/api/v1/auth/login", json={"email": stranger, "password": PASSWORD}
            )
            strange = {"Authorization": f"Bearer {login.json()['access_token']}"}
            assert (await http.get("/api/v1/events", headers=strange)).json()["events"] == []
            assert (
                await http.get(f"/api/v1/events/{motion[0]['id']}", headers=strange)
            ).status_code == 404
        assert [p for p in _drain(viewers[3]) if p["type"] == "event"] == []
        # The YOLO path ran on relayed frames, off the event loop, with its latency recorded.
        logs = "".join(stack.relay_log(r) for r in stack.relays)
        assert "detector:" in logs, logs[-2000:]
    finally:
        for v in viewers:
            await v.close()
        stop(camera)


def _drain(viewer: Viewer) -> list[dict[str, object]]:
    got = []
    while not viewer.pushes.empty():
        got.append(viewer.pushes.get_nowait())
    return got


@pytest.mark.timeout(240)
async def test_killing_a_relay_ends_its_sessions_and_a_new_request_plays_through_another(
    relay_stack: RelayStack,
) -> None:
    stack = relay_stack
    async with new_owners_camera(stack, "gate") as (owner, device_id):
        async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
            watch = await viewer.watch(device_id, mode="relay", timeout_s=30)
            serving = next(r for r in stack.relays if stack.open_sessions(r, device_id))
            victim = stack.relays[serving]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert await asyncio.wait_for(watch.ended, 15) == "relay_failed"
            deadline = time.monotonic() + 40
            while serving in stack.online_relays():  # its instance notices the dead socket
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
            again = await viewer.watch(device_id, mode="relay", timeout_s=30)
            assert again.frames >= 1
            other = next(r for r in stack.relays if r != serving)
            assert stack.open_sessions(other, device_id) == 1
            await again.end()
        stack.start_relay(serving)  # leave the module's stack as it was


@pytest.mark.timeout(180)
async def test_the_relay_fans_an_ip_cameras_h264_out_and_a_late_joiner_plays_within_a_second(
    relay_stack: RelayStack,
) -> None:
    """One RTSP camera (Main profile, a keyframe every 4 s) bridged by the agent, three
    viewers through one relay upstream, a fourth joining mid-GOP, a VP8-only one refused."""
    stack = relay_stack
    owner = await Owner.register(stack.url)
    state = await onboarded_camera(stack, owner, "lane")  # type: ignore[arg-type]
    device_id = json.loads(state.read_text())["device_id"]
    with rtsp_camera(keyframe_interval_s=4, profile="main") as ip_camera:
        agent = simulator(
            "run", "--state", str(state), "--source", ip_camera.url, log=stack.tmp / "lane.log"
        )
        viewers = [await Viewer.login(stack.url, owner.email, PASSWORD) for _ in range(5)]
        try:
            for v in viewers:
                await v.connect()
            await owner.online()
            watches = [await v.watch(device_id, mode="relay", timeout_s=30) for v in viewers[:3]]
            serving = [r for r in stack.relays if stack.open_sessions(r, device_id)]
            assert len(serving) == 1
            await asyncio.sleep(2.0)  # well into the camera's 4 s GOP
            late = await viewers[3].watch(device_id, mode="relay", timeout_s=30)
            assert late.ttff_s is not None
            assert late.ttff_s < 1.0  # request to first decoded frame, through the relay
            assert stack.open_sessions(serving[0], device_id) == 1  # still one upstream
            for watch in [*watches, late]:
                frames = watch.frames
                await asyncio.sleep(0.5)
                assert watch.frames > frames
            viewers[4].codecs = ("video/VP8",)
            with pytest.raises(WatchError) as refused:
                await viewers[4].watch(device_id, mode="relay", timeout_s=30)
            assert refused.value.reason == "codec_mismatch"
        finally:
            for v in viewers:
                await v.close()
            stop(agent)
    log = stack.relay_log(serving[0])
    assert f"camera {device_id} sends H.264 (4d401f)" in log


@pytest.mark.timeout(120)
async def test_a_viewer_whose_ice_fails_leaves_the_fan_out_and_the_unused_upstream_closes(
    relay_stack: RelayStack,
) -> None:
    stack = relay_stack
    async with new_owners_camera(stack, "hall") as (owner, device_id):
        await disarmed(stack, owner, device_id)  # else its analysis keeps an upstream
        token = owner.headers["Authorization"].removeprefix("Bearer ")
        view = await connect(stack.url.replace("http", "ws", 1), "/ws/v1/client", token)
        assert (await view.recv())["type"] == "welcome"
        await view.send(
            {"type": "session.request", "id": "r", "device_id": device_id, "mode": "relay"}
        )
        session_id = (await view.expect("session.created", timeout=15))["session_id"]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        # a viewer nobody can reach (TEST-NET-1), as behind a network that drops everything
        offer = re.sub(
            r"(a=candidate:\S+ \d+ \S+ \d+ )\S+ \d+", r"\g<1>192.0.2.1 9", pc.localDescription.sdp
        )
        await pc.close()
        await view.send({"type": "session.offer", "session_id": session_id, "sdp": offer})
        await view.send({"type": "session.ice", "session_id": session_id, "candidate": None})
        serving = None
        deadline = time.monotonic() + 10
        while serving is None:
            serving = next((r for r in stack.relays if stack.open_sessions(r, device_id)), None)
            assert time.monotonic() < deadline, "the relay node never opened an upstream"
            await asyncio.sleep(0.2)
        ended = await view.expect("session.end", timeout=20)
        assert ended["reason"] == "ice_failed"
        deadline = time.monotonic() + 10  # the node's 5 s grace period, and some
        while stack.open_sessions(serving, device_id):
            assert time.monotonic() < deadline, "the relay node kept pulling the camera"
            await asyncio.sleep(0.3)
        await view.socket.close()
        assert f"nobody watches {device_id} any more" in stack.relay_log(serving)


@pytest.mark.timeout(180)
async def test_auto_mode_goes_direct_and_falls_back_to_a_relay_when_direct_does_not_play(
    relay_stack: RelayStack,
) -> None:
    stack = relay_stack
    async with (
        new_owners_camera(stack, "shed") as (owner, device_id),
        await Viewer.login(stack.url, owner.email, PASSWORD) as viewer,
    ):
        direct = await viewer.watch(device_id, mode="auto")
        assert direct.route == "p2p"
        await direct.end()
        # A direct attempt that cannot play in time (here: no time at all) falls back.
        fallback = await viewer.watch(device_id, mode="auto", direct_timeout_s=0.001, timeout_s=30)
        assert fallback.route == "relay"
        assert fallback.frames >= 1
        await fallback.end()
