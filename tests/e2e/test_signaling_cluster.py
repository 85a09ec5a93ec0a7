"""Two cloud instances in separate processes, one Redis, one SecantusDB: routing across them."""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.identity import assertion, public_key_b64
from tests.conftest import PASSWORD, Account, ActivatedDevice, share, unique_email
from tests.peers import Peer, connect
from tests.servers import free_port, start_cloud, stop

PUBLIC = "http://cloud.test"  # both instances serve one public URL behind a balancer
PRESENCE_TTL_S = 3


class Instance:
    """One ``python -m cloud`` process that a test can kill, stop or restart."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_cloud({**os.environ, **self.env}, self.log, self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
        != b"PONG\n"
    ):
        assert process.poll() is None, "redis-server exited"
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return process


@dataclass
class Cluster:
    a: Instance
    b: Instance
    redis_port: int
    redis: subprocess.Popen[bytes]


@pytest.fixture
def cluster(mongodb_url: str, tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    redis = start_redis(port)
    redis_url = f"redis://127.0.0.1:{port}/0"
    c: Cluster | None = None
    try:
        env = {
            "PUBLIC_URL": PUBLIC,
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": "cluster_" + secrets.token_hex(4),
            "REDIS_URL": redis_url,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "PRESENCE_TTL_S": str(PRESENCE_TTL_S),
            "DATA_DIR": str(tmp_path),
        }
        a, b = Instance("a", env, tmp_path / "a.log"), Instance("b", env, tmp_path / "b.log")
        c = Cluster(a, b, port, redis)
        a.start()
        b.start()
        yield c
    finally:
        if c is not None:
            c.a.stop()
            c.b.stop()
            stop(c.redis)
        else:
            stop(redis)
    for log in (c.a.log, c.b.log):
        text = log.read_text()
        at = text.find("Traceback")
        assert at < 0, text[max(0, at - 1500) : at + 3000]


async def account(http: httpx.AsyncClient, prefix: str) -> Account:
    email = unique_email(prefix)
    created = await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    tokens = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return Account(email, created.json()["id"], tokens.json())


async def device_of(http: httpx.AsyncClient, owner: Account) -> ActivatedDevice:
    body = {
        "device_name": "Porch",
        "camera_model": "VC-100",
        "wifi_ssid": "Home",
        "wifi_password": "",
    }
    ticket = await http.post("/api/v1/onboarding", json=body, headers=owner.headers)
    key = Ed25519PrivateKey.generate()
    uid = "cam-" + secrets.token_hex(6)
    activated = await http.post(
        "/api/v1/devices/activate",
        json={
            "token": json.loads(ticket.json()["payload"])["t"],
            "device_uid": uid,
            "camera_model": "VC-100",
            "firmware_version": "1.0",
            "public_key": public_key_b64(key),
        },
    )
    assert activated.status_code == 201, activated.text
    return ActivatedDevice(activated.json()["device_id"], uid, "Porch", key)


async def camera_on(instance: Instance, device: ActivatedDevice) -> Peer:
    peer = await connect(
        instance.ws, "/ws/v1/device", assertion(device.private_key, device.id, PUBLIC)
    )
    assert (await peer.recv())["type"] == "welcome"
    return peer


async def viewer_on(instance: Instance, who: Account) -> Peer:
    peer = await connect(instance.ws, "/ws/v1/client", who.tokens["access_token"])
    assert (await peer.recv())["type"] == "welcome"
    return peer


async def negotiate(cam: Peer, view: Peer, device_id: str) -> str:
    await view.send({"type": "session.request", "id": "r", "device_id": device_id})
    created = await view.expect("session.created")
    sid: str = created["session_id"]
    await view.send({"type": "session.offer", "session_id": sid, "sdp": "v=0 offer"})
    assert (await cam.expect("session.offer"))["sdp"] == "v=0 offer"
    await cam.send({"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"})
    assert (await view.expect("session.answer"))["sdp"] == "v=0 answer"
    cand = {
        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    await view.send({"type": "session.ice", "session_id": sid, "candidate": cand})
    assert (await cam.expect("session.ice"))["candidate"] == cand
    await cam.send({"type": "session.ice", "session_id": sid, "candidate": None})
    assert "candidate" not in await view.expect("session.ice")
    return sid


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.a.http, timeout=10) as client:
        yield client


@pytest.mark.timeout(120)
async def test_sessions_route_across_instances_and_strangers_hear_nothing(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner, friend = await account(http, "owner"), await account(http, "friend")
    stranger = await account(http, "stranger")
    device = await device_of(http, owner)
    assert (await share(http, owner, device, friend)).status_code == 201
    owner_ws, friend_ws = await viewer_on(cluster.a, owner), await viewer_on(cluster.b, friend)
    stranger_a, stranger_b = (
        await viewer_on(cluster.a, stranger),
        await viewer_on(cluster.b, stranger),
    )
    cam = await camera_on(cluster.b, device)
    assert (await owner_ws.expect("device.presence"))["online"] is True
    sid = await negotiate(cam, owner_ws, device.id)
    friend_sid = await negotiate(cam, friend_ws, device.id)
    # Unsharing on instance A ends the friend's session held on instance B, on both sides.
    r = await http.delete(f"/api/v1/devices/{device.id}/shares/{friend.id}", headers=owner.headers)
    assert r.status_code == 204
    assert (await friend_ws.expect("session.end"))["reason"] == "access_revoked"
    assert (await cam.expect("session.end"))["session_id"] == friend_sid
    await owner_ws.send({"type": "session.end", "session_id": sid})
    assert (await cam.expect("session.end"))["session_id"] == sid
    # The camera reconnects through the other instance: the old connection is told to go.
    cam2 = await camera_on(cluster.a, device)
    assert (await cam.expect("go_away"))["reconnect_after_ms"] == 0
    await negotiate(cam2, owner_ws, device.id)
    await stranger_a.send({"type": "session.request", "id": "s", "device_id": device.id})
    assert (await stranger_a.recv())["error"]["code"] == "device_not_found"
    for peer in (stranger_a, stranger_b):
        await peer.quiet(0.5)
    assert [m["type"] for m in stranger_a.seen] == ["welcome", "status"]
    assert [m["type"] for m in stranger_b.seen] == ["welcome"]


@pytest.mark.timeout(120)
async def test_killing_an_instance_ends_its_sessions_and_cameras_move_to_the_other(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    view = await viewer_on(cluster.a, owner)
    cam = await camera_on(cluster.b, device)
    await negotiate(cam, view, device.id)
    started = time.monotonic()
    cluster.b.kill()
    got = await view.expect_all("session.end", "device.presence", timeout=PRESENCE_TTL_S + 8)
    assert got["session.end"]["reason"] == "device_offline"
    assert got["device.presence"]["online"] is False
    assert time.monotonic() - started < PRESENCE_TTL_S + 8
    cam = await camera_on(cluster.a, device)
    assert (await view.expect("device.presence"))["online"] is True
    await negotiate(cam, view, device.id)


@pytest.mark.timeout(120)
async def test_sigterm_tells_connections_to_go_away_and_exits_promptly(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    cam = await camera_on(cluster.b, device)
    others = [await camera_on(cluster.b, await device_of(http, owner)) for _ in range(20)]
    view = await viewer_on(cluster.b, owner)
    assert cluster.b.process is not None
    # Cameras leaving just before the signal: their leaving is still being carried out.
    await asyncio.gather(*(other.socket.close() for other in others))
    started = time.monotonic()
    cluster.b.process.send_signal(signal.SIGTERM)
    assert (await cam.expect("go_away"))["reason"] == "server_shutdown"
    assert (await view.expect("go_away"))["reconnect_after_ms"] >= 0
    assert await cam.closed_with() == 1001
    # uvicorn re-raises the signal after its clean shutdown: death by SIGTERM is the norm.
    assert await asyncio.to_thread(cluster.b.process.wait, 15) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    log = cluster.b.log.read_text()
    assert "cloud stopped" in log
    # The camera's leaving was carried out before the database went: recorded, no error.
    assert "Traceback" not in log
    listed = await http.get("/api/v1/devices", headers=owner.headers)
    assert [d["online"] for d in listed.json()["devices"]] == [False] * (1 + len(others))


@pytest.mark.timeout(120)
async def test_the_hub_recovers_by_itself_when_redis_restarts(
    cluster: Cluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    view = await viewer_on(cluster.a, owner)
    cam = await camera_on(cluster.b, device)
    await negotiate(cam, view, device.id)
    # Restart Redis on the same port; the cloud instances are not touched.
    stop(cluster.redis)
    await asyncio.sleep(1.0)
    cluster.redis = await asyncio.to_thread(start_redis, cluster.redis_port)
    deadline = time.monotonic() + 20
    while True:
        view2 = await viewer_on(cluster.a, owner)
        await view2.send({"type": "session.request", "id": "after", "device_id": device.id})
        try:
            created = await view2.expect("session.created", timeout=2)
            break
        except (TimeoutError, AssertionError):
            assert time.monotonic() < deadline, "routing did not come back after Redis restarted"
            await asyncio.sleep(0.5)
    sid = created["session_id"]
    await view2.send({"type": "session.offer", "session_id": sid, "sdp": "v=0 again"})
    assert (await cam.expect("session.offer"))["sdp"] == "v=0 again"
