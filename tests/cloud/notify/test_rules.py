"""Who gets what: access checked again at send time, quiet hours, the settings."""

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from beanie import PydanticObjectId
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette

from cloud.notify.models import Notification
from cloud.notify.notifier import Notifier
from cloud.notify.preferences import in_quiet_hours
from cloud.notify.push import application_server_key, load_vapid
from cloud.settings import Settings, SettingsError
from tests.cloud.notify.conftest import post_event, subscribe
from tests.cloud.notify.receivers import PushService, unb64url
from tests.conftest import ActivateDevice, MakeAccount, share
from tests.peers import Peer


async def test_a_share_revoked_while_its_push_waits_stops_the_push(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    push_service: PushService,
    relay: Peer,
    fast: Notifier,
    paused: None,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    mine, _ = await subscribe(client, owner, push_service)
    theirs, created = await subscribe(client, friend, push_service)
    await post_event(client, device, "rv-1", "new")  # queued for both; the worker is paused
    r = await client.delete(
        f"/api/v1/devices/{device.id}/shares/{friend.id}", headers=owner.headers
    )
    assert r.status_code == 204, r.text
    app.state.notifier.outbox.start()
    try:
        await push_service.wait_for(1)
        await asyncio.sleep(1.2)  # past the 1 s the access check is trusted
    finally:
        await app.state.notifier.outbox.stop()
    assert [m.payload["tag"] for m in push_service.of(mine)] == ["rv-1"]
    assert push_service.of(theirs) == []
    theirs = PydanticObjectId(created["id"])
    doc = await Notification.find_one({"deliveries.target_id": theirs})
    assert doc is not None
    [refused] = [d for d in doc.deliveries if d.target_id == theirs]
    assert refused.status == "dead"
    assert refused.last_error == "no longer allowed to see the camera"
    assert [a["error"] for a in refused.attempts] == [refused.last_error]
    assert doc.status == "settled"


def test_quiet_hours_in_the_users_zone_and_past_midnight() -> None:
    night = {"start": "22:00", "end": "07:00", "timezone": "Europe/Lisbon"}
    assert in_quiet_hours(night, datetime(2026, 7, 1, 21, 30, tzinfo=UTC))  # 22:30 in Lisbon
    assert in_quiet_hours(night, datetime(2026, 7, 1, 5, 59, tzinfo=UTC))  # 06:59
    assert not in_quiet_hours(night, datetime(2026, 7, 1, 6, 0, tzinfo=UTC))  # 07:00
    assert not in_quiet_hours(night, datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    lunch = {"start": "12:00", "end": "13:00", "timezone": "UTC"}
    assert in_quiet_hours(lunch, datetime(2026, 7, 1, 12, 30, tzinfo=UTC))
    assert not in_quiet_hours(lunch, datetime(2026, 7, 1, 13, 0, tzinfo=UTC))
    assert not in_quiet_hours(None, datetime(2026, 7, 1, 12, 30, tzinfo=UTC))


def test_notification_settings_are_read_and_checked() -> None:
    s = Settings.from_env(
        {
            "NOTIFY_RETRY_SCHEDULE_S": "0.5, 2",
            "NOTIFY_COOLDOWN_S": "0",
            "NOTIFY_ALLOW_LOOPBACK": "1",
        },
        dotenv=False,
    )
    assert s.notify_retry_schedule_s == (0.5, 2.0)
    assert s.notify_cooldown_s == 0
    assert s.notify_allow_loopback
    assert Settings.from_env({}, dotenv=False).notify_retry_schedule_s == (
        1,
        5,
        30,
        120,
        600,
        1800,
        3600,
    )
    for env, match in [
        ({"NOTIFY_RETRY_SCHEDULE_S": "1,soon"}, "NOTIFY_RETRY_SCHEDULE_S"),
        ({"NOTIFY_RETRY_SCHEDULE_S": "0"}, "NOTIFY_RETRY_SCHEDULE_S"),
        ({"NOTIFY_RETRY_FOR_S": "0"}, "NOTIFY_RETRY_FOR_S"),
        ({"NOTIFY_COOLDOWN_S": "-1"}, "NOTIFY_COOLDOWN_S"),
        ({"NOTIFY_PUSH_TTL_S": "5"}, "NOTIFY_PUSH_TTL_S"),
        ({"VAPID_SUBJECT": "admin@example.com"}, "VAPID_SUBJECT"),
    ]:
        with pytest.raises(SettingsError, match=match):
            Settings.from_env(env, dotenv=False)


def test_vapid_keys_from_the_data_dir_in_development_and_settings_in_production(
    tmp_path: Path,
) -> None:
    dev = Settings(data_dir=tmp_path)
    first, again = load_vapid(dev), load_vapid(dev)
    assert (tmp_path / "vapid-private.pem").stat().st_mode & 0o777 == 0o600
    assert application_server_key(first) == application_server_key(again)  # kept
    production = dataclasses.replace(
        dev, environment="production", public_url="https://cams.example.com"
    )
    assert load_vapid(production) is None  # push is off without a key
    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    key = base64.urlsafe_b64encode(raw.to_bytes(32)).decode().rstrip("=")
    given = load_vapid(dataclasses.replace(production, vapid_private_key=key))
    assert len(unb64url(application_server_key(given))) == 65
    with pytest.raises(SettingsError, match="VAPID_PRIVATE_KEY"):
        load_vapid(dataclasses.replace(production, vapid_private_key="not-a-key"))
