"""Nothing lost while the database is away (issue 16 item 2), with real processes: the cloud,
a SecantusDB server of its own (paused with SIGSTOP), redis-server, a relay node and a camera
agent whose motion episode happens while the database is paused.

During the pause every HTTP request answers 503 with ``Retry-After`` within a few seconds
(never 500, never a hang) and a WebSocket hello is closed with 1013; the relay node keeps
its event reports and its clip and retries them. After SIGCONT the thread (new and end) and
its clip are stored and pushed to the owner's socket once each, and the cloud serves as before.
"""

import asyncio
import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from peer.network import use_host_addresses
from tests.e2e.test_analysis import Camera
from tests.e2e.test_live_video import Owner, onboarded_camera, simulator
from tests.e2e.test_relay import RELAY_SECRET, RelayStack
from tests.peers import Peer, connect
from tests.servers import cloud_process, redis_server, secantus_process, stop

PAUSE_S = 20.0
SLOWEST_S = 8.0  # what a request may take while the database is away (its timeouts: 3-5 s)


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


@pytest.fixture
def outage_stack(tmp_path: Path) -> Iterator[tuple[RelayStack, subprocess.Popen[bytes]]]:
    """The cloud on a database server of its own (the test pauses it), and a relay node."""
    database = "outage_" + secrets.token_hex(4)
    with secantus_process(tmp_path / "db") as (mongodb_url, db), redis_server() as redis_url:
        env = {
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": database,
            "REDIS_URL": redis_url,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": str(tmp_path),
            "RELAY_SECRET": RELAY_SECRET,
            "PRESENCE_TTL_S": "10",
        }
        with cloud_process(env, tmp_path / "cloud.log") as url:
            stack = RelayStack(url, tmp_path, database, mongodb_url)
            stack.start_relay("relay-outage", yolo=False)
            try:
                deadline = time.monotonic() + 60
                while "relay-outage" not in stack.online_relays():
                    assert time.monotonic() < deadline, "the relay did not register"
                    time.sleep(0.3)
                yield stack, db
            finally:
                for process in stack.relays.values():
                    stop(process)
                db.send_signal(signal.SIGCONT)


async def timed_get(url: str, path: str, headers: dict[str, str]) -> tuple[int, float, str | None]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get(path, headers=headers)
    return r.status_code, time.monotonic() - started, r.headers.get("retry-after")


async def hello_closes_with(url: str, token: str) -> int | None:
    """The close code of a client hello (None: welcomed)."""
    peer = await connect(url.replace("http", "ws", 1), "/ws/v1/client", token)
    try:
        message = await peer.recv(timeout=15)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    assert message["type"] == "welcome", message
    await peer.socket.close()
    return None


async def pushes(peer: Peer, seconds: float) -> list[dict[str, Any]]:
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await peer.recv(timeout=left)
        except TimeoutError:
            break
        if message["type"] == "event":
            found.append(message)
    return found


@pytest.mark.timeout(150)
async def test_a_motion_episode_during_a_database_pause_is_stored_and_pushed_once_after_it(
    outage_stack: tuple[RelayStack, subprocess.Popen[bytes]],
) -> None:
    stack, db = outage_stack
    owner = await Owner.register(stack.url)
    token = owner.headers["Authorization"].removeprefix("Bearer ")
    state = await onboarded_camera(stack, owner, "outage")  # type: ignore[arg-type]
    camera = Camera(stack, owner, json.loads(state.read_text())["device_id"])
    # The motion starts 14 s after the agent does, 6 s long: the thread opens and ends, and
    # its clip is finished, all while the database is paused.
    agent = simulator(
        "run", "--state", str(state), "--size", "320x240", "--motion", "14:6",
        log=stack.tmp / "camera.log",
    )  # fmt: skip
    started = time.monotonic()
    try:
        await camera.analysis("active", timeout=12)
        watcher = await connect(stack.url.replace("http", "ws", 1), "/ws/v1/client", token)
        assert (await watcher.recv())["type"] == "welcome"
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - started)))

        db.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        try:
            answers = []
            hello = None
            while time.monotonic() - paused < PAUSE_S - SLOWEST_S:
                paths = ("/api/v1/devices", "/api/v1/events", f"/api/v1/devices/{camera.id}")
                timed = await asyncio.gather(
                    *(timed_get(stack.url, p, owner.headers) for p in paths)
                )
                answers += [(path, *answer) for path, answer in zip(paths, timed, strict=True)]
                if hello is None and time.monotonic() - paused > 6:  # past the sign-in cache
                    hello = await hello_closes_with(stack.url, token)
                await asyncio.sleep(0.5)
            await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused)))
        finally:
            db.send_signal(signal.SIGCONT)
        resumed = time.monotonic()

        assert [a for a in answers if a[1] != 503] == [], answers
        assert all(retry_after is not None and int(retry_after) >= 1 for *_, retry_after in answers)
        assert max(took for _, _, took, _ in answers) < SLOWEST_S, answers
        assert hello == 1013  # try again later

        # The cloud serves again at once, and the thread and its clip arrive.
        status, took, _ = await timed_get(stack.url, "/api/v1/devices", owner.headers)
        assert (status, took < 3) == (200, True)
        assert await hello_closes_with(stack.url, token) is None
        thread = await camera.thread(0, ended=True, timeout=30)
        clip, _ = await camera.clip(thread["id"], timeout=30)
        recovered = time.monotonic() - resumed
        assert clip["state"] == "ready"
        assert len(await camera.threads()) == 1

        # Pushed once each: the new, the end, the clip (a push naming it); no repeat.
        got = await pushes(watcher, 3.0)
        mine = [
            (p["state"], p.get("clip_id")) for p in got if p["thread_id"] == thread["thread_id"]
        ]
        assert len(mine) == len(set(mine)), mine
        states = [s for s, _ in mine]
        assert states.count("new") == 1 or (states.count("new") == 2 and mine[0][1] is None)
        assert "end" in states
        assert states == sorted(states, key=["new", "update", "end"].index), mine
        assert clip["id"] in {c for _, c in mine}
        await watcher.socket.close()
    finally:
        stop(agent)

    cloud_log = (stack.tmp / "cloud.log").read_text()
    relay_log = stack.relay_log("relay-outage")
    # The node tried during the pause and was told 503, never 500.
    assert re.search(r"POST /api/v1/relays/events 503", cloud_log), cloud_log[-3000:]
    assert not re.search(r"(GET|POST|PUT|PATCH|DELETE) \S+ 500 ", cloud_log)
    # Nothing failed as a bug would (the outage is logged as warnings, some with their
    # exception): no error line, no unhandled request.
    errors = re.findall(r".* (?:ERROR|CRITICAL) .*", cloud_log)
    assert errors == [], errors[:5]
    assert "unhandled error" not in cloud_log
    assert "not delivered" in relay_log
    assert "event refused" not in relay_log
    print(f"recovered {recovered:.1f} s after the pause; {len(answers)} requests during it; {mine}")


async def request_answer(peer: Peer, request_id: str, device_id: str) -> dict[str, Any]:
    """The cloud's answer to a session.request (30 s: longer than any database timeout)."""
    await peer.send({"type": "session.request", "id": request_id, "device_id": device_id})
    while True:
        message = await peer.recv(timeout=30)
        if message.get("id") == request_id:
            return message


@pytest.mark.timeout(120)
async def test_a_session_request_during_a_database_pause_is_answered_service_unavailable(
    tmp_path: Path,
) -> None:
    """Issue 16: the request reads the database (may this viewer see the camera?). While the
    database is away the viewer is told so, `status` with `service_unavailable`, instead of
    waiting for an answer that never comes; once it is back the same request is served."""
    env = {"JWT_SECRET": secrets.token_urlsafe(48), "DATA_DIR": str(tmp_path)}
    with secantus_process(tmp_path / "db") as (mongodb_url, db), redis_server() as redis_url:
        env |= {"MONGODB_URL": mongodb_url, "REDIS_URL": redis_url}
        env["MONGODB_DATABASE"] = "request_" + secrets.token_hex(4)
        with cloud_process(env, tmp_path / "cloud.log") as url:
            owner = await Owner.register(url)
            token = owner.headers["Authorization"].removeprefix("Bearer ")
            viewer = await connect(url.replace("http", "ws", 1), "/ws/v1/client", token)
            assert (await viewer.recv())["type"] == "welcome"
            unknown = "6b" + secrets.token_hex(11)  # no such device: the database says so
            before = await request_answer(viewer, "before", unknown)
            assert before["error"]["code"] == "device_not_found", before
            db.send_signal(signal.SIGSTOP)
            try:
                during = await request_answer(viewer, "during", unknown)
            finally:
                db.send_signal(signal.SIGCONT)
            assert during["type"] == "status", during
            assert during["ok"] is False
            assert during["error"]["code"] == "service_unavailable", during
            after = await request_answer(viewer, "after", unknown)
            assert after["error"]["code"] == "device_not_found", after
            await viewer.socket.close()
    cloud_log = (tmp_path / "cloud.log").read_text()
    assert "Traceback" not in cloud_log
