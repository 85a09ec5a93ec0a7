"""Recordings on request through the real app: the owner asks, the relay node assigned to
the camera is told (relay.assign) and uploads; nobody else may."""

import httpx
from beanie import PydanticObjectId

from cloud.devices.models import Device
from tests.cloud.media.conftest import MP4_HEAD, RELAY, video
from tests.conftest import RELAY_SECRET, ActivateDevice, MakeAccount, share
from tests.peers import Peer, camera, connect


async def order_for(relay: Peer, device_id: str) -> dict[str, object]:
    """The relay.assign that lists the camera with a recording; the camera's entry."""
    while True:
        message = await relay.expect("relay.assign", timeout=8)
        for entry in message["cameras"]:
            if entry["device_id"] == device_id and entry["recordings"]:
                return dict(entry)


async def test_the_owner_records_a_camera_and_only_its_assigned_node_uploads_the_recording(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    relay: Peer,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    url = f"/api/v1/devices/{device.id}/recordings"
    offline = await client.post(url, json={"duration_s": 30}, headers=owner.headers)
    assert (offline.status_code, offline.json()["error"]["code"]) == (409, "device_offline")

    await client.patch(f"/api/v1/devices/{device.id}", json={"armed": False}, headers=owner.headers)
    await relay.send({"type": "relay.load", "load": 0, "sessions": 0, "capacity": 1000})
    cam = await camera(ws_base, device)
    assert (
        await client.post(url, json={"duration_s": 30}, headers=friend.headers)
    ).status_code == 403
    asked = await client.post(url, json={"duration_s": 30}, headers=owner.headers)
    assert asked.status_code == 201, asked.text
    recording = asked.json()
    assert (recording["kind"], recording["state"], recording["content_url"]) == (
        "recording",
        "recording",
        None,
    )
    # Disarmed, yet given to the node for the recording: no events from it.
    entry = await order_for(relay, device.id)
    assert entry["armed"] is False
    assert [o["id"] for o in entry["recordings"]] == [recording["id"]]  # type: ignore[attr-defined]

    put = f"/api/v1/relays/recordings/{recording['id']}"
    other = await connect(ws_base, "/ws/v1/relay", f"relay-other:{RELAY_SECRET}")
    assert (await other.recv())["type"] == "welcome"  # connected, but not the camera's node
    not_its = {"Authorization": f"Bearer relay-other:{RELAY_SECRET}", "Content-Type": "video/mp4"}
    r = await client.put(put, content=video(2000), headers=not_its)
    assert r.status_code == 403
    await other.socket.close()
    r = await client.put(put, content=video(2000), headers={**RELAY, "Content-Type": "video/webm"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
    r = await client.put(put, content=video(3000), headers={**RELAY, "Content-Type": "video/mp4"})
    assert (r.status_code, r.json()["size"], r.json()["state"]) == (200, 3000, "recording")
    r = await client.put(
        put,
        content=MP4_HEAD + b"\x00" * 4000,
        params={"final": "true", "duration_s": "29.9"},
        headers={**RELAY, "Content-Type": "video/mp4"},
    )
    assert r.status_code == 200, r.text
    done = (await client.get(f"/api/v1/media/{recording['id']}", headers=friend.headers)).json()
    assert (done["state"], done["size"], done["duration_s"]) == (
        "ready",
        4000 + len(MP4_HEAD),
        29.9,
    )
    content = await client.get(done["content_url"])
    assert content.content.startswith(MP4_HEAD)
    late = await client.put(
        put, content=video(3000), headers={**RELAY, "Content-Type": "video/mp4"}
    )
    assert (late.status_code, late.json()["error"]["code"]) == (409, "clip_finished")
    listed = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"kind": "recording"}, headers=owner.headers
    )
    assert [m["id"] for m in listed.json()["media"]] == [recording["id"]]
    await cam.socket.close()


async def test_the_final_upload_after_the_assignment_ended_is_taken_from_the_recording_node(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    relay: Peer,
) -> None:
    """A disarmed camera is released from its node when the recording ends; the node's last
    upload, sent at that moment, still lands (it was refused 403 and the recording lost)."""
    owner = await make_account("owner")
    device = await activate_device(owner)
    await client.patch(f"/api/v1/devices/{device.id}", json={"armed": False}, headers=owner.headers)
    await relay.send({"type": "relay.load", "load": 0, "sessions": 0, "capacity": 1000})
    cam = await camera(ws_base, device)
    asked = await client.post(
        f"/api/v1/devices/{device.id}/recordings", json={"duration_s": 1}, headers=owner.headers
    )
    assert asked.status_code == 201, asked.text
    recording = asked.json()
    await order_for(relay, device.id)
    while True:  # the recording is over: the node is told to let the camera go
        message = await relay.expect("relay.assign", timeout=8)
        if all(entry["device_id"] != device.id for entry in message["cameras"]):
            break
    assert (await Device.get(PydanticObjectId(device.id))).analysis_relay is None  # type: ignore[union-attr]
    put = f"/api/v1/relays/recordings/{recording['id']}"
    other = {"Authorization": f"Bearer relay-other:{RELAY_SECRET}", "Content-Type": "video/mp4"}
    assert (await client.put(put, content=video(2000), headers=other)).status_code == 403
    r = await client.put(
        put,
        content=video(2000),
        params={"final": "true", "duration_s": "1.0"},
        headers={**RELAY, "Content-Type": "video/mp4"},
    )
    assert (r.status_code, r.json()["state"]) == (200, "ready"), r.text
    await cam.socket.close()
