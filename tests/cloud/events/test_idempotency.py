"""Event reports by Idempotency-Key (issue 16 item 2): a relay node retries a report whose
answer it did not get with the same key, and the cloud applies it once."""

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo.errors import NetworkTimeout

from cloud.events.models import EventReceipt
from tests.cloud.events.test_routes import jpeg, report
from tests.cloud.media.conftest import put_clip, video
from tests.conftest import RELAY_SECRET, ActivateDevice, MakeAccount
from tests.peers import Peer, connect, viewer

RELAY_ID = "relay-idem"
RELAY = {"Authorization": f"Bearer {RELAY_ID}:{RELAY_SECRET}"}


@pytest.fixture
async def relay(ws_base: str) -> Peer:
    peer = await connect(ws_base, "/ws/v1/relay", f"{RELAY_ID}:{RELAY_SECRET}")
    assert (await peer.recv())["type"] == "welcome"
    return peer


def key() -> str:
    return secrets.token_hex(16)


async def test_a_repeated_report_is_answered_the_same_and_pushed_once(
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    watching = await viewer(ws_base, owner)
    new, end = key(), key()
    body = report(device.id, "t-idem", "new", snapshot_jpeg=jpeg())
    first = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": new}
    )
    assert first.status_code == 200, first.text
    again = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": new}
    )
    assert (again.status_code, again.json()) == (200, first.json())
    ended = report(device.id, "t-idem", "end", ended_at=datetime.now(UTC).isoformat())
    for _ in range(3):
        r = await client.post(
            "/api/v1/relays/events", json=ended, headers={**RELAY, "Idempotency-Key": end}
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "end"
    # A late repeat of the first report (its answer was lost before the end was sent) is
    # answered as then and changes nothing: the thread stays ended.
    late = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": new}
    )
    assert late.json() == first.json()
    pushed = [m for m in await watching.quiet(1.0) if m["type"] == "event"]
    assert [p["state"] for p in pushed] == ["new", "end"]
    event = await client.get(f"/api/v1/events/{first.json()['id']}", headers=owner.headers)
    assert event.json()["state"] == "end"


async def test_a_report_being_applied_answers_503_until_its_lease_runs_out(
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    busy, stale = key(), key()
    now = datetime.now(UTC)
    receipts = EventReceipt.get_pymongo_collection()
    for k, lease in ((busy, now + timedelta(seconds=30)), (stale, now - timedelta(seconds=1))):
        await receipts.insert_one(
            {
                "_id": f"{RELAY_ID}:{k}",
                "state": "applying",
                "lease_until": lease,
                "expires_at": now + timedelta(days=1),
            }
        )
    body = report(device.id, "t-lease", "new")
    r = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": busy}
    )
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "service_unavailable"
    # A request that died half-way: the next try applies it.
    r = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": stale}
    )
    assert r.status_code == 200, r.text
    done = await receipts.find_one({"_id": f"{RELAY_ID}:{stale}"})
    assert done is not None
    assert done["state"] == "done"
    bad = await client.post(
        "/api/v1/relays/events", json=body, headers={**RELAY, "Idempotency-Key": "no spaces!"}
    )
    assert bad.status_code == 422


async def test_keys_are_the_relays_own(
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    other_relay = await connect(ws_base, "/ws/v1/relay", f"relay-other:{RELAY_SECRET}")
    assert (await other_relay.recv())["type"] == "welcome"
    shared = key()
    one = await client.post(
        "/api/v1/relays/events",
        json=report(device.id, "t-one", "new"),
        headers={**RELAY, "Idempotency-Key": shared},
    )
    other = await client.post(
        "/api/v1/relays/events",
        json=report(device.id, "t-two", "new"),
        headers={
            "Authorization": f"Bearer relay-other:{RELAY_SECRET}",
            "Idempotency-Key": shared,
        },
    )
    assert (one.status_code, other.status_code) == (200, 200)
    assert (one.json()["thread_id"], other.json()["thread_id"]) == ("t-one", "t-two")


async def test_a_clip_that_came_before_its_thread_is_named_by_it(
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    media_relay = await connect(ws_base, "/ws/v1/relay", f"relay-media:{RELAY_SECRET}")
    assert (await media_relay.recv())["type"] == "welcome"
    watching = await viewer(ws_base, owner)
    started = datetime.now(UTC) - timedelta(seconds=10)
    clip = await put_clip(client, device, "t-late", video(50_000), started_at=started.isoformat())
    assert clip.status_code == 200, clip.text
    r = await client.post(
        "/api/v1/relays/events",
        json=report(device.id, "t-late", "new", started_at=started),
        headers={**RELAY, "Idempotency-Key": key()},
    )
    assert r.status_code == 200, r.text
    assert r.json()["clip_id"] == clip.json()["id"]
    # Told once, with its clip: neither the clip's later uploads nor anything else repeats it.
    again = await put_clip(client, device, "t-late", video(60_000))
    assert again.status_code == 200, again.text
    told = [m for m in await watching.quiet(0.5) if m["type"] == "event"]
    assert [(m["state"], m["clip_id"]) for m in told] == [("new", clip.json()["id"])]
    await watching.socket.close()


async def test_a_report_whose_receipt_the_database_took_after_the_cloud_gave_up_was_pushed(
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The soak's paused database (docs/benchmarks.md, run F): the receipt's "done" reached
    the database, the cloud's wait for it timed out, and the retry is answered from the
    receipt. The apps heard of the state all the same, from the first try."""
    owner = await make_account("owner")
    device = await activate_device(owner)
    watching = await viewer(ws_base, owner)
    receipts = EventReceipt.get_pymongo_collection()
    update_one = type(receipts).update_one

    async def done_then_timeout(self: Any, query: Any, change: Any, *a: Any, **kw: Any) -> Any:
        result = await update_one(self, query, change, *a, **kw)
        if self.name == receipts.name and change.get("$set", {}).get("state") == "done":
            raise NetworkTimeout("timed out (the test's paused database)")
        return result

    monkeypatch.setattr(type(receipts), "update_one", done_then_timeout)
    body = report(device.id, "t-paused", "new")
    headers = {**RELAY, "Idempotency-Key": key()}
    first = await client.post("/api/v1/relays/events", json=body, headers=headers)
    assert first.status_code == 503, first.text
    monkeypatch.undo()
    again = await client.post("/api/v1/relays/events", json=body, headers=headers)
    assert again.status_code == 200, again.text
    pushed = [m for m in await watching.quiet(1.0) if m["type"] == "event"]
    assert [(p["id"], p["state"]) for p in pushed] == [(again.json()["id"], "new")]
