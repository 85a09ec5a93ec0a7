""" "Why relayed?" end to end with real processes: cloud, redis-server, coturn, the camera agent
and the Python viewer (the test process). Both report ``session.stats`` once connected; the
owner reads each session's route and reason with GET /api/v1/devices/{id}/sessions, and
nobody else can (docs/protocol.md, "Session statistics").

As in ``test_live_video``, host candidates are on loopback only: the direct session is
host to host, and the relay-only one goes through coturn over UDP.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import httpx
import pytest

from device_sim.viewer import Viewer
from peer.network import use_host_addresses
from tests.conftest import PASSWORD
from tests.e2e.test_live_video import (
    TURN_SECRET,
    Owner,
    Stack,
    cloud_env,
    onboarded_camera,
    simulator,
)
from tests.servers import cloud_process, coturn_server, redis_server, stop


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


@pytest.fixture(scope="module")
def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stats")
    with (
        redis_server() as redis_url,
        coturn_server(TURN_SECRET, tmp / "coturn.log") as turn_port,
        cloud_process(
            cloud_env(mongodb_url, tmp, redis_url, turn_port, TURN_SECRET), tmp / "cloud.log"
        ) as url,
    ):
        yield Stack(url, turn_port, tmp)


async def reported(
    owner: Owner, device_id: str, count: int, timeout_s: float = 15
) -> list[dict[str, Any]]:
    """The camera's ``count`` latest sessions once both sides of each have reported."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=owner.url, timeout=15) as http:
        while True:
            r = await http.get(f"/api/v1/devices/{device_id}/sessions", headers=owner.headers)
            assert r.status_code == 200, r.text
            sessions: list[dict[str, Any]] = r.json()["sessions"]
            done = [s for s in sessions if s["viewer_stats"] and s["camera_stats"]]
            if len(sessions) >= count and len(done) >= count:
                return sessions
            assert time.monotonic() < deadline, json.dumps(sessions, indent=1)
            await asyncio.sleep(0.3)


@pytest.mark.timeout(180)
async def test_each_session_says_why_it_went_direct_or_through_turn_to_the_owner_only(
    stack: Stack,
) -> None:
    owner = await Owner.register(stack.url)
    friend, stranger = await Owner.register(stack.url), await Owner.register(stack.url)
    state = await onboarded_camera(stack, owner, "hall")
    device_id = json.loads(state.read_text())["device_id"]
    camera = simulator(
        "run", "--state", str(state), "--size", "320x240", log=stack.tmp / "hall.log"
    )
    try:
        await owner.online()
        async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
            direct = await viewer.watch(device_id)
            assert direct.stats is not None
            assert direct.stats["route"] == "p2p"
            await direct.end()
            relayed = await viewer.watch(device_id, relay_only=True)
            assert relayed.stats is not None
            assert relayed.stats["route"] == "turn"
            await relayed.end()
        turn, p2p = await reported(owner, device_id, 2)
    finally:
        stop(camera)
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        owner_id = (await http.get("/api/v1/me", headers=owner.headers)).json()["id"]

    assert (p2p["session_id"], turn["session_id"]) == (direct.session_id, relayed.session_id)
    for session, watch in ((p2p, direct), (turn, relayed)):
        assert (session["viewer"], session["viewer_id"]) == ("user", owner_id)
        assert session["end_reason"] == "peer_hangup"  # the viewer hung up: the camera's view
        assert session["started_at"] <= session["ended_at"]
        sent = {k: v for k, v in (watch.stats or {}).items() if k not in ("type", "session_id")}
        assert session["viewer_stats"] == {**sent, "reported_at": ANY}
        assert 0 <= session["ice_ms"] <= session["ttff_ms"]
        assert session["ice_ms"] == session["viewer_stats"]["ice_ms"]
        assert session["camera_stats"]["ttff_ms"] is None
        assert session["camera_stats"]["ice_ms"] >= 0

    # Direct, host to host on loopback, as both sides see it.
    assert (p2p["route"], p2p["reason"]) == ("p2p", "Direct, same network")
    for side in ("viewer_stats", "camera_stats"):
        stats = p2p[side]
        assert (stats["route"], stats["protocol"]) == ("p2p", "udp")
        assert (stats["local_candidate_type"], stats["remote_candidate_type"]) == ("host", "host")

    # Relay-only: the viewer's own candidate is coturn's relayed address (over UDP). The
    # camera, which has a TURN allocation of its own, reports the pair it nominated: one of
    # its ends is a relayed address too (its own, or the viewer's, announced in the offer or
    # learnt from the checks as prflx).
    assert (turn["route"], turn["reason"]) == (
        "turn",
        "Relayed by TURN: this network blocks direct connections",
    )
    viewer_side, camera_side = turn["viewer_stats"], turn["camera_stats"]
    assert (viewer_side["local_candidate_type"], viewer_side["protocol"]) == ("relay", "udp")
    assert viewer_side["remote_candidate_type"] in ("host", "relay")  # which pair won first
    assert camera_side["route"] == "turn"
    assert camera_side["local_candidate_type"] in ("host", "relay")
    assert camera_side["remote_candidate_type"] in ("host", "relay", "prflx")

    # A viewer the camera is shared with may watch it, not read its sessions; a stranger
    # learns nothing, not even that it exists.
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        shared = await http.post(
            f"/api/v1/devices/{device_id}/shares",
            json={"email": friend.email, "role": "viewer"},
            headers=owner.headers,
        )
        assert shared.status_code == 201, shared.text
        path = f"/api/v1/devices/{device_id}/sessions"
        as_friend = await http.get(path, headers=friend.headers)
        assert (as_friend.status_code, as_friend.json()["error"]["code"]) == (403, "forbidden")
        as_stranger = await http.get(path, headers=stranger.headers)
        assert (as_stranger.status_code, as_stranger.json()["error"]["code"]) == (
            404,
            "device_not_found",
        )
