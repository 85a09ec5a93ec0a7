import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from cloud.events.models import EventThread
from tests.conftest import RELAY_SECRET, Account, ActivateDevice, MakeAccount, share
from tests.peers import Peer, connect, viewer

RELAY = {"Authorization": f"Bearer relay-ev:{RELAY_SECRET}"}


def jpeg() -> str:
    picture = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(picture, (10, 10), (30, 40), (0, 140, 255), -1)
    ok, encoded = cv2.imencode(".jpg", picture)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


def report(device_id: str, thread: str, state: str, **extra: Any) -> dict[str, Any]:
    started = extra.pop("started_at", datetime.now(UTC) - timedelta(seconds=5))
    return {
        "device_id": device_id,
        "thread_id": thread,
        "kind": extra.pop("kind", "motion"),
        "state": state,
        "score": extra.pop("score", 0.6),
        "box": [0.1, 0.2, 0.3, 0.4],
        "started_at": started.isoformat(),
        **extra,
    }


@pytest.fixture
async def relay(ws_base: str) -> Peer:
    peer = await connect(ws_base, "/ws/v1/relay", f"relay-ev:{RELAY_SECRET}")
    assert (await peer.recv())["type"] == "welcome"
    return peer


async def test_a_thread_is_stored_once_pushed_live_to_owner_and_sharer_and_never_a_stranger(
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    watchers = [await viewer(ws_base, a) for a in (owner, friend, stranger)]
    states = []
    for state, extra in [
        ("new", {"snapshot_jpeg": jpeg()}),
        ("update", {"score": 0.9}),
        ("end", {}),
    ]:
        if state == "end":
            extra["ended_at"] = datetime.now(UTC).isoformat()
        r = await client.post(
            "/api/v1/relays/events", json=report(device.id, "t-1", state, **extra), headers=RELAY
        )
        assert r.status_code == 200, r.text
        states.append(r.json()["state"])
    assert states == ["new", "update", "end"]
    for peer in watchers[:2]:
        pushed = [await peer.expect("event") for _ in range(3)]
        assert [p["state"] for p in pushed] == ["new", "update", "end"]
        assert {p["thread_id"] for p in pushed} == {"t-1"}
    assert await watchers[2].quiet(0.5) == []
    listed = (await client.get("/api/v1/events", headers=owner.headers)).json()
    assert len(listed["events"]) == 1
    event = listed["events"][0]
    assert (event["state"], event["score"], event["kind"]) == ("end", 0.9, "motion")
    assert event["ended_at"] is not None
    snapshot = await client.get(event["snapshot_url"], headers=friend.headers)
    assert snapshot.status_code == 200
    assert snapshot.headers["content-type"] == "image/jpeg"
    assert snapshot.content.startswith(b"\xff\xd8\xff")
    for path in (f"/api/v1/events/{event['id']}", event["snapshot_url"]):
        assert (await client.get(path, headers=stranger.headers)).status_code == 404
    assert (await client.get("/api/v1/events", headers=stranger.headers)).json()["events"] == []
    acked = await client.post(f"/api/v1/events/{event['id']}/ack", headers=friend.headers)
    assert acked.json()["acknowledged"] is True
    assert (await client.get(f"/api/v1/events/{event['id']}", headers=owner.headers)).json()[
        "acknowledged"
    ]


async def test_events_filter_and_page_newest_first(
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    front, back = await activate_device(owner, "Front"), await activate_device(owner, "Back")
    base = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    for n in range(5):
        for device, kind in ((front, "motion"), (back, "person")):
            body = report(
                device.id, f"{kind}-{n}", "new", kind=kind, started_at=base + timedelta(minutes=n)
            )
            assert (
                await client.post("/api/v1/relays/events", json=body, headers=RELAY)
            ).status_code == 200

    async def page(**params: Any) -> dict[str, Any]:
        r = await client.get("/api/v1/events", params=params, headers=owner.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    seen, cursor = [], None
    while True:
        got = await page(device_id=front.id, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [e["thread_id"] for e in got["events"]]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"motion-{n}" for n in range(4, -1, -1)]
    people = await page(kind="person")
    assert [e["thread_id"] for e in people["events"]] == [f"person-{n}" for n in range(4, -1, -1)]
    window = await page(
        since=(base + timedelta(minutes=1)).isoformat(),
        until=(base + timedelta(minutes=3)).isoformat(),
    )
    assert sorted(e["thread_id"] for e in window["events"]) == [
        "motion-1",
        "motion-2",
        "person-1",
        "person-2",
    ]
    bad = await client.get("/api/v1/events", params={"since": "yesterday"}, headers=owner.headers)
    assert bad.status_code == 422
    bad = await client.get("/api/v1/events", params={"cursor": "garbage"}, headers=owner.headers)
    assert bad.status_code == 400
    # Expired events are gone from every read, whatever the TTL sweep has done.
    await EventThread.get_pymongo_collection().update_many(
        {"thread_id": "motion-4"},
        {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}},
    )
    assert "motion-4" not in [e["thread_id"] for e in (await page(device_id=front.id))["events"]]


async def test_bad_reports_are_refused_with_clear_errors(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner: Account = await make_account("owner")
    device = await activate_device(owner)
    url = "/api/v1/relays/events"
    # A relay that is not connected is not registered: refused even with the right secret.
    r = await client.post(
        url,
        json=report(device.id, "x", "new"),
        headers={"Authorization": f"Bearer ghost:{RELAY_SECRET}"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = await client.post(
        url, json=report(device.id, "x", "new"), headers={"Authorization": "Bearer relay-ev:wrong"}
    )
    assert r.status_code == 401
    r = await client.post(url, json=report(device.id, "x", "new"), headers=owner.headers)
    assert r.status_code == 401
    live = await connect(ws_base, "/ws/v1/relay", f"relay-ev:{RELAY_SECRET}")
    assert (await live.recv())["type"] == "welcome"
    cases = [
        (report("6b0000000000000000000000", "x", "new"), 404, "device_not_found"),
        (report("not-an-id", "x", "new"), 404, "device_not_found"),
        (report(device.id, "x", "started"), 422, "invalid_request"),
        (report(device.id, "x", "new", score=2), 422, "invalid_request"),
        (report(device.id, "bad thread!", "new"), 422, "invalid_request"),
        (
            report(device.id, "x", "new", snapshot_jpeg=base64.b64encode(b"GIF89a...").decode()),
            422,
            "invalid_request",
        ),
        (report(device.id, "x", "new", snapshot_jpeg="%%%"), 422, "invalid_request"),
        (report(device.id, "x", "new", extra_field=1), 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = await client.post(url, json=body, headers=RELAY)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), body
    r = await client.post(url, content=b"{", headers={**RELAY, "content-type": "application/json"})
    assert r.status_code == 400
    huge = report(device.id, "x", "new", snapshot_jpeg="A" * 800_000)
    assert (await client.post(url, json=huge, headers=RELAY)).status_code == 413
    assert (await client.get("/api/v1/events", headers=owner.headers)).json()["events"] == []


async def test_a_restarted_upload_analysis_reports_its_threads_again_and_its_times_stand(
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("uploader")
    device = await activate_device(owner)
    upload = {"source": "upload", "upload_id": "64b000000000000000000001"}
    first = datetime.now(UTC) - timedelta(minutes=5)
    for began in (first, first + timedelta(minutes=3)):  # the node restarted the analysis
        for state in ("new", "end"):
            body = report(device.id, "64b000000000000000000001-1", state, started_at=began)
            body |= upload | {"offset_s": 4.0, "end_offset_s": 7.0}
            if state == "end":
                body["ended_at"] = (began + timedelta(seconds=3)).isoformat()
            r = await client.post("/api/v1/relays/events", json=body, headers=RELAY)
            assert r.status_code == 200, r.text
    (event,) = (await client.get("/api/v1/events", headers=owner.headers)).json()["events"]
    started = datetime.fromisoformat(event["started_at"])
    ended = datetime.fromisoformat(event["ended_at"])
    # the newest attempt's times, consistent with each other (stored to the millisecond)
    assert abs(started - (first + timedelta(minutes=3))) < timedelta(milliseconds=1)
    assert abs(ended - started - timedelta(seconds=3)) < timedelta(milliseconds=2)
    assert (event["offset_s"], event["end_offset_s"]) == (4.0, 7.0)
