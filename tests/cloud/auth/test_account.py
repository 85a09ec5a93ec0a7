"""Sign-ins end everywhere (logout, a password change, the account's removal): refresh
tokens, access tokens and the connections opened with them; the account's removal takes
everything of it."""

import httpx
import pytest
from beanie import PydanticObjectId

from cloud.devices.models import Device, Share
from cloud.events.models import EventThread
from cloud.notify.models import Webhook
from tests.cloud.events.test_routes import RELAY, relay, report  # noqa: F401 (a fixture)
from tests.cloud.signaling.test_sse import stream
from tests.conftest import PASSWORD, Account, ActivateDevice, MakeAccount, share
from tests.peers import Peer, camera, connect, viewer

NEW_PASSWORD = "Another-Horse-43-battery"


async def sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Account:
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return Account(email, "", login.json())


async def me(client: httpx.AsyncClient, who: Account) -> int:
    return (await client.get("/api/v1/me", headers=who.headers)).status_code


async def renew(client: httpx.AsyncClient, who: Account) -> int:
    body = {"refresh_token": who.tokens["refresh_token"]}
    return (await client.post("/api/v1/auth/refresh", json=body)).status_code


async def test_logout_ends_the_sign_in_its_access_token_its_socket_and_its_stream(
    ws_base: str, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    phone = await make_account("leaving")
    laptop = await sign_in(client, phone.email)
    phone_socket, laptop_socket = await viewer(ws_base, phone), await viewer(ws_base, laptop)
    base = ws_base.replace("ws://", "http://")
    async with stream(base, phone.tokens["access_token"]) as events:
        assert (await events.next())["event"] == "welcome"
        body = {"refresh_token": phone.tokens["refresh_token"]}
        logout = await client.post("/api/v1/auth/logout", json=body, headers=phone.headers)
        assert logout.status_code == 204
        bye = await events.expect("go_away")
        assert bye["data"]["reason"] == "token_revoked"
        with pytest.raises(EOFError):
            await events.next(3)
    assert await me(client, phone) == 401  # not 15 more minutes of access
    assert await renew(client, phone) == 401
    assert await phone_socket.closed_with() == 4401
    again = await connect(ws_base, "/ws/v1/client", phone.tokens["access_token"])
    assert await again.closed_with() == 4401
    assert await me(client, laptop) == 200  # another sign-in of the same account goes on
    assert await laptop_socket.quiet(0.5) == []


async def test_a_new_password_ends_every_other_sign_in_and_keeps_this_one(
    ws_base: str, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    mine = await make_account("changer")
    stolen = await sign_in(client, mine.email)
    thief = await viewer(ws_base, stolen)
    url = "/api/v1/me/password"
    wrong = {"current_password": "not-it-at-all", "new_password": NEW_PASSWORD}
    r = await client.post(url, json=wrong, headers=mine.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_credentials")
    weak = {"current_password": PASSWORD, "new_password": "password123"}
    assert (await client.post(url, json=weak, headers=mine.headers)).status_code == 422
    same = {"current_password": PASSWORD, "new_password": PASSWORD}
    assert (await client.post(url, json=same, headers=mine.headers)).status_code == 422
    assert await me(client, stolen) == 200  # nothing changed yet
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert (await client.post(url, json=body, headers=mine.headers)).status_code == 204
    assert await thief.closed_with() == 4401
    assert await me(client, stolen) == 401
    assert await renew(client, stolen) == 401
    assert await me(client, mine) == 200
    assert await renew(client, mine) == 200
    old = {"email": mine.email, "password": PASSWORD}
    assert (await client.post("/api/v1/auth/login", json=old)).status_code == 401
    await sign_in(client, mine.email, NEW_PASSWORD)


async def test_removing_the_account_takes_everything_of_it_and_its_cameras_stop(
    ws_base: str,
    relay: Peer,  # noqa: F811
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend = await make_account("departing"), await make_account("staying")
    theirs = await activate_device(owner, "Porch")
    others = await activate_device(friend, "Garden")
    assert (await share(client, owner, theirs, friend)).status_code == 201
    assert (await share(client, friend, others, owner)).status_code == 201
    posted = await client.post(
        "/api/v1/relays/events", json=report(theirs.id, "t-gone", "new"), headers=RELAY
    )
    assert posted.status_code == 200, posted.text
    hook = await client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=owner.headers
    )
    assert hook.status_code == 201, hook.text
    porch, garden = await camera(ws_base, theirs), await camera(ws_base, others)
    owner_socket = await viewer(ws_base, owner)

    wrong = await client.request(
        "DELETE", "/api/v1/me", json={"password": "not-it-at-all"}, headers=owner.headers
    )
    assert wrong.status_code == 401
    gone = await client.request(
        "DELETE", "/api/v1/me", json={"password": PASSWORD}, headers=owner.headers
    )
    assert gone.status_code == 204, gone.text

    assert await porch.closed_with() == 4404  # told: removed, it stops
    assert await owner_socket.closed_with() == 4401
    assert await me(client, owner) == 401
    login = {"email": owner.email, "password": PASSWORD}
    assert (await client.post("/api/v1/auth/login", json=login)).status_code == 401
    assert await Device.get(theirs.id) is None
    assert await EventThread.find(EventThread.thread_id == "t-gone").count() == 0
    ids = [PydanticObjectId(theirs.id), PydanticObjectId(others.id)]
    assert await Share.find({"device_id": {"$in": ids}}).count() == 0
    assert await Webhook.find({"url": "http://127.0.0.1:9/hook"}).count() == 0
    # the friend keeps their camera, which no longer counts the departed as a viewer
    listed = (await client.get("/api/v1/devices", headers=friend.headers)).json()["devices"]
    assert [d["id"] for d in listed] == [others.id]
    assert await garden.quiet(0.5) == []
