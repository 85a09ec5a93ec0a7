"""GET /api/v1/stats: the caller's own cameras only; a viewer of a shared camera sees none of
its owner's figures."""

from datetime import UTC, datetime, timedelta

import httpx
from beanie import PydanticObjectId

from cloud.events.models import EventThread
from cloud.signaling.models import SessionRecord, SideStats
from tests.conftest import ActivateDevice, MakeAccount, share


def side(ttff_ms: int | None, local: str = "host", remote: str = "host") -> SideStats:
    return SideStats(
        route="p2p",
        local_candidate_type=local,  # type: ignore[arg-type]
        remote_candidate_type=remote,  # type: ignore[arg-type]
        protocol="udp",
        ice_ms=100,
        ttff_ms=ttff_ms,
        reported_at=datetime.now(UTC),
    )


async def event(device_id: str, kind: str, started_at: datetime) -> None:
    await EventThread(
        device_id=PydanticObjectId(device_id),
        relay_id="relay-x",
        thread_id=f"{kind}-{started_at.timestamp()}",
        kind=kind,
        state="end",
        score=0.9,
        started_at=started_at,
        updated_at=started_at,
        expires_at=started_at + timedelta(days=30),
    ).insert()


async def session(device_id: str, n: int, route: str, viewer: SideStats | None) -> None:
    await SessionRecord(
        session_id=f"s-{device_id}-{n}",
        device_id=PydanticObjectId(device_id),
        viewer_id="someone",
        route=route,
        created_at=datetime.now(UTC) - timedelta(hours=1),
        viewer_stats=viewer,
    ).insert()


async def test_stats_cover_the_callers_own_cameras_only(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend, stranger = [await make_account(p) for p in ("owner", "friend", "stranger")]
    porch = await activate_device(owner, "Porch")
    await activate_device(owner, "Garden")
    other = await activate_device(stranger, "Theirs")
    assert (await share(client, owner, porch, friend)).status_code in (200, 201)

    now = datetime.now(UTC)
    await event(porch.id, "motion", now - timedelta(minutes=5))
    await event(porch.id, "motion", now - timedelta(minutes=4))
    await event(porch.id, "person", now - timedelta(days=2))
    await event(porch.id, "motion", now - timedelta(days=9))  # outside the window
    await event(other.id, "motion", now)  # not the owner's
    await session(porch.id, 1, "p2p", side(400))
    await session(porch.id, 2, "p2p", side(800, local="relay"))  # through TURN
    await session(porch.id, 3, "relay", side(1200))
    await session(other.id, 4, "p2p", side(5))

    got = await client.get("/api/v1/stats", headers=owner.headers)
    assert got.status_code == 200, got.text
    stats = got.json()
    assert stats["window_days"] == 7
    assert stats["cameras"] == {"owned": 2, "online": 0}
    days = stats["events_per_day"]
    assert len(days) == 7
    assert days[-1]["day"] == now.date().isoformat()
    assert days[-1]["by_kind"] == {"motion": 2}
    assert days[-3]["by_kind"] == {"person": 1}
    assert sum(d["total"] for d in days) == 3
    assert stats["sessions_by_route"] == {"p2p": 1, "turn": 1, "relay": 1}
    assert stats["median_ttff_ms"] == 800
    assert stats["storage"]["used_bytes"] == 0
    assert stats["storage"]["quota_bytes"] > 0

    # The friend watches the porch but owns nothing: none of the owner's figures.
    theirs = (await client.get("/api/v1/stats", headers=friend.headers)).json()
    assert theirs["cameras"] == {"owned": 0, "online": 0}
    assert sum(d["total"] for d in theirs["events_per_day"]) == 0
    assert theirs["sessions_by_route"] == {"p2p": 0, "turn": 0, "relay": 0}
    assert theirs["median_ttff_ms"] is None

    assert (await client.get("/api/v1/stats")).status_code == 401
