"""Two cloud instances in separate processes, one redis-server, one database server: the
pieces the cross-instance suites share."""

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.identity import assertion, public_key_b64
from tests.conftest import PASSWORD, Account, ActivatedDevice, unique_email
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
    mongodb_url: str
    database: str


@contextmanager
def running_cluster(mongodb_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Instances a and b on one redis-server and the database at ``mongodb_url``.

    On the way out it checks that neither instance logged a traceback.
    """
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
        c = Cluster(a, b, port, redis, mongodb_url, env["MONGODB_DATABASE"])
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


async def camera_hello(instance: Instance, device: ActivatedDevice) -> Peer:
    """The camera's connection with its hello sent (a fresh assertion), nothing read yet."""
    token = assertion(device.private_key, device.id, PUBLIC)
    return await connect(instance.ws, "/ws/v1/device", token)


async def camera_on(instance: Instance, device: ActivatedDevice) -> Peer:
    peer = await camera_hello(instance, device)
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
    assert (await view.expect("session.ice"))["candidate"] is None
    return sid
