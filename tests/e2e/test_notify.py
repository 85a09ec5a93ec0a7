"""Web Push and webhooks end to end, with real processes: the cloud (``python -m cloud``),
redis-server, a relay node and a simulated camera with a motion episode; the push service
is tests/cloud/notify/receivers.py's RFC 8030 server on loopback, which verifies every
VAPID JWT and decrypts every message with the subscription's private key."""

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from bson import ObjectId
from pymongo import MongoClient
from standardwebhooks import Webhook as Verifier

from peer.network import use_host_addresses
from tests.cloud.notify.receivers import PushService, WebhookReceiver
from tests.conftest import PASSWORD, Account, unique_email
from tests.e2e.cluster import device_of
from tests.e2e.test_live_video import Owner, onboarded_camera, simulator
from tests.e2e.test_relay import RELAY_SECRET, RelayStack
from tests.peers import connect
from tests.servers import free_port, redis_server, start_cloud, stop

NOTIFY_ENV = {
    "NOTIFY_RETRY_SCHEDULE_S": "0.5,1",
    "NOTIFY_COOLDOWN_S": "0",
}


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


class Cloud:
    """One ``python -m cloud`` process on a fixed port that a test can stop and start again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PUBLIC_URL": self.url, **env}
        self.log = log
        self.process: Any = None

    def start(self) -> None:
        self.process = start_cloud(self.env, self.log, self.port, "--host", "127.0.0.1")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("notify")
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": "notify_" + secrets.token_hex(4),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
        "RELAY_SECRET": RELAY_SECRET,
        "PRESENCE_TTL_S": "3",
        **NOTIFY_ENV,
    }
    with redis_server() as redis_url:
        process = Cloud({**env, "REDIS_URL": redis_url}, tmp / "cloud.log")
        process.start()
        try:
            yield process
        finally:
            process.stop()
    text = (tmp / "cloud.log").read_text()
    assert "Traceback" not in text, text[text.find("Traceback") - 1500 :][:4000]


class User:
    def __init__(self, email: str, user_id: str, headers: dict[str, str]) -> None:
        self.email, self.id, self.headers = email, user_id, headers


async def register(http: httpx.AsyncClient, prefix: str) -> User:
    email = unique_email(prefix)
    created = await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201, created.text
    tokens = (
        await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    ).json()
    return User(email, created.json()["id"], {"Authorization": f"Bearer {tokens['access_token']}"})


async def subscribe(http: httpx.AsyncClient, who: User, service: PushService) -> Any:
    browser, subscription = service.subscribe()
    r = await http.post("/api/v1/push/subscriptions", json=subscription, headers=who.headers)
    assert r.status_code == 201, r.text
    return browser


async def arrived(service: PushService, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(service.messages) < count:
        assert time.monotonic() < deadline, [m.payload for m in service.messages]
        await asyncio.sleep(0.2)


@pytest.mark.timeout(240)
async def test_a_relay_nodes_event_thread_pushes_new_then_end_and_signs_webhooks(
    cloud: Cloud, tmp_path: Path
) -> None:
    push, hooks = PushService(), WebhookReceiver()
    await push.start()
    await hooks.start()
    stack = RelayStack(cloud.url, tmp_path, "", "")
    relay_id = f"relay-{secrets.token_hex(3)}"
    stack.start_relay(relay_id, yolo=False)
    camera = None
    try:
        async with httpx.AsyncClient(base_url=cloud.url, timeout=15) as http:
            owner, friend, stranger = (
                await register(http, "owner"),
                await register(http, "friend"),
                await register(http, "stranger"),
            )
            mine = await subscribe(http, owner, push)
            theirs = await subscribe(http, friend, push)
            nobody = await subscribe(http, stranger, push)
            hook = (
                await http.post(
                    "/api/v1/webhooks", json={"url": hooks.url("owner")}, headers=owner.headers
                )
            ).json()
            scanner = Owner(cloud.url, owner.email, owner.headers)
            state = await onboarded_camera(stack, scanner, "garden")  # type: ignore[arg-type]
            device_id = json.loads(state.read_text())["device_id"]
            shared = await http.post(
                f"/api/v1/devices/{device_id}/shares",
                json={"email": friend.email, "role": "viewer"},
                headers=owner.headers,
            )
            assert shared.status_code == 201, shared.text
            camera = simulator(
                "run",
                "--state",
                str(state),
                "--size",
                "320x240",
                "--motion",
                "10:4",
                log=tmp_path / "camera.log",
            )
            await arrived(push, 4, timeout=90)  # owner and friend: new, then end
            await asyncio.sleep(1.0)
            assert push.refused == []
            assert push.of(nobody) == []
            for browser in (mine, theirs):
                got = [m.payload for m in push.of(browser)]
                assert [p["state"] for p in got] == ["new", "end"], got
                assert got[0]["tag"] == got[1]["tag"]
                assert got[0]["title"] == got[1]["title"] == "Motion at Garden"
                assert got[0]["renotify"] is True
                assert got[1]["renotify"] is False
                assert got[0]["url"] == f"/#/devices/{device_id}"
                assert got[0]["image"] is not None  # the snapshot, by its signed URL alone
                if got[0]["image"]:
                    image = urlsplit(got[0]["image"])
                    picture = await http.get(f"{image.path}?{image.query}")
                    assert picture.status_code == 200
                    assert picture.content.startswith(b"\xff\xd8\xff")
            assert push.of(mine)[0].claims["aud"] == push.origin
            event = await http.get(
                f"/api/v1/events/{push.of(mine)[0].payload['event_id']}", headers=owner.headers
            )
            assert event.json()["thread_id"] == push.of(mine)[0].payload["tag"]
            assert event.json()["state"] == "end"
            deadline = time.monotonic() + 10
            while not any(h.body and b'"event.end"' in h.body for h in hooks.of("owner")):
                assert time.monotonic() < deadline, hooks.hits
                await asyncio.sleep(0.2)
            verifier = Verifier(hook["secret"])
            types = [verifier.verify(h.body, h.headers)["type"] for h in hooks.of("owner")]
            assert types[0] == "event.new"
            assert types[-1] == "event.end"
    finally:
        if camera is not None:
            stop(camera)
        for process in stack.relays.values():
            stop(process)
        await push.stop()
        await hooks.stop()


def deliveries(cloud: Cloud) -> list[dict[str, Any]]:
    """Every delivery in the outbox, with its notification's type."""
    with MongoClient(cloud.env["MONGODB_URL"]) as client:
        db = client[cloud.env["MONGODB_DATABASE"]]
        found = db["notify_outbox"].find({}, {"type": 1, "deliveries": 1})
        return [{**d, "type": n["type"]} for n in found for d in n["deliveries"]]


@pytest.mark.timeout(180)
async def test_pushes_queued_when_the_cloud_stops_are_delivered_after_it_starts_again(
    cloud: Cloud,
) -> None:
    push = PushService()  # not started: the push service is down
    async with httpx.AsyncClient(base_url=cloud.url, timeout=15) as http:
        owner = await register(http, "owner")
        browser = await subscribe(http, owner, push)
        # The test plays the relay node: it connects, then reports a thread over HTTPS.
        relay = await connect(
            cloud.url.replace("http", "ws"), "/ws/v1/relay", f"relay-restart:{RELAY_SECRET}"
        )
        assert (await relay.recv())["type"] == "welcome"
        device_id = await a_device(http, owner)
        started = time.time() - 5
        for state in ("new", "end"):
            report = {
                "device_id": device_id,
                "thread_id": "restart-1",
                "kind": "person",
                "state": state,
                "score": 0.9,
                "started_at": _iso(started),
                **({"ended_at": _iso(started + 9)} if state == "end" else {}),
            }
            r = await http.post(
                "/api/v1/relays/events",
                json=report,
                headers={"Authorization": f"Bearer relay-restart:{RELAY_SECRET}"},
            )
            assert r.status_code == 200, r.text
        await relay.socket.close()
    await asyncio.sleep(2.0)  # the new push is tried and fails (connection refused)
    mine = [d for d in deliveries(cloud) if d["user_id"] == ObjectId(owner.id)]
    assert sorted(d["type"] for d in mine) == ["event.end", "event.new"]
    new = next(d for d in mine if d["type"] == "event.new")
    assert new["status"] == "failed"
    assert new["attempts"]
    cloud.stop()
    mine = [d for d in deliveries(cloud) if d["user_id"] == ObjectId(owner.id)]
    assert all(d["status"] in ("pending", "failed") for d in mine), mine
    await push.start()
    try:
        cloud.start()
        await arrived(push, 2, timeout=30)
        await asyncio.sleep(1.0)
        got = [m.payload for m in push.of(browser)]
        assert [p["state"] for p in got] == ["new", "end"]
        assert {p["tag"] for p in got} == {"restart-1"}
        assert got[0]["title"] == "Person at Porch"
        assert got[1]["body"] == "Ended after 9 s"
        mine = [d for d in deliveries(cloud) if d["user_id"] == ObjectId(owner.id)]
        assert all(d["status"] == "delivered" for d in mine), mine
    finally:
        await push.stop()


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def a_device(http: httpx.AsyncClient, owner: User) -> str:
    account = Account(owner.email, owner.id, {"access_token": owner.headers["Authorization"][7:]})
    return (await device_of(http, account)).id
