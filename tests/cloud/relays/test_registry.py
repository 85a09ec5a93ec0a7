"""The relay registry (cloud.relays.registry) with the test app: a relay connected right now
may call the relay routes, whatever an instance concluded from its presence lease."""

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta

import httpx
from beanie import PydanticObjectId

from cloud.relays import registry
from cloud.relays.models import RelayNode
from cloud.signaling.models import SessionRecord
from tests.conftest import RELAY_SECRET, ActivateDevice, MakeAccount
from tests.peers import Peer, connect

LOAD = {"type": "relay.load", "load": 0.1, "sessions": 0, "cameras": 0, "capacity": 2}


async def relay_connected(ws_base: str, relay_id: str) -> Peer:
    relay = await connect(ws_base, "/ws/v1/relay", f"{relay_id}:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    return relay


async def status_within(client: httpx.AsyncClient, url: str, relay_id: str, want: int) -> int:
    """The route's status once it is ``want``, or the last one after 10 s."""
    headers = {"Authorization": f"Bearer {relay_id}:{RELAY_SECRET}"}
    deadline = time.monotonic() + 10
    while True:
        status = (await client.get(url, headers=headers)).status_code
        if status == want or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def test_a_connected_relay_marked_offline_is_registered_again_by_its_next_load_report(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    device = await activate_device(await make_account("owner"))
    url = f"/api/v1/relays/devices/{device.id}"
    relay = await relay_connected(ws_base, "relay-lease")
    assert await status_within(client, url, "relay-lease", 200) == 200
    # Its presence lease ran out while its instance was busy: the sweep took it for dead.
    await registry.expired("relay-lease")
    assert await status_within(client, url, "relay-lease", 403) == 403
    await relay.send(LOAD)
    assert await status_within(client, url, "relay-lease", 200) == 200
    await relay.socket.close()


async def test_the_load_report_of_a_replaced_relay_connection_registers_nothing(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    device = await activate_device(await make_account("owner"))
    url = f"/api/v1/relays/devices/{device.id}"
    old = await relay_connected(ws_base, "relay-moved")
    new = await relay_connected(ws_base, "relay-moved")  # registered under this one now
    await new.socket.close()  # gone: the relay is offline
    assert await status_within(client, url, "relay-moved", 403) == 403
    await old.send(LOAD)
    await old.send({"type": "ping", "id": "after-load"})
    assert (await old.expect("pong"))["id"] == "after-load"  # the report was handled
    assert await status_within(client, url, "relay-moved", 403) == 403
    await old.socket.close()


async def test_with_no_node_heard_from_lately_an_online_one_still_takes_sessions(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    """For a few seconds after the database was away every node's last_seen is older than
    STALE_S (no relay.load could be stored): relayed sessions still go to an online node."""
    device = await activate_device(await make_account("quiet"))
    relay = await relay_connected(ws_base, "relay-quiet")
    nodes = RelayNode.get_pymongo_collection()
    long_ago = datetime.now(UTC) - timedelta(seconds=registry.STALE_S + 5)
    await nodes.update_many({}, {"$set": {"last_seen": long_ago}})
    await SessionRecord(  # the node watches the camera already: it is the one preferred
        session_id="quiet-" + secrets.token_hex(4),
        device_id=PydanticObjectId(device.id),
        viewer_id="relay-quiet",
        viewer_role="relay",
        route="relay",
        created_at=datetime.now(UTC),
    ).insert()
    chosen = await registry.allocate(device.id)
    assert chosen is not None
    assert chosen.relay_id == "relay-quiet"
    await nodes.update_one({"relay_id": "relay-quiet"}, {"$set": {"online": False}})
    chosen = await registry.allocate(device.id)
    assert chosen is None or chosen.relay_id != "relay-quiet"
    await relay.socket.close()
