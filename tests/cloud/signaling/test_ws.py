"""The signaling endpoints over real WebSockets on loopback (one cloud instance)."""

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.auth.tokens import AccessTokens
from cloud.settings import Settings
from cloud.signaling.bus import MemoryBus
from cloud.signaling.deliveries import Delivery, Send
from cloud.signaling.ws import Signaling
from device_sim.identity import assertion
from protocol.messages import DevicePresence
from tests.conftest import Account, ActivatedDevice, ActivateDevice, MakeAccount, share
from tests.peers import AUDIENCE, Peer, camera, connect, viewer


async def open_session(cam: Peer, view: Peer, device_id: str) -> str:
    await view.send({"type": "session.request", "id": "r1", "device_id": device_id, "mode": "p2p"})
    created = await view.expect("session.created")
    assert created["id"] == "r1"
    assert created["route"] == "p2p"
    assert isinstance(created["ice_servers"], list)
    sid: str = created["session_id"]
    await view.send({"type": "session.offer", "session_id": sid, "sdp": "v=0 offer"})
    offer = await cam.expect("session.offer")
    assert offer["sdp"] == "v=0 offer"
    assert offer["session_id"] == sid
    return sid


async def test_offer_answer_and_ice_round_trip_between_viewer_and_camera(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    sid = await open_session(cam, view, device.id)
    await cam.send({"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"})
    assert (await view.expect("session.answer"))["sdp"] == "v=0 answer"
    cand = {
        "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    await view.send({"type": "session.ice", "session_id": sid, "candidate": cand})
    assert (await cam.expect("session.ice"))["candidate"] == cand
    await cam.send({"type": "session.ice", "session_id": sid, "candidate": None})
    end_of_candidates = await view.expect("session.ice")
    assert end_of_candidates["candidate"] is None  # the key is there: null, not missing
    await view.send({"type": "session.end", "session_id": sid, "reason": "user_hangup"})
    assert (await cam.expect("session.end"))["reason"] == "peer_hangup"
    await view.send({"type": "ping", "id": "p"})
    assert (await view.expect("pong"))["id"] == "p"


async def test_presence_and_activation_reach_the_owner_and_sharer_and_never_a_stranger(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    owner_ws, stranger_ws = await viewer(ws_base, owner), await viewer(ws_base, stranger)
    device = await activate_device(owner)
    activated = await owner_ws.expect("device.activated")
    assert activated["device_id"] == device.id
    assert (await share(client, owner, device, friend)).status_code == 201
    friend_ws = await viewer(ws_base, friend)
    cam = await camera(ws_base, device)
    for peer in (owner_ws, friend_ws):
        presence = await peer.expect("device.presence")
        assert (presence["device_id"], presence["online"]) == (device.id, True)
    listed = await client.get("/api/v1/devices", headers=owner.headers)
    assert listed.json()["devices"][0]["online"] is True
    # The stranger asks for a session: refused as unknown, and nothing else ever arrives.
    await stranger_ws.send({"type": "session.request", "id": "s", "device_id": device.id})
    refused = await stranger_ws.recv()
    assert refused == {
        "type": "status",
        "id": "s",
        "ok": False,
        "error": {"code": "device_not_found", "message": "no such device"},
    }
    await cam.socket.close()
    for peer in (owner_ws, friend_ws):
        assert (await peer.expect("device.presence"))["online"] is False
    assert await stranger_ws.quiet(0.5) == []
    assert [m["type"] for m in stranger_ws.seen] == ["welcome", "status"]


async def test_unsharing_and_deleting_end_live_sessions_at_once(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    cam, friend_ws, owner_ws = (
        await camera(ws_base, device),
        await viewer(ws_base, friend),
        await viewer(ws_base, owner),
    )
    friend_sid = await open_session(cam, friend_ws, device.id)
    owner_sid = await open_session(cam, owner_ws, device.id)
    r = await client.delete(
        f"/api/v1/devices/{device.id}/shares/{friend.id}", headers=owner.headers
    )
    assert r.status_code == 204
    assert (await friend_ws.expect("session.end")) == {
        "type": "session.end",
        "session_id": friend_sid,
        "reason": "access_revoked",
    }
    assert (await cam.expect("session.end"))["session_id"] == friend_sid
    revoked_at = len(friend_ws.seen)
    # The former viewer cannot open a new one.
    await friend_ws.send({"type": "session.request", "id": "again", "device_id": device.id})
    assert (await friend_ws.expect("status"))["error"]["code"] == "device_not_found"
    r = await client.delete(f"/api/v1/devices/{device.id}", headers=owner.headers)
    assert r.status_code == 204
    assert (await owner_ws.expect("session.end")) == {
        "type": "session.end",
        "session_id": owner_sid,
        "reason": "device_removed",
    }
    assert await cam.closed_with() == 4404
    await friend_ws.quiet(0.5)
    after = [m["type"] for m in friend_ws.seen[revoked_at:]]
    assert after == ["status"]  # only the refusal: no presence, no session message


async def test_impersonation_is_refused_and_the_live_camera_keeps_working(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    live = await camera(ws_base, device)
    now = int(time.time())
    reused = assertion(device.private_key, device.id, AUDIENCE)
    first = await connect(ws_base, "/ws/v1/device", reused)
    assert (await first.recv())["type"] == "welcome"  # this one replaces `live` ...
    assert (await live.expect("go_away"))["reconnect_after_ms"] == 0
    live = first  # ... and from now on must keep working.
    forged = [
        device.id,  # the device id alone
        assertion(Ed25519PrivateKey.generate(), device.id, AUDIENCE),  # a wrong key
        jwt.encode(
            {
                "sub": device.id,
                "aud": AUDIENCE,
                "iat": now - 600,
                "exp": now - 300,
                "jti": "expired-1",
            },
            device.private_key,
            algorithm="EdDSA",
        ),
        jwt.encode(
            {"sub": device.id, "aud": AUDIENCE, "iat": now, "exp": now + 3600, "jti": "too-long-1"},
            device.private_key,
            algorithm="EdDSA",
        ),
        assertion(device.private_key, device.id, "http://another-cloud"),
        reused,  # a replayed jti
    ]
    for token in forged:
        intruder = await connect(ws_base, "/ws/v1/device", token)
        assert await intruder.closed_with() == 4401, token
    await live.send({"type": "ping", "id": "still-here"})
    assert (await live.expect("pong"))["id"] == "still-here"


async def test_bad_frames_get_status_errors_and_floods_close_with_1008(
    ws_base: str, make_account: MakeAccount
) -> None:
    owner = await make_account("owner")
    view = await viewer(ws_base, owner)
    bystander = await viewer(ws_base, owner)
    await view.socket.send("{not json")
    assert (await view.recv())["error"]["code"] == "malformed_request"
    await view.send({"type": "teleport", "id": "t1"})
    unknown = await view.recv()
    assert (unknown["id"], unknown["error"]["code"]) == ("t1", "unknown_type")
    await view.send({"type": "session.request", "id": "bad"})
    assert (await view.recv())["error"]["code"] == "invalid_request"
    for _ in range(25):
        await view.socket.send("[]")
    assert await view.closed_with() == 1008
    await bystander.send({"type": "ping", "id": "ok"})
    assert (await bystander.expect("pong"))["id"] == "ok"


async def test_oversize_frames_close_with_1009(ws_base: str, make_account: MakeAccount) -> None:
    owner = await make_account("owner")
    view = await viewer(ws_base, owner)
    await view.socket.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
    assert await view.closed_with() == 1009


async def test_a_silent_connection_is_closed_with_4401_after_5_seconds(ws_base: str) -> None:
    socket = await websockets.connect(ws_base + "/ws/v1/client")
    started = time.monotonic()
    assert await Peer(socket).closed_with(timeout=8) == 4401
    assert 4.5 < time.monotonic() - started < 7


async def test_bad_user_and_relay_credentials_are_refused_with_4401(ws_base: str) -> None:
    for path, token in [("/ws/v1/client", "not-a-jwt"), ("/ws/v1/relay", "relay-1:wrong")]:
        peer = await connect(ws_base, path, token)
        assert await peer.closed_with() == 4401


async def test_ice_servers_are_served_to_users_and_cameras(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    r = await client.get("/api/v1/ice-servers", headers=owner.headers)
    assert r.status_code == 200
    assert r.json() == {"ice_servers": [], "ttl": 3600}
    token = assertion(device.private_key, device.id, AUDIENCE)
    assert (
        await client.get("/api/v1/ice-servers", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    assert (
        await client.get("/api/v1/ice-servers", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 401
    assert (await client.get("/api/v1/ice-servers")).status_code == 401


async def test_a_camera_dropping_mid_session_ends_it_and_the_record_keeps_the_reason(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    from cloud.signaling.models import SessionRecord

    owner = await make_account("owner")
    device = await activate_device(owner)
    cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    sid = await open_session(cam, view, device.id)
    await cam.send({"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"})
    await view.expect("session.answer")
    await cam.socket.close()
    ended = await view.expect("session.end")
    assert ended == {"type": "session.end", "session_id": sid, "reason": "device_offline"}
    # The record is written after the messages go out (a slow database delays none).
    async with asyncio.timeout(5):
        while (record := await SessionRecord.find_one(SessionRecord.session_id == sid)) is None or (
            record.ended_at is None
        ):
            await asyncio.sleep(0.05)
    assert str(record.device_id) == device.id
    assert record.viewer_id == owner.id
    assert record.answered_at is not None
    assert record.ended_at is not None
    assert record.end_reason == "device_offline"
    # The camera comes back and a new session plays.
    cam = await camera(ws_base, device)
    await open_session(cam, view, device.id)


async def test_a_viewer_leaving_tells_the_camera(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    sid = await open_session(cam, view, device.id)
    await view.socket.close()
    assert await cam.expect("session.end") == {
        "type": "session.end",
        "session_id": sid,
        "reason": "peer_hangup",
    }


async def reonboard(
    client: httpx.AsyncClient, owner: Account, uid: str
) -> tuple[str, Ed25519PrivateKey]:
    from device_sim.identity import public_key_b64

    ticket = await client.post(
        "/api/v1/onboarding",
        json={
            "device_name": "Again",
            "camera_model": "EZ-C31",
            "wifi_ssid": "Home",
            "wifi_password": "",
        },
        headers=owner.headers,
    )
    key = Ed25519PrivateKey.generate()
    activated = await client.post(
        "/api/v1/devices/activate",
        json={
            "token": json.loads(ticket.json()["payload"])["t"],
            "device_uid": uid,
            "camera_model": "EZ-C31",
            "firmware_version": "1.0.1",
            "public_key": public_key_b64(key),
        },
    )
    assert activated.status_code == 201, activated.text
    return activated.json()["device_id"], key


async def test_a_factory_reset_camera_reonboarded_by_its_owner_drops_the_old_key(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    old_cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    sid = await open_session(old_cam, view, device.id)
    device_id, new_key = await reonboard(client, owner, device.uid)
    assert device_id == device.id
    assert await view.expect("session.end") == {
        "type": "session.end",
        "session_id": sid,
        "reason": "device_removed",
    }
    assert await old_cam.closed_with() == 4404
    stale = await connect(
        ws_base, "/ws/v1/device", assertion(device.private_key, device.id, AUDIENCE)
    )
    assert await stale.closed_with() == 4401
    new_cam = await camera(ws_base, device, key=new_key)
    await open_session(new_cam, view, device.id)


async def test_after_removal_and_onboarding_by_someone_else_the_old_owner_hears_nothing(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    first, friend, second = (
        await make_account("first"),
        await make_account("friend"),
        await make_account("second"),
    )
    device = await activate_device(first)
    assert (await share(client, first, device, friend)).status_code == 201
    first_ws, friend_ws = await viewer(ws_base, first), await viewer(ws_base, friend)
    assert (
        await client.delete(f"/api/v1/devices/{device.id}", headers=first.headers)
    ).status_code == 204
    new_id, new_key = await reonboard(client, second, device.uid)
    second_ws = await viewer(ws_base, second)
    cam = await camera(ws_base, ActivatedDevice(new_id, device.uid, "Again", new_key))
    assert (await second_ws.expect("device.presence"))["device_id"] == new_id
    await cam.socket.close()
    cam = await camera(
        ws_base, ActivatedDevice(new_id, device.uid, "Again", new_key)
    )  # a reconnect
    await open_session(cam, second_ws, new_id)
    for old in (first_ws, friend_ws):
        await old.send({"type": "session.request", "id": "x", "device_id": new_id})
        assert (await old.expect("status"))["error"]["code"] == "device_not_found"
        await old.quiet(0.5)
        assert [m["type"] for m in old.seen] == ["welcome", "status"]
    listed = await client.get("/api/v1/devices", headers=first.headers)
    assert listed.json() == {"devices": []}


class RecordingSocket:
    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    @property
    def is_open(self) -> bool:
        return True

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        pass


async def test_the_welcome_is_the_first_frame_even_when_a_push_overtakes_it(
    settings: Settings,
) -> None:
    """A push on a channel the connection has just subscribed (presence, an event) may come
    while its welcome is still being made; it goes out after the welcome."""
    bus = MemoryBus()
    await bus.start()
    tokens = AccessTokens(settings.resolved_jwt_secret(), settings.public_url, 900)
    signaling = Signaling(settings, bus, tokens, "test")
    socket = RecordingSocket()
    conn = signaling.attach(socket, "user", "u1")
    connect = signaling.hub.connect

    def connect_and_push(*args: Any) -> list[Delivery]:
        push = DevicePresence(device_id="d1", online=True)
        return [*connect(*args), Send(conn, push)]

    signaling.hub.connect = connect_and_push  # type: ignore[method-assign]
    await signaling.welcome(conn, "user", "u1", None)
    assert [frame["type"] for frame in socket.frames] == ["welcome", "device.presence"]
    await bus.close()
