"""Camera presence in the database, ordered by connection epochs.

A camera's connections follow one another across instances, and across a database pause
the write of a connection that ended may land after the write of the one that replaced
it. So each connection that brings a camera online raises the device's ``presence_epoch``
(the time it came) and keeps the value; its "offline" matches that epoch only, and a stale
"offline" never overwrites a newer "online" whatever order the writes land in. The
instance holding a camera also checks now and then that the database shows it online
(:func:`not_online`), which repairs the database's view after a write that never happened
or lost a race.
"""

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from beanie import PydanticObjectId

from cloud.devices.models import Device


def _now() -> datetime:
    return datetime.now(UTC)


async def came_online(device_id: str) -> tuple[int, datetime] | None:
    """Mark the device online for a new connection: (its epoch, the time), or None if the
    device does not exist (removed meanwhile) or a newer connection holds it already.

    The epoch is the wall clock in nanoseconds: one plain update, no read-modify-write
    (``findAndModify`` serialised connects on the embedded database: bench/signaling.py
    fell from 250 to 9 connects/s). Two connections of one camera are ordered right unless
    they come within the clock difference of two instances (milliseconds).
    """
    seen = _now()
    epoch = time.time_ns()
    result = await Device.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(device_id), "presence_epoch": {"$not": {"$gte": epoch}}},
        {"$set": {"online": True, "last_seen": seen, "presence_epoch": epoch}},
    )
    return (epoch, seen) if result.modified_count == 1 else None


async def went_offline(device_id: str, epoch: int) -> datetime | None:
    """Mark the device offline if connection ``epoch`` is still its latest: the time, or None
    when a newer connection (or nobody) holds it."""
    seen = _now()
    result = await Device.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(device_id), "presence_epoch": epoch, "online": True},
        {"$set": {"online": False, "last_seen": seen}},
    )
    return seen if result.modified_count == 1 else None


async def epoch_of(device_id: str) -> int | None:
    """The device's latest connection epoch, or None when the device does not exist."""
    doc = await Device.get_pymongo_collection().find_one(
        {"_id": PydanticObjectId(device_id)}, projection={"presence_epoch": 1}
    )
    return None if doc is None else int(doc.get("presence_epoch", 0))


async def not_online(device_ids: Sequence[str]) -> list[str]:
    """Those of ``device_ids`` the database does not show online."""
    if not device_ids:
        return []
    cursor = Device.get_pymongo_collection().find(
        {"_id": {"$in": [PydanticObjectId(d) for d in device_ids]}, "online": {"$ne": True}},
        projection={"_id": 1},
    )
    return [str(doc["_id"]) async for doc in cursor]
