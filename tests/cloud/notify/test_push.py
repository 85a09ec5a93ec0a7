"""Web Push through the app, to a real RFC 8030 push service on loopback that verifies the
VAPID JWT and decrypts every message (tests/cloud/notify/receivers.py)."""

import asyncio
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from beanie import PydanticObjectId
from starlette.applications import Starlette

from cloud.notify.models import Notification, NotifyPreference, PushSubscription
from cloud.notify.notifier import Notifier
from tests.cloud.notify.conftest import jpeg, notify_settings, post_event, subscribe
from tests.cloud.notify.receivers import PushService, unb64url
from tests.conftest import ActivateDevice, MakeAccount, share
from tests.peers import Peer

PAYLOAD_KEYS = {
    "title",
    "body",
    "tag",
    "image",
    "renotify",
    "event_id",
    "device_id",
    "kind",
    "state",
    "url",
}


async def settle(seconds: float = 0.6) -> None:
    await asyncio.sleep(seconds)


async def test_vapid_key_and_subscriptions_per_user(
    client: httpx.AsyncClient, make_account: MakeAccount, push_service: PushService
) -> None:
    ana, bob = await make_account("ana"), await make_account("bob")
    assert (await client.get("/api/v1/push/vapid")).status_code == 401
    key = (await client.get("/api/v1/push/vapid", headers=ana.headers)).json()["public_key"]
    raw = unb64url(key)
    assert len(raw) == 65
    assert raw[0] == 4
    assert "=" not in key
    _browser, sub = push_service.subscribe()
    created = await client.post("/api/v1/push/subscriptions", json=sub, headers=ana.headers)
    assert created.status_code == 201, created.text
    again = await client.post("/api/v1/push/subscriptions", json=sub, headers=ana.headers)
    assert again.status_code == 201
    assert again.json()["id"] == created.json()["id"]
    listed = (await client.get("/api/v1/push/subscriptions", headers=ana.headers)).json()
    assert [s["endpoint"] for s in listed["subscriptions"]] == [sub["endpoint"]]
    assert (await client.get("/api/v1/push/subscriptions", headers=bob.headers)).json() == {
        "subscriptions": []
    }
    sub_id = created.json()["id"]
    gone = await client.delete(f"/api/v1/push/subscriptions/{sub_id}", headers=bob.headers)
    assert gone.status_code == 404
    for bad, field in [
        ({**sub, "keys": {**sub["keys"], "p256dh": "A" * 87}}, "p256dh"),
        ({**sub, "keys": {**sub["keys"], "auth": "A" * 20}}, "auth"),
        ({**sub, "endpoint": "ftp://example.com/x"}, "endpoint"),
        ({**sub, "extra": 1}, "extra"),
    ]:
        r = await client.post("/api/v1/push/subscriptions", json=bad, headers=ana.headers)
        assert r.status_code == 422, r.text
        assert field in r.json()["error"]["message"]
    r = await client.delete(f"/api/v1/push/subscriptions/{sub_id}", headers=ana.headers)
    assert r.status_code == 204
    assert (await client.get("/api/v1/push/subscriptions", headers=ana.headers)).json() == {
        "subscriptions": []
    }


async def test_a_thread_gives_one_new_and_one_end_push_to_owner_and_sharer_never_a_stranger(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    push_service: PushService,
    relay: Peer,
    fast: Notifier,
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner, "Front door")
    assert (await share(client, owner, device, friend)).status_code == 201
    mine, _ = await subscribe(client, owner, push_service)
    theirs, _ = await subscribe(client, friend, push_service)
    nobody, _ = await subscribe(client, stranger, push_service)
    started = datetime.now(UTC) - timedelta(seconds=3)
    event = await post_event(
        client, device, "th-1", "new", snapshot_jpeg=jpeg(), started_at=started
    )
    await post_event(client, device, "th-1", "new", snapshot_jpeg=jpeg(), started_at=started)
    await post_event(client, device, "th-1", "update", score=0.9, started_at=started)
    await post_event(client, device, "th-1", "end", started_at=started)
    await post_event(client, device, "th-1", "end", started_at=started)  # a repeated report
    await push_service.wait_for(4)
    await settle()
    assert push_service.refused == []
    assert push_service.of(nobody) == []
    for browser in (mine, theirs):
        got = push_service.of(browser)
        assert [m.payload["state"] for m in got] == ["new", "end"], got
        new, end = got[0].payload, got[1].payload
        assert set(new) == PAYLOAD_KEYS == set(end)
        assert new["title"] == end["title"] == "Person at Front door"
        assert new["tag"] == end["tag"] == "th-1"
        assert (new["renotify"], end["renotify"]) == (True, False)
        assert new["event_id"] == end["event_id"] == event["id"]
        assert new["device_id"] == device.id
        assert new["kind"] == "person"
        assert new["url"] == f"/#/devices/{device.id}"
        assert new["body"] == "Person detected"
        assert end["body"] == "Ended after 12 s"
        assert got[0].claims["aud"] == push_service.origin
        assert got[0].claims["sub"].startswith("mailto:")
        # the picture, without a bearer header, by the signed URL
        image = urlsplit(new["image"])
        picture = await client.get(f"{image.path}?{image.query}")
        assert picture.status_code == 200
        assert picture.content.startswith(b"\xff\xd8\xff")
        forged = await client.get(f"{image.path}?{image.query[:-3]}abc")
        assert forged.status_code == 404
    # a URL issued to one user is theirs: the stranger cannot use one, and it is per event
    path = urlsplit(push_service.of(mine)[0].payload["image"]).path
    assert (await client.get(path)).status_code == 404


async def test_a_push_service_answering_410_deletes_the_subscription(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    push_service: PushService,
    relay: Peer,
    fast: Notifier,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    gone, created = await subscribe(client, owner, push_service)
    kept, _ = await subscribe(client, owner, push_service)
    gone.answer = 410
    await post_event(client, device, "th-410", "new")
    await push_service.wait_for(1)
    await settle()
    assert [m.payload["tag"] for m in push_service.of(kept)] == ["th-410"]
    listed = (await client.get("/api/v1/push/subscriptions", headers=owner.headers)).json()
    assert created["id"] not in [s["id"] for s in listed["subscriptions"]]
    assert await PushSubscription.get(created["id"]) is None
    [push] = await Notification.find(
        {"deliveries.target_id": PydanticObjectId(created["id"])}
    ).to_list()
    [dead] = [d for d in push.deliveries if d.target_id == PydanticObjectId(created["id"])]
    assert dead.status == "dead"
    assert dead.attempts[0]["status_code"] == 410
    assert push.status == "settled"


async def test_preferences_kinds_and_quiet_hours_and_the_cooldown(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    push_service: PushService,
    relay: Peer,
    fast: Notifier,
) -> None:
    owner, stranger = await make_account("owner"), await make_account("stranger")
    front = await activate_device(owner, "Front")
    back = await activate_device(owner, "Back")
    browser, _ = await subscribe(client, owner, push_service)
    rows = (await client.get("/api/v1/notifications/preferences", headers=owner.headers)).json()
    assert sorted(r["device_name"] for r in rows["preferences"]) == ["Back", "Front"]
    assert all(r["kinds"] is None and r["quiet_hours"] is None for r in rows["preferences"])
    url = f"/api/v1/notifications/preferences/{front.id}"
    r = await client.put(
        url, json={"kinds": ["person"], "quiet_hours": None}, headers=owner.headers
    )
    assert r.status_code == 200
    assert r.json()["kinds"] == ["person"]
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
        "timezone": "UTC",
    }
    r = await client.put(
        f"/api/v1/notifications/preferences/{back.id}",
        json={"kinds": None, "quiet_hours": quiet},
        headers=owner.headers,
    )
    assert r.status_code == 200
    assert r.json()["quiet_hours"] == quiet
    for bad in [
        {"kinds": ["Person!"]},
        {"kinds": None, "quiet_hours": {**quiet, "timezone": "Mars/Olympus"}},
        {"kinds": None, "quiet_hours": {**quiet, "start": "25:00"}},
        {"kinds": None, "other": 1},
    ]:
        assert (await client.put(url, json=bad, headers=owner.headers)).status_code == 422
    assert (await client.put(url, json={}, headers=stranger.headers)).status_code == 404
    await post_event(client, front, "p-motion", "new", kind="motion")  # kind not wanted
    await post_event(client, back, "p-quiet", "new")  # quiet hours
    await post_event(client, front, "p-person", "new")
    await push_service.wait_for(1)
    await settle()
    assert [m.payload["tag"] for m in push_service.of(browser)] == ["p-person"]
    # cooldown: a second thread of the same camera within it gives no push, nor its end
    with notify_settings(app, notify_retry_schedule_s=(0.2,), notify_cooldown_s=30):
        await post_event(client, front, "c-1", "new")
        await post_event(client, front, "c-2", "new")
        await post_event(client, front, "c-2", "end")
        await post_event(client, front, "c-1", "end")
        await push_service.wait_for(3)
        await settle()
    tags = [(m.payload["tag"], m.payload["state"]) for m in push_service.of(browser)]
    assert tags == [("p-person", "new"), ("c-1", "new"), ("c-1", "end")]
    # removing the camera removes its preferences
    front_id = PydanticObjectId(front.id)
    assert await NotifyPreference.find(NotifyPreference.device_id == front_id).count() == 1
    r = await client.delete(f"/api/v1/devices/{front.id}", headers=owner.headers)
    assert r.status_code == 204
    assert await NotifyPreference.find(NotifyPreference.device_id == front_id).count() == 0


async def test_the_test_notification_reaches_each_subscription_of_the_caller(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    push_service: PushService,
    fast: Notifier,
) -> None:
    ana, bob = await make_account("ana"), await make_account("bob")
    first, _ = await subscribe(client, ana, push_service)
    second, _ = await subscribe(client, ana, push_service)
    other, _ = await subscribe(client, bob, push_service)
    r = await client.post("/api/v1/push/test", headers=ana.headers)
    assert r.status_code == 202
    assert r.json() == {"queued": 2}
    await push_service.wait_for(2)
    await settle(0.3)
    assert [m.payload["state"] for m in push_service.of(first)] == ["test"]
    assert [m.payload["state"] for m in push_service.of(second)] == ["test"]
    assert push_service.of(other) == []
