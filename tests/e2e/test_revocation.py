"""Access that ends always ends (issue: revocation under faults), with real processes: two
cloud instances, one redis-server, one database server."""

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import Account, ActivatedDevice, share
from tests.e2e.cluster import (
    PRESENCE_TTL_S,
    Cluster,
    Instance,
    account,
    camera_hello,
    camera_on,
    device_of,
    negotiate,
    running_cluster,
    start_redis,
    viewer_on,
)
from tests.peers import Peer, connect
from tests.servers import secantus_process, stop

GRACE_S = 2.0  # the guarantee: within this of the DELETE returning, access has ended


async def routing_back(instance: Instance, who: Peer, device: ActivatedDevice) -> None:
    """Wait until sessions route again after Redis came back (the subscriber reconnects)."""
    deadline = time.monotonic() + 20
    while True:
        await who.send({"type": "session.request", "id": "back", "device_id": device.id})
        try:
            created = await who.expect("session.created", timeout=2)
            await who.send({"type": "session.end", "session_id": created["session_id"]})
            return
        except (TimeoutError, AssertionError):
            assert time.monotonic() < deadline, f"routing did not come back on {instance.name}"
            await asyncio.sleep(0.5)


async def reconnect(instance: Instance, who: Account) -> Peer:
    """A client connection once the instance's bus is back (refused with 1013 until then)."""
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(websockets.ConnectionClosed, AssertionError):
            return await viewer_on(instance, who)
        assert time.monotonic() < deadline, f"no client connection to {instance.name}"
        await asyncio.sleep(0.5)


def about(messages: list[dict[str, object]], device_id: str, sessions: set[str]) -> list[object]:
    return [
        m for m in messages if m.get("device_id") == device_id or m.get("session_id") in sessions
    ]


@pytest.mark.timeout(120)
async def test_a_share_revoked_and_a_camera_removed_while_redis_is_down_end_access_in_time(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner, friend = await account(http, "owner"), await account(http, "friend")
    porch, garage = await device_of(http, owner), await device_of(http, owner)
    assert (await share(http, owner, porch, friend)).status_code == 201
    porch_cam, garage_cam = await camera_on(cluster.b, porch), await camera_on(cluster.a, garage)
    friend_a, friend_b = await viewer_on(cluster.a, friend), await viewer_on(cluster.b, friend)
    owner_a, owner_b = await viewer_on(cluster.a, owner), await viewer_on(cluster.b, owner)
    across = await negotiate(porch_cam, friend_a, porch.id)  # across instances
    revoked = {across, await negotiate(porch_cam, friend_b, porch.id)}  # and on one
    garage_sid = await negotiate(garage_cam, owner_b, garage.id)
    for peer in (friend_a, friend_b, owner_a, owner_b, porch_cam, garage_cam):
        await peer.quiet(0.3)

    stop(cluster.redis)
    # An instance that loses the bus closes its user connections (go_away resync, 4503):
    # they may miss pushes. Cameras stay, and so do their sessions whose viewer was on the
    # other instance (the end cannot cross the bus): only the revocation can end those.
    for peer in (friend_a, friend_b, owner_a, owner_b):
        assert await peer.closed_with(timeout=GRACE_S) == 4503

    # Revoked on instance A: B holds the camera.
    r = await http.delete(f"/api/v1/devices/{porch.id}/shares/{friend.id}", headers=owner.headers)
    acknowledged = time.monotonic()
    assert r.status_code == 204, r.text
    camera_ends = {}
    while set(camera_ends) != revoked:
        end = await porch_cam.expect("session.end", timeout=GRACE_S)
        camera_ends[end["session_id"]] = end["reason"]
    # The one across instances lived on until the revocation ended it.
    assert camera_ends[across] == "access_revoked", camera_ends
    assert time.monotonic() - acknowledged < GRACE_S

    # Removed through instance B: the camera is held by A.
    async with httpx.AsyncClient(base_url=cluster.b.http, timeout=10) as http_b:
        r = await http_b.delete(f"/api/v1/devices/{garage.id}", headers=owner.headers)
    acknowledged = time.monotonic()
    assert r.status_code == 204, r.text
    assert await garage_cam.closed_with(timeout=GRACE_S) == 4404
    assert time.monotonic() - acknowledged < GRACE_S
    assert garage_sid

    # Redis back: nothing about the porch reaches the friend any more, whoever speaks.
    cluster.redis = await asyncio.to_thread(start_redis, cluster.redis_port)
    owner_a = await reconnect(cluster.a, owner)
    await routing_back(cluster.a, owner_a, porch)
    for sid in revoked:
        ice = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
        await porch_cam.send(
            {"type": "session.ice", "id": "late", "session_id": sid, "candidate": ice}
        )
        status = await porch_cam.expect("status")
        assert status["error"]["code"] == "unknown_session"
    friend_a, friend_b = await reconnect(cluster.a, friend), await reconnect(cluster.b, friend)
    await friend_a.send({"type": "session.request", "id": "again", "device_id": porch.id})
    assert (await friend_a.expect("status"))["error"]["code"] == "device_not_found"
    await friend_b.quiet(1.0)
    for peer in (friend_a, friend_b):
        assert about(peer.seen, porch.id, revoked) == [], peer.seen
    listed = await http.get("/api/v1/devices", headers=friend.headers)
    assert listed.json()["devices"] == []
    # The removed camera cannot come back with its old key.
    assert await (await camera_hello(cluster.b, garage)).closed_with() == 4401


@pytest.mark.timeout(120)
async def test_a_hello_while_redis_is_down_is_refused_with_1013_and_no_traceback(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    stop(cluster.redis)
    assert await (await camera_hello(cluster.a, device)).closed_with() == 1013
    viewer = await connect(cluster.b.ws, "/ws/v1/client", owner.tokens["access_token"])
    assert await viewer.closed_with() == 1013
    cluster.redis = await asyncio.to_thread(start_redis, cluster.redis_port)
    deadline = time.monotonic() + 20
    while True:  # the instances' subscribers reconnect with backoff
        with contextlib.suppress(websockets.ConnectionClosed):
            if (await (await camera_hello(cluster.a, device)).recv())["type"] == "welcome":
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    # The running_cluster fixture checks both logs for tracebacks on the way out.


@pytest.fixture
def own_db(tmp_path: Path) -> Iterator[tuple[Cluster, subprocess.Popen[bytes]]]:
    """A cluster on a database server of its own, which the test may pause."""
    with (
        secantus_process(tmp_path / "db") as (url, db),
        running_cluster(url, tmp_path) as cluster,
    ):
        yield cluster, db


async def online(instance: Instance, owner: Account) -> list[bool]:
    async with httpx.AsyncClient(base_url=instance.http, timeout=10) as http:
        listed = await http.get("/api/v1/devices", headers=owner.headers)
    return [d["online"] for d in listed.json()["devices"]]


async def all_online(cluster: Cluster, owner: Account, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(await online(cluster.a, owner) + await online(cluster.b, owner)):
        assert time.monotonic() < deadline, "presence stuck at offline"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_cameras_that_drop_during_a_database_pause_and_reconnect_end_online(
    own_db: tuple[Cluster, subprocess.Popen[bytes]],
) -> None:
    cluster, db = own_db
    async with httpx.AsyncClient(base_url=cluster.a.http, timeout=10) as http:
        owner = await account(http, "owner")
        devices = [await device_of(http, owner) for _ in range(6)]
    homes = [cluster.a if i % 2 else cluster.b for i in range(len(devices))]
    cameras = [await camera_on(home, d) for home, d in zip(homes, devices, strict=True)]
    await all_online(cluster, owner)

    db.send_signal(signal.SIGSTOP)
    try:
        await asyncio.gather(*(camera.socket.close() for camera in cameras))
        # Each reconnects at once, half to the other instance, half to the same one; their
        # hellos wait for the database like the old connections' leaving does.
        again = [
            await camera_hello(cluster.b if i % 3 else home, d)
            for i, (home, d) in enumerate(zip(homes, devices, strict=True))
        ]
        await asyncio.sleep(3)
    finally:
        db.send_signal(signal.SIGCONT)
    for camera in again:
        assert (await camera.expect("welcome", timeout=20))["role"] == "device"
    await all_online(cluster, owner)
    await asyncio.sleep(2)  # whatever was still on its way has landed: still online
    assert await online(cluster.a, owner) == [True] * len(devices)
    assert await online(cluster.b, owner) == [True] * len(devices)


@pytest.mark.timeout(120)
async def test_the_presence_refresh_repairs_the_databases_view(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    camera = await camera_on(cluster.a, device)
    await all_online(cluster, owner)
    with MongoClient(cluster.mongodb_url) as client:
        devices = client[cluster.database]["devices"]
        # The refresh (every TTL / 4) may repair it before the API could show it offline:
        # the write itself is what must have happened.
        tampered = devices.update_one({"_id": ObjectId(device.id)}, {"$set": {"online": False}})
        assert tampered.modified_count == 1
        await all_online(cluster, owner, timeout=PRESENCE_TTL_S)
        assert devices.find_one({"_id": ObjectId(device.id)})["online"] is True
    await camera.socket.close()
