"""Relay credentials and allocation: which relay serves a new relayed session.

A relay authenticates with ``"<relay id>:<RELAY_SECRET>"`` (WebSocket ``hello`` and the
HTTP ``Authorization: Bearer`` of its event uploads). Allocation picks the online relay
with the lowest reported load among those heard from within :data:`STALE_S` (any online
one when none was); a relay whose instance died goes offline when its presence expires.
"""

import hmac
import re
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId

from cloud.devices.models import Device
from cloud.errors import Unavailable
from cloud.relays.models import RelayNode
from cloud.signaling.models import SessionRecord
from protocol.messages import RelayLoad

STALE_S = 30
RELAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_credential(token: str, secret: str) -> str | None:
    """The relay id if ``token`` is a valid relay credential, else None (constant time)."""
    relay_id, _, credential = token.partition(":")
    if not secret or not RELAY_ID.match(relay_id):
        return None
    if not hmac.compare_digest(credential.encode(), secret.encode()):
        return None
    return relay_id


async def register(relay_id: str, connection_id: str) -> None:
    now = datetime.now(UTC)
    await RelayNode.get_pymongo_collection().update_one(
        {"relay_id": relay_id},
        {
            "$set": {
                "connection_id": connection_id,
                "connected_at": now,
                "last_seen": now,
                "online": True,
                "load": 0.0,
                "sessions": 0,
                "capacity": 0,  # until its first relay.load says
            }
        },
        upsert=True,
    )


async def report(relay_id: str, connection_id: str, load: RelayLoad) -> None:
    """A heartbeat (``relay.load``) of the relay's registered connection.

    It also marks the relay online again: the connection it comes through is open, whatever
    an instance concluded from a presence lease that ran out while the holding instance was
    too busy to renew it (:func:`expired`; docs/benchmarks.md, soak finding 2). Only the
    registered connection counts: a relay that reconnected since is registered under its
    new connection, and the old one's late reports change nothing.
    """
    await RelayNode.get_pymongo_collection().update_one(
        {"relay_id": relay_id, "connection_id": connection_id},
        {
            "$set": {
                "last_seen": datetime.now(UTC),
                "online": True,
                "load": load.load,
                "sessions": load.sessions,
                "capacity": load.capacity,
            }
        },
    )


async def unregister(relay_id: str, connection_id: str) -> None:
    await RelayNode.get_pymongo_collection().update_one(
        {"relay_id": relay_id, "connection_id": connection_id}, {"$set": {"online": False}}
    )


async def expired(relay_id: str) -> None:
    """The relay's presence expired with its instance: it is offline, whatever connection.

    A relay still connected (its instance was only slow to renew the lease) is back online
    at its next ``relay.load`` (:func:`report`)."""
    await RelayNode.get_pymongo_collection().update_one(
        {"relay_id": relay_id}, {"$set": {"online": False}}
    )


async def is_registered(relay_id: str) -> bool:
    """Whether the relay's connection is registered: online and heard from within
    :data:`STALE_S`. Online but not heard from since is 503, not "no": after the database was
    away for longer than that, every node's ``last_seen`` is that old until its next
    ``relay.load`` is stored (within seconds), and a node told "not registered" drops what
    it sends (relay/reports.py), while a node whose instance died goes offline when its
    presence expires. Found by the full soak (docs/benchmarks.md, run G)."""
    found = await RelayNode.find_one(RelayNode.relay_id == relay_id, {"online": True})
    if found is None:
        return False
    if found.last_seen <= datetime.now(UTC) - timedelta(seconds=STALE_S):
        raise Unavailable("this relay has not been heard from lately; try again shortly", 2)
    return True


async def allocate(device_id: str) -> RelayNode | None:
    """The relay for a new session of ``device_id``, or None when no relay is available.

    A relay already watching the camera (for a viewer, or analysing it) is preferred: its
    upstream then serves one more viewer. Otherwise the least loaded live relay. With none
    heard from within :data:`STALE_S`, an online one: every node looks that way for a few
    seconds after the database was away (:func:`is_registered`).
    """
    fresh = datetime.now(UTC) - timedelta(seconds=STALE_S)
    online = await RelayNode.find({"online": True}).sort("+load", "+sessions").to_list()
    candidates = [r for r in online if r.last_seen > fresh] or online
    if not candidates or not PydanticObjectId.is_valid(device_id):
        return candidates[0] if candidates else None
    watching = await SessionRecord.find(
        {
            "device_id": PydanticObjectId(device_id),
            "ended_at": None,
            "viewer_id": {"$in": [r.relay_id for r in candidates]},
        }
    ).to_list()
    busy = {record.viewer_id for record in watching}
    device = await Device.get(PydanticObjectId(device_id))
    if device is not None and device.analysis_relay is not None:
        busy.add(device.analysis_relay)  # it keeps an upstream to the camera (cloud.analysis)
    return next((r for r in candidates if r.relay_id in busy), candidates[0])
