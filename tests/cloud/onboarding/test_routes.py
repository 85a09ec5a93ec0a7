import asyncio
import base64
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from bson import ObjectId
from starlette.applications import Starlette

from cloud.auth.models import User
from cloud.devices.models import Device
from cloud.onboarding.models import OnboardingTicket
from cloud.settings import Settings
from protocol.qr import decode_qr_payload
from tests.conftest import Account, MakeAccount, camera_key, new_address

WIFI_PASSWORD = "Sup3r-Secret-WiFi-Pw"
MODEL = "EZ-C31"
ONBOARDING = "/api/v1/onboarding"
ACTIVATE = "/api/v1/devices/activate"


@asynccontextmanager
async def camera(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A camera: an HTTP client with a client address of its own."""
    transport = httpx.ASGITransport(app=app, client=(new_address(), 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def ticket_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device_name": "Front door",
        "camera_model": MODEL,
        "wifi_ssid": "Home network",
        "wifi_password": WIFI_PASSWORD,
    }
    body.update(changes)
    return body


async def onboard(client: httpx.AsyncClient, account: Account, **changes: Any) -> dict[str, Any]:
    r = await client.post(ONBOARDING, json=ticket_body(**changes), headers=account.headers)
    assert r.status_code == 201, r.text
    ticket: dict[str, Any] = r.json()
    return ticket


def token_of(ticket: dict[str, Any]) -> str:
    return decode_qr_payload(ticket["payload"]).t


def activation(token: str, uid: str | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token": token,
        "device_uid": uid or "cam-" + secrets.token_hex(8),
        "camera_model": MODEL,
        "firmware_version": "1.2.3",
        "public_key": camera_key()[1],
    }
    body.update(changes)
    return body


async def status_of(
    client: httpx.AsyncClient, account: Account, ticket: dict[str, Any]
) -> dict[str, Any]:
    r = await client.get(f"{ONBOARDING}/{ticket['ticket_id']}", headers=account.headers)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def expire(ticket: dict[str, Any]) -> None:
    result = await OnboardingTicket.get_pymongo_collection().update_one(
        {"_id": ObjectId(ticket["ticket_id"])},
        {"$set": {"expires_at": datetime.now(UTC) - timedelta(minutes=1)}},
    )
    assert result.modified_count == 1


def error_code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


# creating a ticket ----------------------------------------------------------------------


async def test_a_ticket_carries_a_qr_code_that_decodes_to_exactly_its_payload(
    client: httpx.AsyncClient, make_account: MakeAccount, settings: Settings
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)

    png_url: str = ticket["qr_png"]
    prefix = "data:image/png;base64,"
    assert png_url.startswith(prefix)
    png = base64.b64decode(png_url.removeprefix(prefix), validate=True)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    decoded, points, _ = cv2.QRCodeDetectorAruco().detectAndDecode(image)
    assert points is not None
    assert decoded == ticket["payload"]

    payload = decode_qr_payload(ticket["payload"])
    assert payload.v == 1
    assert payload.u == settings.public_url
    assert payload.s == "Home network"
    assert payload.p == WIFI_PASSWORD
    assert payload.m == MODEL
    assert len(payload.t) == 22

    svg = ET.fromstring(ticket["qr_svg"])
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(list(svg.iter())) > 1


async def test_a_ticket_expires_within_ten_minutes_and_each_has_its_own_token(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    before = datetime.now(UTC)
    first = await onboard(client, account)
    second = await onboard(client, account)
    expires_at = datetime.fromisoformat(first["expires_at"])
    assert before < expires_at <= datetime.now(UTC) + timedelta(minutes=10)
    assert expires_at - before > timedelta(minutes=9)
    assert first["ticket_id"] != second["ticket_id"]
    assert token_of(first) != token_of(second)
    status = await status_of(client, account, first)
    assert status["status"] == "pending"
    assert status["device_id"] is None
    assert status["expires_at"] == first["expires_at"]


async def test_an_open_network_needs_no_password(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    ticket = await onboard(client, account, wifi_password="")
    assert decode_qr_payload(ticket["payload"]).p == ""


async def test_onboarding_requires_a_signed_in_user(client: httpx.AsyncClient) -> None:
    r = await client.post(ONBOARDING, json=ticket_body())
    assert error_code(r) == (401, "unauthenticated")
    assert WIFI_PASSWORD not in r.text
    r = await client.post(
        ONBOARDING, json=ticket_body(), headers={"Authorization": "Bearer not-a-token"}
    )
    assert r.status_code == 401
    r = await client.get(f"{ONBOARDING}/{ObjectId()}")
    assert r.status_code == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"wifi_password": "Sup3r-S"},  # 7 characters
        {"wifi_password": "z" * 64},  # 64 characters that are not hex
        {"wifi_password": WIFI_PASSWORD + "\x01"},
        {"wifi_password": WIFI_PASSWORD + "é"},
        {"wifi_ssid": "a" * 33},
        {"wifi_ssid": ""},
        {"device_name": ""},
        {"device_name": "x" * 65},
        {"camera_model": "bad model!"},
        {"unexpected": WIFI_PASSWORD},
        {"device_name": None},
    ],
)
async def test_bad_onboarding_bodies_are_refused_without_echoing_the_password(
    client: httpx.AsyncClient, make_account: MakeAccount, changes: dict[str, Any]
) -> None:
    account = await make_account()
    r = await client.post(ONBOARDING, json=ticket_body(**changes), headers=account.headers)
    assert error_code(r) == (422, "invalid_request")
    assert WIFI_PASSWORD not in r.text
    assert "Sup3r-S" not in r.text


# activation -----------------------------------------------------------------------------


async def test_a_camera_activates_once_and_the_ticket_reports_its_device(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    ticket = await onboard(client, account, device_name="Garden")
    body = activation(token_of(ticket))
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json=body)
        assert r.status_code == 201, r.text
        activated = r.json()
        assert activated["device_name"] == "Garden"
        assert activated["signaling_url"] == "ws://testserver/ws/v1/device"

        status = await status_of(client, account, ticket)
        assert status["status"] == "activated"
        assert status["device_id"] == activated["device_id"]

        device = await Device.get(ObjectId(activated["device_id"]))
        assert device is not None
        assert str(device.owner_id) == account.id
        assert device.device_uid == body["device_uid"]
        assert device.public_key == body["public_key"]
        assert device.firmware_version == "1.2.3"

        again = await cam.post(ACTIVATE, json=body)
        assert error_code(again) == (409, "ticket_used")


async def test_fifty_racing_activations_of_one_token_have_exactly_one_winner(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)
    token = token_of(ticket)
    # Fifty cameras, each from its own address, so the per-address failure cap stays out of it.
    cameras = [httpx.ASGITransport(app=app, client=(new_address(), 50000)) for _ in range(50)]
    clients = [httpx.AsyncClient(transport=t, base_url="http://testserver") for t in cameras]
    try:
        results = await asyncio.gather(*(c.post(ACTIVATE, json=activation(token)) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 49
    assert {r.json()["error"]["code"] for r in results if r.status_code == 409} == {"ticket_used"}
    winner = next(r.json() for r in results if r.status_code == 201)
    status = await status_of(client, account, ticket)
    assert status == {**status, "status": "activated", "device_id": winner["device_id"]}


async def test_an_unknown_token_is_not_found(app: Starlette) -> None:
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json=activation(secrets.token_urlsafe(16)))
    assert error_code(r) == (404, "ticket_not_found")


async def test_an_expired_token_is_gone_and_its_ticket_says_expired(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)
    await expire(ticket)
    assert (await status_of(client, account, ticket))["status"] == "expired"
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json=activation(token_of(ticket)))
    assert error_code(r) == (410, "ticket_expired")
    status = await status_of(client, account, ticket)
    assert status["status"] == "expired"
    assert status["device_id"] is None


async def test_only_the_user_who_asked_can_read_a_tickets_status(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    owner, stranger = await make_account("owner"), await make_account("stranger")
    ticket = await onboard(client, owner)
    r = await client.get(f"{ONBOARDING}/{ticket['ticket_id']}", headers=stranger.headers)
    assert error_code(r) == (404, "ticket_not_found")
    assert (await status_of(client, owner, ticket))["status"] == "pending"


@pytest.mark.parametrize("ticket_id", ["nope", "abcdefghijkl", "z" * 24, str(ObjectId())])
async def test_invalid_or_unknown_ticket_ids_are_not_found(
    client: httpx.AsyncClient, make_account: MakeAccount, ticket_id: str
) -> None:
    account = await make_account()
    r = await client.get(f"{ONBOARDING}/{ticket_id}", headers=account.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] in ("not_found", "ticket_not_found")


@pytest.mark.parametrize(
    "public_key",
    [
        "",
        "not base64 at all!",
        base64.b64encode(b"\xfb" * 32).decode(),  # standard, not URL-safe, alphabet
        base64.urlsafe_b64encode(bytes(31)).decode(),
        base64.urlsafe_b64encode(bytes(33)).decode(),
        base64.urlsafe_b64encode(bytes(64)).decode(),
        base64.urlsafe_b64encode(bytes(32)).decode() + "==",
    ],
)
async def test_a_public_key_that_is_not_32_bytes_of_url_safe_base64_is_invalid(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount, public_key: str
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json=activation(token_of(ticket), public_key=public_key))
        assert error_code(r) == (422, "invalid_request")
        assert (await status_of(client, account, ticket))["status"] == "pending"
        # The refusal did not burn the ticket.
        assert (await cam.post(ACTIVATE, json=activation(token_of(ticket)))).status_code == 201


async def test_a_camera_of_another_model_cannot_use_the_ticket(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json=activation(token_of(ticket), camera_model="OTHER-1"))
        assert error_code(r) == (422, "invalid_request")
        assert (await status_of(client, account, ticket))["status"] == "pending"
        assert (await cam.post(ACTIVATE, json=activation(token_of(ticket)))).status_code == 201


@pytest.mark.parametrize(
    "changes",
    [
        {"token": "short"},
        {"device_uid": "x"},
        {"firmware_version": ""},
        {"camera_model": ""},
        {"extra": 1},
    ],
)
async def test_bad_activation_bodies_are_invalid(app: Starlette, changes: dict[str, Any]) -> None:
    async with camera(app) as cam:
        r = await cam.post(ACTIVATE, json={**activation(secrets.token_urlsafe(16)), **changes})
    assert error_code(r) == (422, "invalid_request")


async def test_a_camera_bound_to_another_owner_is_refused_and_the_ticket_stays_usable(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    first, second = await make_account("first"), await make_account("second")
    uid = "cam-" + secrets.token_hex(8)
    async with camera(app) as cam:
        taken = await cam.post(
            ACTIVATE, json=activation(token_of(await onboard(client, first)), uid)
        )
        assert taken.status_code == 201

        ticket = await onboard(client, second)
        r = await cam.post(ACTIVATE, json=activation(token_of(ticket), uid))
        assert error_code(r) == (409, "device_bound_to_another_owner")
        assert (await status_of(client, second, ticket))["status"] == "pending"
        device = await Device.get(ObjectId(taken.json()["device_id"]))
        assert device is not None
        assert str(device.owner_id) == first.id

        # The right camera can still use the ticket.
        right = await cam.post(ACTIVATE, json=activation(token_of(ticket)))
        assert right.status_code == 201, right.text
        status = await status_of(client, second, ticket)
        assert (status["status"], status["device_id"]) == ("activated", right.json()["device_id"])


async def test_a_camera_removed_by_its_owner_can_be_activated_by_someone_else(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    first, second = await make_account("first"), await make_account("second")
    uid = "cam-" + secrets.token_hex(8)
    async with camera(app) as cam:
        taken = await cam.post(
            ACTIVATE, json=activation(token_of(await onboard(client, first)), uid)
        )
        assert taken.status_code == 201
        ticket = await onboard(client, second)
        refused = await cam.post(ACTIVATE, json=activation(token_of(ticket), uid))
        assert refused.status_code == 409

        removed = await client.delete(
            f"/api/v1/devices/{taken.json()['device_id']}", headers=first.headers
        )
        assert removed.status_code == 204
        r = await cam.post(ACTIVATE, json=activation(token_of(ticket), uid))
        assert r.status_code == 201, r.text

    listed = await client.get("/api/v1/devices", headers=second.headers)
    assert [d["id"] for d in listed.json()["devices"]] == [r.json()["device_id"]]
    assert (await client.get("/api/v1/devices", headers=first.headers)).json()["devices"] == []


async def test_re_onboarding_the_same_camera_keeps_its_id_and_stores_the_new_key(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    uid = "cam-" + secrets.token_hex(8)
    async with camera(app) as cam:
        first = await cam.post(
            ACTIVATE, json=activation(token_of(await onboard(client, account)), uid)
        )
        assert first.status_code == 201
        # Factory reset: a new key, a new firmware, a new onboarding with another name.
        _, new_key = camera_key()
        ticket = await onboard(client, account, device_name="Back door")
        second = await cam.post(
            ACTIVATE,
            json=activation(token_of(ticket), uid, public_key=new_key, firmware_version="2.0"),
        )
        assert second.status_code == 201, second.text
    assert second.json()["device_id"] == first.json()["device_id"]
    assert second.json()["device_name"] == "Back door"
    devices = await Device.find(Device.device_uid == uid).to_list()
    assert len(devices) == 1
    assert devices[0].public_key == new_key
    assert devices[0].firmware_version == "2.0"
    listed = await client.get("/api/v1/devices", headers=account.headers)
    assert [d["id"] for d in listed.json()["devices"]] == [first.json()["device_id"]]


async def test_failed_activations_are_capped_per_client_address(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount, settings: Settings
) -> None:
    account = await make_account()
    ticket = await onboard(client, account)
    async with camera(app) as guesser:
        for _ in range(settings.activation_max_failures_per_address):
            r = await guesser.post(ACTIVATE, json=activation(secrets.token_urlsafe(16)))
            assert error_code(r) == (404, "ticket_not_found")
        r = await guesser.post(ACTIVATE, json=activation(token_of(ticket)))
        assert error_code(r) == (429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 901
    # The refused attempt left the ticket alone, and other addresses are unaffected.
    assert (await status_of(client, account, ticket))["status"] == "pending"
    async with camera(app) as cam:
        assert (await cam.post(ACTIVATE, json=activation(token_of(ticket)))).status_code == 201


# secrets --------------------------------------------------------------------------------


async def test_the_wifi_password_is_never_stored_or_logged(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account = await make_account()
    ticket = await onboard(client, account)
    token = token_of(ticket)
    refused = await client.post(
        ONBOARDING, json=ticket_body(wifi_ssid="a" * 40), headers=account.headers
    )
    assert refused.status_code == 422
    async with camera(app) as cam:
        assert (await cam.post(ACTIVATE, json=activation(token))).status_code == 201
        assert (await cam.post(ACTIVATE, json=activation(token))).status_code == 409
    assert (await status_of(client, account, ticket))["status"] == "activated"

    database = User.get_pymongo_collection().database
    names = await database.list_collection_names()
    assert "onboarding_tickets" in names
    dumped = []
    for name in names:
        async for document in database[name].find({}):
            dumped.append(repr(document))
    everything = "\n".join(dumped)
    assert ticket["ticket_id"] in everything  # the dump does see the ticket
    assert WIFI_PASSWORD not in everything
    assert token not in everything  # tokens are stored hashed

    assert caplog.records  # the requests did log
    assert WIFI_PASSWORD not in caplog.text
    for record in caplog.records:
        shown = [record.getMessage(), str(record.msg), repr(record.args), str(record.exc_text)]
        assert all(WIFI_PASSWORD not in s for s in shown), record
        assert all(token not in s for s in shown), record
