"""Signaling served straight from the transport (cloud.signaling.direct_socket), on loopback."""

import asyncio
import json
import time

import pytest
import websockets
from starlette.applications import Starlette
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

from cloud.signaling import direct_socket
from cloud.signaling.asgi_socket import AsgiSocket
from cloud.signaling.deliveries import Role
from cloud.signaling.direct_socket import DirectSocket
from cloud.signaling.ws import Signaling
from device_sim.identity import assertion
from tests.conftest import RELAY_SECRET, ActivatedDevice, ActivateDevice, MakeAccount, serving
from tests.peers import AUDIENCE, Peer, camera, connect, viewer


def signaling(app: Starlette) -> Signaling:
    hub: Signaling = app.state.context.signaling
    return hub


def conn_of(peer: Peer) -> str:
    welcome = peer.seen[0]
    assert welcome["type"] == "welcome"
    conn: str = welcome["connection_id"]
    return conn


async def test_cameras_viewers_and_relays_are_served_directly_other_paths_by_uvicorn(
    app: Starlette, ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    cam, view = await camera(ws_base, device), await viewer(ws_base, owner)
    relay = await connect(ws_base, "/ws/v1/relay", f"relay-direct:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    sockets = signaling(app).sockets
    assert all(isinstance(sockets[conn_of(p)], DirectSocket) for p in (cam, view, relay))
    with pytest.raises(websockets.InvalidStatus) as refused:  # uvicorn's own answer
        await websockets.connect(ws_base + "/ws/v1/nowhere")
    assert refused.value.response.status_code == 403
    await relay.socket.close()


async def test_under_plain_uvicorn_signaling_is_served_through_asgi_the_same_way(
    app: Starlette, ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    async with serving(app, ws="websockets-sansio") as plain:
        cam, view = await camera(plain, device), await viewer(plain, owner)
        assert isinstance(signaling(app).sockets[conn_of(cam)], AsgiSocket)
        assert isinstance(signaling(app).sockets[conn_of(view)], AsgiSocket)
        await view.send({"type": "session.request", "id": "r", "device_id": device.id})
        sid = (await view.expect("session.created"))["session_id"]
        await view.send({"type": "session.offer", "session_id": sid, "sdp": "v=0 offer"})
        assert (await cam.expect("session.offer"))["sdp"] == "v=0 offer"
        await cam.socket.close()


async def test_bad_frames_from_a_camera_get_status_errors_and_floods_close_with_1008(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    cam = await camera(ws_base, await activate_device(owner, "Porch"))
    bystander = await camera(ws_base, await activate_device(owner, "Yard"))
    await cam.socket.send("{not json")
    assert (await cam.recv())["error"]["code"] == "malformed_request"
    await cam.socket.send(b"\x00\x01")
    binary = await cam.recv()
    assert (binary["error"]["code"], binary["error"]["message"]) == (
        "malformed_request",
        "send text frames",
    )
    await cam.send({"type": "teleport", "id": "t1"})
    assert (await cam.recv())["error"]["code"] == "unknown_type"
    await cam.socket.send(['{"type": "ping", ', '"id": "in-fragments"}'])
    assert (await cam.expect("pong"))["id"] == "in-fragments"
    for _ in range(25):
        await cam.socket.send("[]")
    assert await cam.closed_with() == 1008
    await bystander.send({"type": "ping", "id": "ok"})
    assert (await bystander.expect("pong"))["id"] == "ok"


async def test_oversize_frames_close_with_1009_and_invalid_utf8_with_1007(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    big = await camera(ws_base, device)
    await big.socket.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
    assert await big.closed_with() == 1009
    garbled = await camera(ws_base, device)
    await garbled.socket.send(b'{"type": "ping", "id": "\xff"}', text=True)
    assert await garbled.closed_with() == 1007


async def test_a_camera_without_a_valid_hello_is_closed_with_4401(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    device = await activate_device(await make_account("owner"))
    binary = await websockets.connect(ws_base + "/ws/v1/device")
    await binary.send(json.dumps({"type": "hello", "token": "x"}).encode())
    other = await connect(ws_base, "/ws/v1/device", json.dumps({"not": "hello"}))
    silent = await websockets.connect(ws_base + "/ws/v1/device")
    started = time.monotonic()
    assert await Peer(binary).closed_with() == 4401
    assert await other.closed_with() == 4401
    assert await Peer(silent).closed_with(timeout=8) == 4401
    assert 4.5 < time.monotonic() - started < 7
    live = await camera(ws_base, device)  # and the device's next proof is served
    await live.send({"type": "ping", "id": "p"})
    assert (await live.expect("pong"))["id"] == "p"


async def test_past_max_hellos_waiting_a_connection_is_refused_with_503_at_once(
    ws_base: str,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconnect storm: connections beyond those whose hello waits are sent away to try
    again later (their backoff), instead of queueing until their cameras give up."""
    device = await activate_device(await make_account("owner"))
    monkeypatch.setattr(direct_socket.ADMISSION, "limit", 2)
    waiting = [await websockets.connect(ws_base + "/ws/v1/device") for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_base + "/ws/v1/device")
    assert refused.value.response.status_code == 503
    # Two waiting at the assumed rate: room within the second (the agent adds jitter).
    assert refused.value.response.headers["Retry-After"] == "0"
    assert time.monotonic() - started < 1
    for socket in waiting:  # they leave without a hello: their places are free again
        await socket.close()
    await asyncio.sleep(0.2)
    live = await camera(ws_base, device)
    await live.send({"type": "ping", "id": "p"})
    assert (await live.expect("pong"))["id"] == "p"


class MuteCamera:
    """A camera that authenticates, then reads nothing more: it never answers a ping."""

    def __init__(self, base: str, token: str) -> None:
        self.uri, self.token = parse_uri(base + "/ws/v1/device"), token
        self.protocol = ClientProtocol(self.uri)

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.uri.host, self.uri.port)
        self.protocol.send_request(self.protocol.connect())
        await self._until(lambda e: isinstance(e, Response))
        self.protocol.send_text(json.dumps({"type": "hello", "token": self.token}).encode())
        await self._until(lambda e: isinstance(e, Frame) and b'"welcome"' in e.data)

    async def _until(self, wanted: object) -> None:
        while True:
            for data in self.protocol.data_to_send():
                self.writer.write(data)
            chunk = await asyncio.wait_for(self.reader.read(65536), 5)
            assert chunk, "the server closed the connection"
            self.protocol.receive_data(chunk)
            if any(wanted(e) for e in self.protocol.events_received()):  # type: ignore[operator]
                return

    async def closed_by_server(self, timeout: float) -> bool:
        """Read (and never answer) until the server closes TCP: True, or False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), 0.2)
            except TimeoutError:
                continue
            if not chunk:
                return True
        return False


async def test_a_camera_that_stops_answering_pings_is_closed_and_goes_offline(
    app: Starlette, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    mute_device = await activate_device(owner, "Attic")
    alive_device: ActivatedDevice = await activate_device(owner, "Garage")
    async with serving(app, ws_ping_interval=0.3, ws_ping_timeout=0.3) as base:
        view = await viewer(base, owner)
        alive = await camera(base, alive_device)  # websockets answers pings by itself
        mute = MuteCamera(base, assertion(mute_device.private_key, mute_device.id, AUDIENCE))
        await mute.open()
        presence = await view.expect("device.presence")
        while presence["device_id"] != mute_device.id or not presence["online"]:
            presence = await view.expect("device.presence")
        assert await mute.closed_by_server(timeout=3)
        offline = await view.expect("device.presence", timeout=3)
        assert (offline["device_id"], offline["online"]) == (mute_device.id, False)
        assert conn_of(alive) in signaling(app).sockets
        await alive.send({"type": "ping", "id": "still"})
        assert (await alive.expect("pong"))["id"] == "still"
        mute.writer.close()
        await alive.socket.close()
        await view.socket.close()


async def test_an_internal_error_on_a_frame_closes_with_1011_and_the_camera_still_leaves(
    app: Starlette,
    ws_base: str,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await make_account("owner")
    view = await viewer(ws_base, owner)
    hub = signaling(app)
    served = hub.frame

    async def frame(conn: str, role: Role, principal: str, text: str | None) -> None:
        if text is not None and "boom" in text:
            await asyncio.sleep(0.3)  # the camera's leaving queues up behind this frame
            raise RuntimeError("a bug in the hub")  # what no real input can trigger
        await served(conn, role, principal, text)

    monkeypatch.setattr(hub, "frame", frame)
    for leaves_first in (False, True):
        device = await activate_device(owner)
        cam = await camera(ws_base, device)
        conn = conn_of(cam)
        await cam.send({"type": "ping", "id": "boom"})
        if leaves_first:
            await cam.socket.close()
        else:
            assert await cam.closed_with() == 1011
        offline = await view.expect("device.presence")
        while offline["online"] or offline["device_id"] != device.id:
            offline = await view.expect("device.presence")
        assert conn not in hub.sockets
        assert conn not in hub.hub.connections
