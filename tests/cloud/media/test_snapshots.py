"""Snapshots on demand through the real app: the camera answers when no relay node watches
it, the node that watches it otherwise; each uploads to the ticket it was sent."""

import asyncio

import cv2
import httpx
import numpy as np

from device_sim.identity import assertion
from tests.conftest import RELAY_SECRET, ActivatedDevice, ActivateDevice, MakeAccount, share
from tests.peers import AUDIENCE, Peer, camera, connect

JPEG = bytes(cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))[1])


async def answer_as_camera(client: httpx.AsyncClient, cam: Peer, device: ActivatedDevice) -> None:
    asked = await cam.expect("snapshot.request")
    assert asked["device_id"] == device.id
    token = assertion(device.private_key, device.id, AUDIENCE)
    r = await client.put(
        f"/api/v1/devices/snapshots/{asked['id']}",
        content=JPEG,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 204, r.text


async def test_a_viewer_gets_the_cameras_picture_now_and_a_stranger_nothing(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    stranger = await make_account("stranger")
    device, other = await activate_device(owner), await activate_device(owner, "Other")
    assert (await share(client, owner, device, friend)).status_code == 201
    url = f"/api/v1/devices/{device.id}/snapshot"
    offline = await client.get(url, headers=owner.headers)
    assert (offline.status_code, offline.json()["error"]["code"]) == (409, "device_offline")
    await client.patch(f"/api/v1/devices/{device.id}", json={"armed": False}, headers=owner.headers)
    cam = await camera(ws_base, device)
    assert (await client.get(url, headers=stranger.headers)).status_code == 404

    asking = asyncio.create_task(client.get(url, headers=friend.headers))
    await answer_as_camera(client, cam, device)
    got = await asking
    assert got.status_code == 200, got.text
    assert (got.content, got.headers["content-type"]) == (JPEG, "image/jpeg")
    assert got.headers["cache-control"] == "private, no-store"
    assert got.headers["x-snapshot-source"] == "camera"

    # Only the camera asked may answer, with a JPEG, once; a camera that stays silent: 503.
    asking = asyncio.create_task(client.get(url, headers=owner.headers))
    asked = await cam.expect("snapshot.request")
    put = f"/api/v1/devices/snapshots/{asked['id']}"
    impostor = assertion(other.private_key, other.id, AUDIENCE)
    r = await client.put(put, content=JPEG, headers={"Authorization": f"Bearer {impostor}"})
    assert r.status_code == 404
    mine = assertion(device.private_key, device.id, AUDIENCE)
    r = await client.put(put, content=b"GIF89a", headers={"Authorization": f"Bearer {mine}"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    silent = await asking
    assert (silent.status_code, silent.json()["error"]["code"]) == (503, "service_unavailable")
    await cam.socket.close()


async def test_the_relay_node_watching_the_camera_answers_from_its_latest_frame(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    relay = await connect(ws_base, "/ws/v1/relay", f"relay-snap:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    await relay.send({"type": "relay.load", "load": 0, "sessions": 0, "capacity": 1000})
    cam = await camera(ws_base, device)
    assigned = await relay.expect("relay.assign", timeout=8)
    assert device.id in [c["device_id"] for c in assigned["cameras"]]

    asking = asyncio.create_task(
        client.get(f"/api/v1/devices/{device.id}/snapshot", headers=owner.headers)
    )
    asked = await relay.expect("snapshot.request")
    assert asked["device_id"] == device.id
    relay_auth = {"Authorization": f"Bearer relay-snap:{RELAY_SECRET}"}
    r = await client.put(
        f"/api/v1/relays/snapshots/{asked['id']}", content=JPEG, headers=relay_auth
    )
    assert r.status_code == 204
    got = await asking
    assert (got.status_code, got.content) == (200, JPEG)
    assert got.headers["x-snapshot-source"] == "relay"
    assert [m for m in cam.seen if m["type"] == "snapshot.request"] == []  # not asked
    await relay.socket.close()
    await cam.socket.close()
