from datetime import UTC, datetime, timedelta

import httpx

from cloud.relays import registry
from cloud.relays.models import RelayNode
from tests.conftest import RELAY_SECRET, ActivateDevice, MakeAccount, share
from tests.peers import connect

RELAY = {"Authorization": f"Bearer relay-cfg:{RELAY_SECRET}"}
ZONE = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0]]


async def test_owners_set_motion_settings_and_the_serving_relay_reads_them(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    url = f"/api/v1/devices/{device.id}"
    defaults = (await client.get(url, headers=owner.headers)).json()["motion"]
    assert defaults == {"sensitivity": 0.5, "min_area": 0.005, "zones": [], "masks": []}
    motion = {"sensitivity": 0.8, "min_area": 0.01, "zones": [ZONE], "masks": []}
    r = await client.patch(url, json={"motion": motion}, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json()["motion"] == motion
    assert r.json()["name"] == device.name
    for bad in (
        {},
        {"motion": {"sensitivity": 2}},
        {"motion": {"zones": [[[0.1, 0.1], [0.2, 0.2]]]}},
        {"motion": {"masks": [[[0.1, 0.1], [0.2, 1.5], [0.3, 0.3]]]}},
        {"motion": {"min_area": 0}},
    ):
        r = await client.patch(url, json=bad, headers=owner.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), bad
    assert (await share(client, owner, device, friend)).status_code == 201
    assert (
        await client.patch(url, json={"motion": motion}, headers=friend.headers)
    ).status_code == 403

    relay_url = f"/api/v1/relays/devices/{device.id}"
    assert (await client.get(relay_url, headers=RELAY)).status_code == 403  # not connected
    relay = await connect(ws_base, "/ws/v1/relay", f"relay-cfg:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    r = await client.get(relay_url, headers=RELAY)
    assert r.status_code == 200
    assert r.json() == {"device_id": device.id, "motion": motion}
    assert (
        await client.get(relay_url, headers={"Authorization": "Bearer relay-cfg:nope"})
    ).status_code == 401
    assert (await client.get(relay_url, headers=owner.headers)).status_code == 401
    unknown = await client.get("/api/v1/relays/devices/6b0000000000000000000000", headers=RELAY)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "device_not_found")


async def test_a_relay_not_heard_from_lately_is_told_to_retry_not_refused(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    """After the database was away longer than STALE_S, a connected node's last_seen is that
    old until its next relay.load is stored: 503, which a node retries, not 403, on which it
    drops what it sends (the full soak, run G)."""
    device = await activate_device(await make_account())
    headers = {"Authorization": f"Bearer relay-stale:{RELAY_SECRET}"}
    url = f"/api/v1/relays/devices/{device.id}"
    relay = await connect(ws_base, "/ws/v1/relay", f"relay-stale:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    assert (await client.get(url, headers=headers)).status_code == 200
    long_ago = datetime.now(UTC) - timedelta(seconds=registry.STALE_S + 5)
    nodes = RelayNode.get_pymongo_collection()
    await nodes.update_one({"relay_id": "relay-stale"}, {"$set": {"last_seen": long_ago}})
    r = await client.get(url, headers=headers)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "service_unavailable"), r.text
    assert r.headers["retry-after"] == "2"
    await nodes.update_one({"relay_id": "relay-stale"}, {"$set": {"online": False}})
    assert (await client.get(url, headers=headers)).status_code == 403
