from typing import Any

import httpx
import pytest
from bson import ObjectId

from cloud.devices.models import Share
from tests.conftest import Account, ActivatedDevice, ActivateDevice, MakeAccount, share

DEVICES = "/api/v1/devices"


def error_code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def listed(client: httpx.AsyncClient, account: Account) -> dict[str, str]:
    """Device id -> role, as the account's device list shows them."""
    r = await client.get(DEVICES, headers=account.headers)
    assert r.status_code == 200, r.text
    return {d["id"]: d["role"] for d in r.json()["devices"]}


async def read_as_owner(
    client: httpx.AsyncClient, owner: Account, device: ActivatedDevice
) -> dict[str, Any]:
    r = await client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def share_emails(
    client: httpx.AsyncClient, owner: Account, device: ActivatedDevice
) -> list[str]:
    r = await client.get(f"{DEVICES}/{device.id}/shares", headers=owner.headers)
    assert r.status_code == 200, r.text
    return [s["email"] for s in r.json()["shares"]]


# reading --------------------------------------------------------------------------------


async def test_the_owner_sees_an_activated_camera_in_the_list_and_by_id(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account()
    device = await activate_device(owner, "Porch")
    r = await client.get(DEVICES, headers=owner.headers)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "private, no-store"
    [entry] = r.json()["devices"]
    assert entry["id"] == device.id
    assert entry["name"] == "Porch"
    assert entry["role"] == "owner"
    assert entry["camera_model"] == "EZ-C31"
    assert entry["firmware_version"] == "1.0.0"
    assert entry["online"] is False
    assert entry["last_seen"] is None
    assert "public_key" not in entry
    assert "device_uid" not in entry

    one = await client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert one.status_code == 200
    assert one.headers["cache-control"] == "private, no-store"
    assert one.json() == entry


async def test_the_list_holds_owned_and_shared_cameras_each_with_its_role(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    alice, bob = await make_account("alice"), await make_account("bob")
    alices = await activate_device(alice, "Alice's hall")
    bobs = await activate_device(bob, "Bob's garage")
    assert (await share(client, alice, alices, bob)).status_code == 201

    assert await listed(client, bob) == {bobs.id: "owner", alices.id: "viewer"}
    assert await listed(client, alice) == {alices.id: "owner"}
    viewed = await client.get(f"{DEVICES}/{alices.id}", headers=bob.headers)
    assert viewed.status_code == 200
    assert viewed.json()["role"] == "viewer"
    assert viewed.json()["name"] == "Alice's hall"


async def test_a_new_account_has_no_cameras(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    assert await listed(client, await make_account()) == {}


async def test_device_routes_require_a_signed_in_user(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account()
    device = await activate_device(owner)
    path = f"{DEVICES}/{device.id}"
    for method, url, body in [
        ("GET", DEVICES, None),
        ("GET", path, None),
        ("PATCH", path, {"name": "Hijacked"}),
        ("DELETE", path, None),
        ("POST", path + "/shares", {"email": owner.email}),
        ("GET", path + "/shares", None),
        ("DELETE", f"{path}/shares/{owner.id}", None),
    ]:
        r = await client.request(method, url, json=body)
        assert error_code(r) == (401, "unauthenticated"), (method, url)
    assert (await read_as_owner(client, owner, device))["name"] == device.name


# renaming and removing ------------------------------------------------------------------


async def test_the_owner_renames_a_camera(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account()
    device = await activate_device(owner, "Old name")
    r = await client.patch(
        f"{DEVICES}/{device.id}", json={"name": "  Kitchen  "}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "private, no-store"
    assert r.json()["name"] == "Kitchen"
    assert r.json()["role"] == "owner"
    assert (await read_as_owner(client, owner, device))["name"] == "Kitchen"


@pytest.mark.parametrize(
    "body", [{"name": ""}, {"name": "   "}, {"name": "x" * 65}, {"name": "a\nb"}, {}, {"name": 3}]
)
async def test_bad_names_are_refused_and_the_name_stays(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    body: dict[str, Any],
) -> None:
    owner = await make_account()
    device = await activate_device(owner, "Kept")
    r = await client.patch(f"{DEVICES}/{device.id}", json=body, headers=owner.headers)
    assert error_code(r) == (422, "invalid_request")
    assert (await read_as_owner(client, owner, device))["name"] == "Kept"


async def test_the_owner_removes_a_camera(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account()
    kept = await activate_device(owner, "Kept")
    removed = await activate_device(owner, "Removed")
    r = await client.delete(f"{DEVICES}/{removed.id}", headers=owner.headers)
    assert r.status_code == 204
    assert r.content == b""
    assert await listed(client, owner) == {kept.id: "owner"}
    gone = await client.get(f"{DEVICES}/{removed.id}", headers=owner.headers)
    assert error_code(gone) == (404, "device_not_found")
    again = await client.delete(f"{DEVICES}/{removed.id}", headers=owner.headers)
    assert error_code(again) == (404, "device_not_found")


# strangers and viewers ------------------------------------------------------------------


async def test_a_stranger_can_neither_see_nor_touch_another_users_camera(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner, "Private")
    assert (await share(client, owner, device, friend)).status_code == 201
    path = f"{DEVICES}/{device.id}"
    attempts = [
        ("GET", path, None),
        ("PATCH", path, {"name": "Pwned"}),
        ("DELETE", path, None),
        ("POST", path + "/shares", {"email": stranger.email, "role": "viewer"}),
        ("GET", path + "/shares", None),
        ("DELETE", f"{path}/shares/{friend.id}", None),
    ]
    unknown = await client.get(f"{DEVICES}/{ObjectId()}", headers=stranger.headers)
    for method, url, body in attempts:
        r = await client.request(method, url, json=body, headers=stranger.headers)
        assert error_code(r) == (404, "device_not_found"), (method, url)
        # Indistinguishable from a device that does not exist.
        assert r.json() == unknown.json()

    assert await listed(client, stranger) == {}
    seen = await read_as_owner(client, owner, device)
    assert seen["name"] == "Private"
    assert await listed(client, owner) == {device.id: "owner"}
    assert await share_emails(client, owner, device) == [friend.email]
    assert await listed(client, friend) == {device.id: "viewer"}


async def test_a_viewer_can_see_a_camera_but_not_control_it(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, viewer, other = (
        await make_account("owner"),
        await make_account("viewer"),
        await make_account("other"),
    )
    device = await activate_device(owner, "Shared")
    assert (await share(client, owner, device, viewer)).status_code == 201
    path = f"{DEVICES}/{device.id}"

    seen = await client.get(path, headers=viewer.headers)
    assert seen.status_code == 200
    assert seen.json()["role"] == "viewer"
    for method, url, body in [
        ("PATCH", path, {"name": "Mine now"}),
        ("DELETE", path, None),
        ("POST", path + "/shares", {"email": other.email, "role": "viewer"}),
        ("GET", path + "/shares", None),
        ("DELETE", f"{path}/shares/{viewer.id}", None),
    ]:
        r = await client.request(method, url, json=body, headers=viewer.headers)
        assert error_code(r) == (403, "forbidden"), (method, url)

    assert (await read_as_owner(client, owner, device))["name"] == "Shared"
    assert await share_emails(client, owner, device) == [viewer.email]
    assert await listed(client, viewer) == {device.id: "viewer"}
    assert await listed(client, other) == {}


@pytest.mark.parametrize(
    "device_id", ["nope", "abcdefghijkl", "z" * 24, "665f1c2e9b1e8a0a1b2c3d4e0", "%00"]
)
async def test_device_ids_that_are_not_object_ids_are_not_found(
    client: httpx.AsyncClient, make_account: MakeAccount, device_id: str
) -> None:
    account = await make_account()
    path = f"{DEVICES}/{device_id}"
    for method, url, body in [
        ("GET", path, None),
        ("PATCH", path, {"name": "x"}),
        ("DELETE", path, None),
        ("POST", path + "/shares", {"email": account.email}),
        ("GET", path + "/shares", None),
        ("DELETE", f"{path}/shares/{account.id}", None),
    ]:
        r = await client.request(method, url, json=body, headers=account.headers)
        assert error_code(r) == (404, "device_not_found"), (method, url)
        assert r.headers["cache-control"] == "private, no-store"


async def test_an_unknown_device_id_is_not_found(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    r = await client.get(f"{DEVICES}/{ObjectId()}", headers=account.headers)
    assert error_code(r) == (404, "device_not_found")


# sharing --------------------------------------------------------------------------------


async def test_the_owner_shares_a_camera_and_lists_who_has_it(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, first, second = (
        await make_account("owner"),
        await make_account("first"),
        await make_account("second"),
    )
    device = await activate_device(owner)
    r = await client.post(
        f"{DEVICES}/{device.id}/shares",
        json={"email": first.email.upper()},  # role defaults to viewer
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "private, no-store"
    created = r.json()
    assert (created["user_id"], created["email"], created["role"]) == (
        first.id,
        first.email,
        "viewer",
    )
    assert (await share(client, owner, device, second)).status_code == 201

    r = await client.get(f"{DEVICES}/{device.id}/shares", headers=owner.headers)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "private, no-store"
    shares = r.json()["shares"]
    assert [(s["user_id"], s["email"], s["role"]) for s in shares] == [
        (first.id, first.email, "viewer"),
        (second.id, second.email, "viewer"),
    ]
    assert shares[0]["created_at"] == created["created_at"]


async def test_sharing_with_an_unknown_email_is_not_found(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account()
    device = await activate_device(owner)
    r = await client.post(
        f"{DEVICES}/{device.id}/shares",
        json={"email": "nobody.here@example.com", "role": "viewer"},
        headers=owner.headers,
    )
    assert error_code(r) == (404, "user_not_found")
    assert await share_emails(client, owner, device) == []


async def test_sharing_with_yourself_or_twice_is_a_conflict(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    assert error_code(await share(client, owner, device, owner)) == (409, "already_shared")
    assert (await share(client, owner, device, friend)).status_code == 201
    assert error_code(await share(client, owner, device, friend)) == (409, "already_shared")
    assert await share_emails(client, owner, device) == [friend.email]


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email"},
        {"email": "a@example.com", "role": "owner"},
        {"email": "a@example.com", "extra": True},
        {},
    ],
)
async def test_bad_share_bodies_are_invalid(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    body: dict[str, Any],
) -> None:
    owner = await make_account()
    device = await activate_device(owner)
    r = await client.post(f"{DEVICES}/{device.id}/shares", json=body, headers=owner.headers)
    assert error_code(r) == (422, "invalid_request")


async def test_revoking_a_share_removes_the_camera_from_the_viewer(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, viewer, other = (
        await make_account("owner"),
        await make_account("viewer"),
        await make_account("other"),
    )
    device = await activate_device(owner)
    assert (await share(client, owner, device, viewer)).status_code == 201
    assert (await share(client, owner, device, other)).status_code == 201
    assert await listed(client, viewer) == {device.id: "viewer"}

    r = await client.delete(f"{DEVICES}/{device.id}/shares/{viewer.id}", headers=owner.headers)
    assert r.status_code == 204
    assert await listed(client, viewer) == {}
    assert error_code(await client.get(f"{DEVICES}/{device.id}", headers=viewer.headers)) == (
        404,
        "device_not_found",
    )
    assert await share_emails(client, owner, device) == [other.email]
    assert await listed(client, other) == {device.id: "viewer"}

    again = await client.delete(f"{DEVICES}/{device.id}/shares/{viewer.id}", headers=owner.headers)
    assert error_code(again) == (404, "share_not_found")
    # Sharing again after a revocation works.
    assert (await share(client, owner, device, viewer)).status_code == 201
    assert await listed(client, viewer) == {device.id: "viewer"}


@pytest.mark.parametrize("user_id", ["nope", "abcdefghijkl", str(ObjectId())])
async def test_revoking_a_share_that_does_not_exist_is_not_found(
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    user_id: str,
) -> None:
    owner = await make_account()
    device = await activate_device(owner)
    r = await client.delete(f"{DEVICES}/{device.id}/shares/{user_id}", headers=owner.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] in ("not_found", "share_not_found")


async def test_removing_a_camera_removes_it_from_its_viewers(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, viewer = await make_account("owner"), await make_account("viewer")
    device = await activate_device(owner)
    kept = await activate_device(owner, "Kept")
    assert (await share(client, owner, device, viewer)).status_code == 201
    assert (await share(client, owner, kept, viewer)).status_code == 201

    assert (await client.delete(f"{DEVICES}/{device.id}", headers=owner.headers)).status_code == 204
    assert await listed(client, viewer) == {kept.id: "viewer"}
    r = await client.get(f"{DEVICES}/{device.id}", headers=viewer.headers)
    assert error_code(r) == (404, "device_not_found")
    assert await Share.find(Share.device_id == ObjectId(device.id)).count() == 0
    assert await Share.find(Share.device_id == ObjectId(kept.id)).count() == 1
