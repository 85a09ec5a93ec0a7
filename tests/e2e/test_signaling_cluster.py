"""Two cloud instances in separate processes, one Redis, one SecantusDB: routing across them."""

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from cloud.signaling.deliveries import CLOSE_RESYNC
from tests.conftest import share
from tests.e2e.cluster import (
    PRESENCE_TTL_S,
    Cluster,
    account,
    camera_on,
    device_of,
    negotiate,
    start_redis,
    viewer_on,
)
from tests.peers import Peer
from tests.servers import stop


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


async def told_of_offline(view: Peer, within_s: float) -> str:
    """How ``view`` learns that the camera went offline: the push ("delivered"), or a close
    with CLOSE_RESYNC after a ``go_away`` ("closed"); TimeoutError when neither comes."""
    try:
        async with asyncio.timeout(within_s):
            while True:
                message = await view.recv(timeout=within_s)
                if message["type"] == "device.presence" and message["online"] is False:
                    return "delivered"
                if message["type"] == "go_away":
                    assert message["reason"] == "resync"
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, exc
        assert exc.rcvd.code == CLOSE_RESYNC, exc
        return "closed"


@pytest.mark.timeout(120)
async def test_a_push_published_while_redis_restarts_is_delivered_or_its_client_is_told(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    """Issue 16, soak finding 1: pub/sub loses what is published while a subscriber is away;
    the clients of every instance that lost its subscription are closed (CLOSE_RESYNC) so
    that the app reconnects and reads the state again, never left to miss it silently.
    Reconnecting works once Redis is back."""
    owner = await account(http, "owner")
    device = await device_of(http, owner)
    views = [await viewer_on(cluster.a, owner), await viewer_on(cluster.b, owner)]
    cam = await camera_on(cluster.a, device)
    for view in views:
        assert (await view.expect("device.presence"))["online"] is True
    stop(cluster.redis)
    await cam.socket.close()
    # The database says offline once instance A carried out the camera's leaving, whose
    # push it published while Redis was down.
    deadline = time.monotonic() + 20
    while True:
        listed = await http.get("/api/v1/devices", headers=owner.headers)
        if listed.json()["devices"][0]["online"] is False:
            break
        assert time.monotonic() < deadline, "the camera's leaving was not recorded"
        await asyncio.sleep(0.2)
    cluster.redis = await asyncio.to_thread(start_redis, cluster.redis_port)
    outcomes = [await told_of_offline(view, within_s=20) for view in views]
    assert set(outcomes) <= {"delivered", "closed"}
    # Reconnected (a hello is refused with 1013 until B's subscription is back), the app
    # reads the state it may have missed.
    deadline = time.monotonic() + 20
    while True:
        try:
            again = await viewer_on(cluster.b, owner)
            break
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, exc
            assert exc.rcvd.code == 1013, exc
            assert time.monotonic() < deadline, "no reconnection once Redis was back"
            await asyncio.sleep(0.5)
    listed = await http.get("/api/v1/devices", headers=owner.headers)
    assert listed.json()["devices"][0]["online"] is False
    await again.send({"type": "ping", "id": "p"})
    assert (await again.expect("pong"))["id"] == "p"
