"""Presence of the cameras and relay nodes connected to one instance: on the bus, in the
database, and pushed to the apps.

Two records. The bus holds a lease for each (:class:`Presence`): the instance holding the
connection renews it, and one that expires means the instance died, so every instance's
sweep claims it and ends what rested on it; a relay node's lease says no more than that.
The database holds each camera's online state and last seen (:class:`CameraPresence`), which
is pushed to the camera's owner and viewers whenever it changes.

In the database, a camera's connections follow one another across instances, and across a
database pause the write of a connection that ended may land after the write of the one that
replaced it. So each connection that brings a camera online raises the device's ``presence_epoch``
(the time it came) and keeps the value; its "offline" matches that epoch only, and a stale
"offline" never overwrites a newer "online" whatever order the writes land in. The
instance holding a camera also checks now and then that the database shows it online
(:func:`not_online`), which repairs the database's view after a write that never happened
or lost a race.

The "online" writes of cameras that connect together go in one update (group commit,
:class:`GroupCommit`), with one epoch for all of them; then one read tells which it raised
and their owners, and one read their viewers. That is three database commands for a batch
instead of three per camera, and a camera is welcomed only once its write is done, as
before: durable and visible to every instance. During a reconnect storm this is what lets
the database keep up (docs/benchmarks.md, "Camera connects").
"""

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from beanie import PydanticObjectId
from pymongo.errors import PyMongoError

from cloud.analysis.threads import end_threads_of
from cloud.devices.access import audience, audiences
from cloud.devices.models import Device
from cloud.relays import registry
from cloud.signaling.bus import Bus
from cloud.signaling.deliveries import BROADCAST, PresenceChanged, Publish
from cloud.signaling.envelopes import Gone
from cloud.signaling.group_commit import GroupCommit
from cloud.signaling.hub import Hub
from protocol.messages import DevicePresence, EventPush, Message

log = logging.getLogger(__name__)

REPAIR_BATCH = 500  # local cameras whose database presence each refresh checks
# Cameras written online in one update at most: SecantusDB's CPU per camera of an update by
# ``$in`` was 0.43 ms at 20, 0.52 ms at 100 and 0.88 ms at 400 (one update_one: 0.95 ms).
WRITE_BATCH = 32
# device, online, last seen, the users to tell (its owner and viewers)
Push = Callable[[str, bool, datetime, list[PydanticObjectId]], Awaitable[None]]
# a message to each of these users' connections, wherever they are (Signaling.push)
UserPush = Callable[[list[PydanticObjectId], Message | EventPush], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


async def came_online(device_id: str) -> tuple[int, datetime] | None:
    """Mark the device online for a new connection: (its epoch, the time), or None if the
    device does not exist (removed meanwhile) or a newer connection holds it already."""
    epoch = time.time_ns()
    seen = await write_online([device_id], epoch)
    raised = await raised_to([device_id], epoch)
    return (epoch, seen) if PydanticObjectId(device_id) in raised else None


async def write_online(device_ids: Sequence[str], epoch: int) -> datetime:
    """Mark the devices online for new connections, all with ``epoch``: the time written.
    A device that does not exist (removed meanwhile) or that a newer connection holds
    already is left as it is; :func:`raised_to` tells which were raised.

    The epoch is the wall clock in nanoseconds: one plain update, no read-modify-write
    (``findAndModify`` serialised connects on the embedded database: bench/signaling.py
    fell from 250 to 9 connects/s). Two connections of one camera are ordered right unless
    they come within the clock difference of two instances (milliseconds).
    """
    seen = _now()
    await Device.get_pymongo_collection().update_many(
        {
            "_id": {"$in": [PydanticObjectId(d) for d in device_ids]},
            "presence_epoch": {"$not": {"$gte": epoch}},
        },
        # A new connection starts without motion: what the last one reported no longer holds.
        {
            "$set": {
                "online": True,
                "last_seen": seen,
                "presence_epoch": epoch,
                "motion_active": False,
            }
        },
    )
    return seen


async def raised_to(
    device_ids: Sequence[str], epoch: int
) -> dict[PydanticObjectId, PydanticObjectId]:
    """Those of ``device_ids`` whose presence epoch is ``epoch`` now, with their owners (the
    update's count alone cannot say which it raised)."""
    raised = Device.get_pymongo_collection().find(
        {"_id": {"$in": [PydanticObjectId(d) for d in device_ids]}, "presence_epoch": epoch},
        projection={"owner_id": 1},
    )
    return {PydanticObjectId(doc["_id"]): PydanticObjectId(doc["owner_id"]) async for doc in raised}


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


class CameraPresence:
    """The database's view of the cameras this instance holds, written in epoch order.

    ``cameras`` is the hub's live map of device id -> local connection; ``push`` tells a
    device's audience when its presence changed.
    """

    def __init__(self, cameras: Mapping[str, str], bus: Bus, push: Push) -> None:
        self._cameras = cameras
        self._bus = bus
        self._push = push
        self._epochs: dict[str, int] = {}  # local camera connection -> its presence epoch
        self._repair_from = 0  # where the next repair starts among local cameras
        self._last_epoch = 0
        self._writes = GroupCommit(self._write_online, "presence", WRITE_BATCH)

    async def online(self, device_id: str, conn: str) -> None:
        """Write the camera online for ``conn`` and tell its audience; returns once written.

        Two connections of one camera waiting for the same write: the later one is written
        (``latest``), the earlier one is not, as if a newer connection held it already.
        """
        came = await self._writes(device_id, latest=True)
        if came is None:
            return
        epoch, seen, users = came
        if self._cameras.get(device_id) != conn:  # it left while the write was on its way
            await self._offline(device_id, epoch)
            return
        self._epochs[conn] = epoch
        if users is not None:
            await self._push(device_id, True, seen, users)

    async def _write_online(
        self, device_ids: list[str]
    ) -> dict[str, tuple[int, datetime, list[PydanticObjectId] | None]]:
        """The batch's write, then its reads: the cameras raised to its epoch and who is told.

        Failing after the write, the reads leave every camera of the batch taken as written
        (users unknown: not told): its "offline" then matches the epoch only if it was.
        """
        # Epochs of this instance's writes strictly increase, also within one clock tick.
        epoch = self._last_epoch = max(time.time_ns(), self._last_epoch + 1)
        seen = await write_online(device_ids, epoch)
        try:
            users = await audiences(await raised_to(device_ids, epoch))
        except PyMongoError as exc:
            log.warning("presence of %d cameras written, not read back: %s", len(device_ids), exc)
            return {d: (epoch, seen, None) for d in device_ids}
        return {str(d): (epoch, seen, told) for d, told in users.items()}

    async def offline(self, device_id: str, conn: str) -> None:
        epoch = self._epochs.pop(conn, None)
        if epoch is not None:  # else its "online" was never written
            await self._offline(device_id, epoch)

    async def expired(self, device_id: str) -> None:
        """The camera's presence on the bus expired: its instance died."""
        # The epoch read before the check: a connection coming meanwhile raises it.
        epoch = await epoch_of(device_id)
        if epoch is not None and (await self._bus.presence([device_id]))[device_id] is None:
            await self._offline(device_id, epoch)

    async def repair(self, cameras: list[tuple[str, str]]) -> None:
        """Write "online" again for local cameras the database does not show online.

        A batch per refresh, in turn, so that 10,000 cameras cost one small query each time.
        """
        if not cameras:
            return
        start = self._repair_from % len(cameras)
        batch = dict((cameras[start:] + cameras[:start])[:REPAIR_BATCH])
        self._repair_from = start + len(batch)
        for device_id in await not_online(list(batch)):
            if self._cameras.get(device_id) == batch[device_id]:
                log.info("presence of %s repaired: online", device_id)
                await self.online(device_id, batch[device_id])

    async def _offline(self, device_id: str, epoch: int) -> None:
        seen = await went_offline(device_id, epoch)
        if seen is not None:
            await self._push(device_id, False, seen, await audience(PydanticObjectId(device_id)))


class Presence:
    """The presence of the cameras and relay nodes connected here: their leases on the bus,
    each camera's record in the database (:attr:`cameras`), and the pushes of both.

    ``hub`` is read for the connections it holds; ``publish`` carries an envelope onto the
    bus as the edge does (Signaling._publish); ``push`` tells users (Signaling.push).
    """

    def __init__(
        self,
        hub: Hub,
        bus: Bus,
        ttl_s: float,
        push: UserPush,
        publish: Callable[[Publish], Awaitable[None]],
    ) -> None:
        self._hub = hub
        self._bus = bus
        self.ttl_s = ttl_s  # a lease lives this long unless renewed
        self._push_users = push
        self._publish = publish
        self.cameras = CameraPresence(hub.cameras, bus, self._push)

    async def changed(self, change: PresenceChanged) -> None:
        """A camera or relay node connected here came or went (the hub's delivery)."""
        if change.device_id.startswith("relay:"):  # relays: presence only, for liveness
            if change.online:
                await self._bus.set_presence(change.device_id, change.conn, self.ttl_s)
            else:
                relay_id = change.device_id.removeprefix("relay:")
                await self._bus.clear_presence(change.device_id, change.conn)
                await registry.unregister(relay_id, change.conn)
                await end_threads_of(relay_id, self._push_users)
            return
        if change.online:
            await self._bus.set_presence(change.device_id, change.conn, self.ttl_s)
            await self.cameras.online(change.device_id, change.conn)
            return
        try:
            await self._bus.clear_presence(change.device_id, change.conn)
        finally:  # the database's view does not wait for the bus
            await self.cameras.offline(change.device_id, change.conn)

    async def refresh(self) -> None:
        """This instance is alive: keep the presence of its cameras from expiring.

        A camera's connection is live while it answers WebSocket pings (uvicorn closes it
        otherwise), so the instance, not the camera, refreshes presence. ``last_seen`` is
        written when presence changes only: one database write per camera per refresh
        stalled the database at a few thousand cameras (bench/signaling.py). The bus only:
        a paused database must not let the leases run out (:meth:`repair` is its own round).
        """
        cameras = list(self._hub.cameras.items())
        relays = [
            (f"relay:{c.principal}", c.id)
            for c in self._hub.connections.values()
            if c.role == "relay"
        ]
        # Relays first: a relay whose lease runs out in a long round is taken for dead by
        # every instance (its relayed sessions and event threads end; soak finding 2).
        for device_id, conn in relays + cameras:
            await self._bus.set_presence(device_id, conn, self.ttl_s)

    async def repair(self) -> None:
        """Write "online" again for a batch of local cameras the database shows offline."""
        await self.cameras.repair(list(self._hub.cameras.items()))

    async def sweep(self) -> None:
        """Presence that expired without a clear means the camera's instance died."""
        for device_id in await self._bus.claim_expired_presence():
            log.info("presence of %s expired", device_id)
            await self._publish(Publish(BROADCAST, Gone(device_id)))
            if device_id.startswith("relay:"):  # the relay's instance died
                relay_id = device_id.removeprefix("relay:")
                await registry.expired(relay_id)
                await end_threads_of(relay_id, self._push_users)
            else:
                await self.cameras.expired(device_id)

    async def _push(
        self, device_id: str, online: bool, seen: datetime, users: list[PydanticObjectId]
    ) -> None:
        """Push presence to the device's owner and viewers (``users``, read by
        :class:`CameraPresence` with its write), and nobody else."""
        message = DevicePresence(device_id=device_id, online=online, last_seen=seen)
        await self._push_users(users, message)
