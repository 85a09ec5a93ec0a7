"""Webhooks through the app to a real receiver on loopback; signatures checked with the
``standardwebhooks`` package (the reference implementation of the convention)."""

import asyncio
import time

import httpx
import pytest
from beanie import PydanticObjectId
from standardwebhooks import Webhook as Verifier
from starlette.applications import Starlette

from cloud.notify.models import Notification
from cloud.notify.notifier import Notifier
from tests.cloud.notify.conftest import notify_settings, post_event
from tests.cloud.notify.receivers import WebhookReceiver
from tests.conftest import ActivateDevice, MakeAccount, share
from tests.peers import Peer


async def until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_receiver_failing_three_times_gets_each_event_once_it_answers(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    webhook_receiver: WebhookReceiver,
    relay: Peer,
    fast: Notifier,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner, "Garage")
    assert (await share(client, owner, device, friend)).status_code == 201
    created = await client.post(
        "/api/v1/webhooks", json={"url": webhook_receiver.url("ana")}, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    theirs = await client.post(
        "/api/v1/webhooks",
        json={"url": webhook_receiver.url("friend"), "kinds": ["vehicle"]},
        headers=friend.headers,
    )
    assert theirs.status_code == 201
    listed = (await client.get("/api/v1/webhooks", headers=owner.headers)).json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    webhook_receiver.failures["ana"] = 3
    event = await post_event(client, device, "wh-1", "new")
    await post_event(client, device, "wh-1", "new")  # repeated: nothing more
    await until(lambda: len(webhook_receiver.of("ana", 200)) == 1)
    await post_event(client, device, "wh-1", "update", score=0.95)
    await post_event(client, device, "wh-1", "end")
    await until(lambda: len(webhook_receiver.of("ana", 200)) == 3)
    await asyncio.sleep(0.5)
    hits = webhook_receiver.of("ana")
    assert [h.status for h in hits] == [500, 500, 500, 200, 200, 200]
    verifier = Verifier(hook["secret"])
    bodies = [verifier.verify(h.body, h.headers) for h in hits]  # raises if a signature is bad
    assert [b["type"] for b in bodies] == ["event.new"] * 4 + ["event.update", "event.end"]
    assert len({h.headers["webhook-id"] for h in hits[:4]}) == 1  # one id across the retries
    assert len({h.headers["webhook-id"] for h in hits}) == 3
    assert bodies[0]["data"]["id"] == event["id"]
    assert bodies[0]["data"]["thread_id"] == "wh-1"
    assert bodies[-1]["data"]["state"] == "end"
    assert hits[0].body == hits[3].body  # the same bytes on every try
    with pytest.raises(Exception, match="signature"):
        Verifier("whsec_" + "A" * 43 + "=").verify(hits[3].body, hits[3].headers)
    # the friend's hook asked for vehicles only
    assert webhook_receiver.of("friend") == []
    deliveries = await client.get(
        f"/api/v1/webhooks/{hook['id']}/deliveries", headers=owner.headers
    )
    assert deliveries.status_code == 200
    rows = deliveries.json()["deliveries"]
    first = next(r for r in rows if r["type"] == "event.new")
    assert first["id"] == hits[0].headers["webhook-id"]
    assert first["status"] == "delivered"
    assert [a["status_code"] for a in first["attempts"]] == [500, 500, 500, 200]
    assert all(a["next_attempt_at"] for a in first["attempts"][:3])
    assert first["attempts"][3]["next_attempt_at"] is None
    other = await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=friend.headers)
    assert other.status_code == 404


async def test_an_endpoint_failing_past_the_retry_window_is_disabled_and_says_why(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    webhook_receiver: WebhookReceiver,
    relay: Peer,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    hook = (
        await client.post(
            "/api/v1/webhooks", json={"url": webhook_receiver.url("down")}, headers=owner.headers
        )
    ).json()
    webhook_receiver.failures["down"] = 1000
    with notify_settings(
        app, notify_retry_schedule_s=(0.2,), notify_retry_for_s=1, notify_cooldown_s=0
    ):
        await post_event(client, device, "down-1", "new")
        url = f"/api/v1/webhooks/{hook['id']}/deliveries"

        async def disabled() -> bool:
            body = (await client.get(url, headers=owner.headers)).json()
            return body["webhook"]["enabled"] is False

        deadline = time.monotonic() + 10
        while not await disabled():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    body = (await client.get(url, headers=owner.headers)).json()
    assert "every delivery failed for" in body["webhook"]["disabled_reason"]
    [row] = body["deliveries"]
    assert row["status"] == "dead"
    assert row["next_attempt_at"] is None
    assert all(a["status_code"] == 500 for a in row["attempts"])
    tries = len(webhook_receiver.of("down"))
    await asyncio.sleep(0.6)
    assert len(webhook_receiver.of("down")) == tries  # nothing more is sent


async def test_urls_are_checked_and_loopback_is_refused_in_production(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    owner = await make_account("owner")
    for bad in [
        {"url": "ftp://example.com/hook"},
        {"url": "https://example.com/hook", "kinds": []},
        {"url": "https://example.com/hook", "other": 1},
    ]:
        r = await client.post("/api/v1/webhooks", json=bad, headers=owner.headers)
        assert r.status_code == 422, r.text
    production = {
        "environment": "production",
        "public_url": "https://cams.example.com",
        "notify_allow_loopback": False,
    }
    with notify_settings(app, **production):
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://[::1]:9/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://224.0.0.1/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ]:
            r = await client.post("/api/v1/webhooks", json={"url": url}, headers=owner.headers)
            assert r.status_code == 422, (url, r.text)
            assert "does not send to" in r.json()["error"]["message"], url
    with notify_settings(app, **production | {"notify_allow_loopback": True}):
        r = await client.post(
            "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=owner.headers
        )
        assert r.status_code == 201
        r = await client.post(
            "/api/v1/webhooks", json={"url": "http://10.1.2.3/hook"}, headers=owner.headers
        )
        assert r.status_code == 422


async def test_a_deleted_webhook_gets_nothing_more(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    webhook_receiver: WebhookReceiver,
    relay: Peer,
    fast: Notifier,
) -> None:
    owner, other = await make_account("owner"), await make_account("other")
    device = await activate_device(owner)
    hook = (
        await client.post(
            "/api/v1/webhooks", json={"url": webhook_receiver.url("gone")}, headers=owner.headers
        )
    ).json()
    url = f"/api/v1/webhooks/{hook['id']}"
    assert (await client.delete(url, headers=other.headers)).status_code == 404
    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    assert (await client.delete(url, headers=owner.headers)).status_code == 404
    await post_event(client, device, "gone-1", "new")
    await asyncio.sleep(0.5)
    assert webhook_receiver.of("gone") == []
    gone = {"deliveries.target_id": PydanticObjectId(hook["id"])}
    assert await Notification.find(gone).count() == 0
