"""GET /api/v1/devices/{id}/sessions: a camera's recent sessions and why each took its route
(docs/protocol.md, "Session statistics"), for its owner only."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from beanie import PydanticObjectId

from cloud.devices.sessions import (
    HOLE_PUNCHING,
    RELAY_NODE,
    SAME_NETWORK,
    TURN_TCP,
    TURN_UDP,
    route_and_reason,
)
from cloud.signaling.models import SessionRecord, SideStats
from tests.cloud.signaling.test_ws import open_session
from tests.conftest import ActivateDevice, MakeAccount, share
from tests.peers import Peer, camera, viewer

NOW = datetime(2026, 1, 31, 8, 0, tzinfo=UTC)


def side(
    local: str, remote: str, protocol: str = "udp", route: str | None = None, **more: int
) -> SideStats:
    through_turn = "relay" in (local, remote)
    return SideStats.model_validate(
        {
            "route": route or ("turn" if through_turn else "p2p"),
            "local_candidate_type": local,
            "remote_candidate_type": remote,
            "protocol": protocol,
            "ice_ms": 50,
            "reported_at": NOW,
            **more,
        }
    )


# the route's reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewer_side", "camera_side", "route", "reason"),
    [
        (side("host", "host"), side("host", "host"), "p2p", SAME_NETWORK),
        # a browser's mDNS-hidden host address: the camera sees it as prflx; the viewer wins
        (side("host", "host"), side("host", "prflx"), "p2p", SAME_NETWORK),
        (None, side("host", "host"), "p2p", SAME_NETWORK),
        (side("srflx", "host"), None, "p2p", HOLE_PUNCHING),
        (side("host", "srflx"), side("srflx", "host"), "p2p", HOLE_PUNCHING),
        (side("prflx", "host"), None, "p2p", HOLE_PUNCHING),
        (None, side("host", "prflx"), "p2p", HOLE_PUNCHING),
        (side("relay", "host"), side("host", "relay"), "turn", TURN_UDP),
        (side("relay", "host", "tcp"), side("host", "relay"), "turn", TURN_TCP),
        (side("host", "relay"), side("relay", "host", "tcp"), "turn", TURN_TCP),
        # the remote's protocol says nothing of its hop to the TURN server
        (side("host", "relay", "tcp"), None, "turn", TURN_UDP),
        # the viewer's TURN address reached the camera late, as prflx: TURN all the same
        (side("relay", "srflx"), side("host", "prflx"), "turn", TURN_UDP),
        (None, side("relay", "relay"), "turn", TURN_UDP),
        (None, None, "p2p", None),
    ],
)
def test_the_reason_for_a_direct_or_turn_route(
    viewer_side: SideStats | None, camera_side: SideStats | None, route: str, reason: str | None
) -> None:
    assert route_and_reason("p2p", viewer_side, camera_side) == (route, reason)


def test_the_reason_for_a_relay_node_is_the_relay_node() -> None:
    for viewer_side in (None, side("host", "host", route="relay"), side("relay", "host", "tcp")):
        assert route_and_reason("relay", viewer_side, None) == ("relay", RELAY_NODE)


# the route ----------------------------------------------------------------------------


async def pinged(peer: Peer) -> None:
    """Frames are handled in order: once the pong is back, what came before is stored."""
    await peer.send({"type": "ping", "id": "sync"})
    await peer.expect("pong")


async def test_the_owner_sees_each_sides_report_and_the_reason(
    client: httpx.AsyncClient,
    ws_base: str,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    sid = await open_session(cam, view, device.id)
    await cam.send({"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"})
    await view.expect("session.answer")
    await view.send(
        {
            "type": "session.stats",
            "session_id": sid,
            "route": "turn",
            "local_candidate_type": "relay",
            "remote_candidate_type": "host",
            "protocol": "tcp",
            "ice_ms": 812,
            "ttff_ms": 1490,
        }
    )
    await cam.send(
        {
            "type": "session.stats",
            "session_id": sid,
            "route": "turn",
            "local_candidate_type": "host",
            "remote_candidate_type": "relay",
            "protocol": "udp",
            "ice_ms": 640,
        }
    )
    await pinged(view)
    await pinged(cam)
    path = f"/api/v1/devices/{device.id}/sessions"
    live = (await client.get(path, headers=owner.headers)).json()
    assert live["next_cursor"] is None
    (session,) = live["sessions"]
    assert session["session_id"] == sid
    assert (session["viewer"], session["viewer_id"]) == ("user", owner.id)
    assert session["ended_at"] is None
    assert session["end_reason"] is None
    assert session["route"] == "turn"
    assert session["reason"] == "Relayed by TURN over TCP: this network blocks UDP"
    assert (session["ice_ms"], session["ttff_ms"]) == (812, 1490)
    viewer_stats = dict(session["viewer_stats"])
    assert datetime.fromisoformat(viewer_stats.pop("reported_at")) <= datetime.now(UTC)
    assert viewer_stats == {
        "route": "turn",
        "local_candidate_type": "relay",
        "remote_candidate_type": "host",
        "protocol": "tcp",
        "ice_ms": 812,
        "ttff_ms": 1490,
    }
    camera_stats = session["camera_stats"]
    assert (camera_stats["local_candidate_type"], camera_stats["remote_candidate_type"]) == (
        "host",
        "relay",
    )
    assert (camera_stats["ice_ms"], camera_stats["ttff_ms"]) == (640, None)

    await view.send({"type": "session.end", "session_id": sid, "reason": "user_hangup"})
    await cam.expect("session.end")
    (ended,) = (await client.get(path, headers=owner.headers)).json()["sessions"]
    assert ended["end_reason"] == "peer_hangup"
    assert datetime.fromisoformat(ended["ended_at"]) >= datetime.fromisoformat(ended["started_at"])


async def test_only_the_owner_may_read_a_cameras_sessions(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    path = f"/api/v1/devices/{device.id}/sessions"
    assert (await client.get(path, headers=owner.headers)).json() == {
        "sessions": [],
        "next_cursor": None,
    }
    # a viewer it is shared with may see the camera, not control it: 403, as for its shares
    refused = await client.get(path, headers=friend.headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    unknown = await client.get(
        f"/api/v1/devices/{PydanticObjectId()}/sessions", headers=owner.headers
    )
    hidden = await client.get(path, headers=stranger.headers)
    assert hidden.status_code == 404
    assert hidden.json() == unknown.json()
    assert (await client.get(path)).status_code == 401


async def test_sessions_come_newest_first_in_pages(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    device_id = PydanticObjectId(device.id)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for i in range(5):
        await SessionRecord(
            session_id=f"{device.id}-{i}",
            device_id=device_id,
            viewer_id="relay-1" if i == 4 else owner.id,
            viewer_role="relay" if i == 4 else "user",
            route="relay" if i == 3 else "p2p",
            created_at=started + timedelta(minutes=i // 2),  # pairs share their time
            ended_at=started + timedelta(minutes=i // 2, seconds=30),
            end_reason="user_hangup",
            camera_stats=side("host", "host") if i == 4 else None,
        ).insert()
    path = f"/api/v1/devices/{device.id}/sessions"
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(path, params=params, headers=owner.headers)).json()
        assert len(page["sessions"]) <= 2
        seen += page["sessions"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [s["session_id"] for s in seen] == [f"{device.id}-{i}" for i in (4, 3, 2, 1, 0)]
    relay_upstream, relayed, *_ = seen
    assert (relay_upstream["viewer"], relay_upstream["viewer_id"]) == ("relay_node", None)
    assert (relay_upstream["route"], relay_upstream["reason"]) == ("p2p", SAME_NETWORK)
    assert relay_upstream["ice_ms"] == 50
    assert (relayed["route"], relayed["reason"]) == ("relay", RELAY_NODE)
    assert (seen[-1]["route"], seen[-1]["reason"], seen[-1]["ice_ms"]) == ("p2p", None, None)
    assert len((await client.get(path, headers=owner.headers)).json()["sessions"]) == 5


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": "0"}, 422),
        ({"limit": "101"}, 422),
        ({"limit": "ten"}, 422),
        ({"before": "x"}, 422),
        ({"cursor": "not-a-cursor"}, 400),
    ],
)
async def test_bad_queries_are_refused(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    params: dict[str, str],
    status: int,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    r = await client.get(
        f"/api/v1/devices/{device.id}/sessions", params=params, headers=owner.headers
    )
    assert r.status_code == status, r.text
