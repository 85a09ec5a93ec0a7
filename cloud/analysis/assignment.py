"""Which relay node analyses which armed camera.

Every armed, online camera inside its schedule is *wanted*; each wanted camera is assigned
to one live relay node (``Device.analysis_relay``), chosen by the room it has left: the
``capacity`` it reports in ``relay.load`` minus the cameras it has; a node that already
watches the camera for a viewer is preferred (one upstream, not two). A node is live while
its connection is registered and it reported within :data:`LIVE_S`; one registered but not
heard from that long takes no camera and keeps its own (:func:`online_relays`: after a
database outage every node looks that way for a few seconds). Assignments that no longer
hold (the node went offline, the camera went offline, was disarmed, or its schedule closed)
are released, and the camera goes to another node in the same step.

:func:`assign` runs on every cloud instance every second; every write is a compare-and-set
on the field it read, so instances never fight over a camera. A node learns its cameras from
the instance that holds its connection (:func:`cameras_of`, sent as ``relay.assign``). A node
killed outright loses its connection at once and its cameras move within two steps; a node
whose *instance* died is released when its presence expires (``PRESENCE_TTL_S``).

Cost per step: one query for the live nodes, one per node counting its cameras, indexed
queries for assignments to release and wanted cameras without a node, and (on each
instance) one read of the devices assigned to the nodes it holds, to tell them
(:func:`cameras_of`): that last read grows with the armed cameras of those nodes, once a
second. Not measured at fleet scale yet.

While no node is live there is nobody to assign a camera to, and the two device reads (the
release query, which SecantusDB answers by scanning every device, and up to :data:`BATCH`
whole documents of waiting cameras) cost the database ~0.28 s of CPU per second per
instance at 10,000 online devices (docs/benchmarks.md, storm session 6). Such a step then
reads only the live nodes (:class:`IdleReads`): the first step after the last node left
still reads (its cameras are released at once), and after it one step in
:data:`IDLE_READ_S` does, which releases what is left assigned to a node gone meanwhile and
recounts the waiting cameras for the metric (``waiting_for_relay`` is up to that old; it
counts at most :data:`BATCH` as before). While live nodes are all full there is nobody to
assign a camera to either: every step still reads the releases (they make room), and the
waiting cameras once in :data:`IDLE_READ_S`. Nothing a client sees depends on those reads:
``GET /devices`` computes each camera's state from the live nodes at request time
(:func:`analysis_state`: armed and online with no live node is ``waiting_for_relay``,
whatever ``analysis_relay`` still names), and a node that comes back finds its
assignments released or kept exactly as a step with nodes decides.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId

from cloud import metrics
from cloud.analysis.schedule import in_schedule
from cloud.devices.models import Device
from cloud.media.models import Media
from cloud.relays.models import RelayNode
from cloud.signaling.models import SessionRecord
from protocol.api import AnalysisState, Schedule
from protocol.messages import AssignedCamera, RecordingOrder, UploadOrder

log = logging.getLogger(__name__)

LIVE_S = 20.0  # four relay.load reports missed: the node is gone
BATCH = 500  # wanted cameras assigned per step at most
IDLE_READ_S = 30.0  # with no live node, the devices are read once in this long


class IdleReads:
    """Whether a step with no room on any node reads the devices. With no live node: the
    first such step after one with nodes (or the first ever), then one every ``every_s``;
    with live nodes all full, the waiting cameras once every ``every_s`` (the releases are
    read every step: they make room). Pure, given the monotonic time; keeps the count of
    waiting cameras its last read found."""

    def __init__(self, every_s: float = IDLE_READ_S) -> None:
        self.every_s = every_s
        self.waiting = 0
        self._read_at: float | None = None  # None: the next step without room reads
        self._nodes_left = False  # nodes were live: the first step without them reads

    def due(self, now: float) -> bool:
        return self._nodes_left or self.period_due(now)

    def period_due(self, now: float) -> bool:
        return self._read_at is None or now - self._read_at >= self.every_s

    def read(self, now: float, waiting: int) -> None:
        """A step without room read the waiting cameras."""
        self._read_at, self.waiting, self._nodes_left = now, waiting, False

    def nodes_seen(self) -> None:
        """A step had live nodes: once they are gone, the next step reads."""
        self._nodes_left = True

    def room_seen(self) -> None:
        """A step had room on a node: once there is none, the next step reads."""
        self._read_at = None


@dataclass(frozen=True)
class LiveRelay:
    relay_id: str
    capacity: int


async def online_relays(now: datetime | None = None) -> tuple[dict[str, LiveRelay], set[str]]:
    """The live nodes, which take cameras, and every online node, which keeps its own.

    A node online but not heard from within :data:`LIVE_S` takes no camera, yet keeps the ones
    it has until it goes offline (its connection closes, or its instance's presence expires):
    ``last_seen`` goes by the database, and while the database is away no ``relay.load`` is
    stored, so after an outage longer than LIVE_S every node would look gone until its next
    report and would be told to drop every camera it analyses."""
    fresh = (now or datetime.now(UTC)) - timedelta(seconds=LIVE_S)
    nodes = await RelayNode.find({"online": True}).to_list()
    live = {n.relay_id: LiveRelay(n.relay_id, n.capacity) for n in nodes if n.last_seen > fresh}
    return live, {n.relay_id for n in nodes}


async def live_relays(now: datetime | None = None) -> dict[str, LiveRelay]:
    return (await online_relays(now))[0]


def schedule_of(device: Device) -> Schedule | None:
    return None if device.schedule is None else Schedule.model_validate(device.schedule)


def armed(device: Device, now: datetime) -> bool:
    """Armed, and inside its schedule: events are wanted."""
    return device.armed and in_schedule(schedule_of(device), now)


def recording(device: Device, now: datetime) -> bool:
    """A recording the owner asked for is running."""
    return device.recording_until is not None and device.recording_until > now


def wanted(device: Device, now: datetime) -> bool:
    """Whether a relay node should watch the camera now: online, and armed or recorded."""
    return device.online and (armed(device, now) or recording(device, now))


def analysis_state(device: Device, live: dict[str, LiveRelay], now: datetime) -> AnalysisState:
    if not armed(device, now):
        return AnalysisState(state="disarmed")
    if not device.online:
        return AnalysisState(state="offline")
    if device.analysis_relay is not None and device.analysis_relay in live:
        return AnalysisState(state="active", relay_id=device.analysis_relay)
    return AnalysisState(state="waiting_for_relay")


async def _move(device_id: PydanticObjectId | None, was: str | None, to: str | None) -> bool:
    """Compare-and-set the camera's node; False when another instance moved it first."""
    result = await Device.get_pymongo_collection().update_one(
        {"_id": device_id, "analysis_relay": was}, {"$set": {"analysis_relay": to}}
    )
    return result.modified_count == 1


async def assign(now: datetime | None = None, idle: IdleReads | None = None) -> None:
    """One step: release assignments that no longer hold, then assign wanted cameras.

    With ``idle``, a step that finds no live node reads no device unless ``idle`` says it is
    due (see the module's docstring); without it, every step reads."""
    now = now or datetime.now(UTC)
    live, online = await online_relays(now)
    if idle is not None:
        if live:
            idle.nodes_seen()
        elif not idle.due(time.monotonic()):
            metrics.LIVE.analysis = {"active": 0, "waiting_for_relay": idle.waiting}
            return
    assigned = {r: await Device.find({"analysis_relay": r}).count() for r in live}

    stale = await Device.find(
        {
            "analysis_relay": {"$ne": None},
            "$or": [
                {"analysis_relay": {"$nin": sorted(online)}},
                {"online": False},
                {"armed": False},
                {"schedule": {"$ne": None}},  # checked below
            ],
        }
    ).to_list()
    for device in stale:
        if device.analysis_relay in online and wanted(device, now):
            continue
        if await _move(device.id, device.analysis_relay, None):
            if device.analysis_relay in assigned:
                assigned[device.analysis_relay] -= 1
            log.info("analysis of %s released from %s", device.id, device.analysis_relay)

    await assign_uploads(live)
    room = {r: node.capacity - assigned.get(r, 0) for r, node in live.items()}
    full = not any(n > 0 for n in room.values())
    if idle is not None and full and live and not idle.period_due(time.monotonic()):
        # every node is full: nobody to assign a camera to (the soak's node has no room)
        metrics.LIVE.analysis = {
            "active": sum(assigned.values()),
            "waiting_for_relay": idle.waiting,
        }
        return
    waiting = await Device.find(
        {
            "online": True,
            "analysis_relay": None,
            # armed unless it says otherwise (devices created before arming have no field)
            "$or": [{"armed": {"$ne": False}}, {"recording_until": {"$gt": now}}],
        },
        limit=BATCH,
    ).to_list()
    left = [device for device in waiting if wanted(device, now)]
    while left:
        device = left[0]
        room = {r: node.capacity - assigned.get(r, 0) for r, node in live.items()}
        best = max(room, key=lambda r: (room[r], r), default=None)
        if best is None or room[best] <= 0:
            break  # every node is full (or there is none): the cameras wait
        left.pop(0)
        watching = await _watching(device, live)  # a viewer's node has the camera already
        best = next((r for r in watching if room[r] > 0), best)
        if await _move(device.id, None, best):
            assigned[best] = assigned.get(best, 0) + 1
            log.info("analysis of %s assigned to %s", device.id, best)
    # GET /metrics reads these (cloud.metrics): no database scan per scrape.
    metrics.LIVE.analysis = {"active": sum(assigned.values()), "waiting_for_relay": len(left)}
    if idle is not None:
        if full:
            idle.read(time.monotonic(), len(left))
        else:
            idle.room_seen()


async def _watching(device: Device, live: dict[str, LiveRelay]) -> list[str]:
    """The live nodes with a connection to the camera now (serving its viewers)."""
    records = await SessionRecord.find(
        {
            "device_id": device.id,
            "ended_at": None,
            "viewer_role": "relay",
            "viewer_id": {"$in": sorted(live)},
        }
    ).to_list()
    return sorted({record.viewer_id for record in records})


async def assign_uploads(live: dict[str, LiveRelay]) -> None:
    """Give each uploaded video waiting for analysis (or whose node left) to the live node
    analysing the fewest (of those with room for cameras)."""
    live = {r: node for r, node in live.items() if node.capacity > 0}
    if not live:
        return
    waiting = await Media.find(
        {
            "kind": "upload",
            "analysis": {"$in": ["pending", "analysing"]},
            "analysis_relay": {"$nin": list(live)},
        },
        limit=BATCH,
    ).to_list()
    for media in waiting:
        busy = {
            r: await Media.find(
                {"kind": "upload", "analysis": "analysing", "analysis_relay": r}
            ).count()
            for r in live
        }
        best = min(live, key=lambda r: (busy[r], r))
        moved = await Media.get_pymongo_collection().update_one(
            {"_id": media.id, "analysis_relay": media.analysis_relay},
            {"$set": {"analysis_relay": best, "analysis": "analysing", "progress": 0.0}},
        )
        if moved.modified_count == 1:
            log.info("upload %s goes to %s for analysis", media.id, best)


async def uploads_of(relay_ids: set[str]) -> dict[str, list[UploadOrder]]:
    """The uploaded videos each of these nodes analyses now (``relay.assign``)."""
    out: dict[str, list[UploadOrder]] = {r: [] for r in relay_ids}
    if relay_ids:
        analysing = {"kind": "upload", "analysis": "analysing"}
        found = Media.find({**analysing, "analysis_relay": {"$in": sorted(relay_ids)}})
        for media in await found.sort("+_id").to_list():
            assert media.analysis_relay is not None
            order = UploadOrder(id=str(media.id), device_id=str(media.device_id))
            out[media.analysis_relay].append(order)
    return out


async def cameras_of(
    relay_ids: set[str], now: datetime | None = None
) -> dict[str, list[AssignedCamera]]:
    """What each of these nodes must analyse now (``relay.assign``), in a stable order."""
    now = now or datetime.now(UTC)
    out: dict[str, list[AssignedCamera]] = {r: [] for r in relay_ids}
    if not relay_ids:
        return out
    devices = (
        await Device.find({"analysis_relay": {"$in": sorted(relay_ids)}}).sort("+_id").to_list()
    )
    orders: dict[PydanticObjectId, list[RecordingOrder]] = {}
    recorded = [d.id for d in devices if recording(d, now)]
    if recorded:
        running = {"kind": "recording", "state": "recording", "until": {"$gt": now}}
        found = await Media.find({**running, "device_id": {"$in": recorded}}).sort("+_id").to_list()
        relay_of = {device.id: device.analysis_relay for device in devices}
        for media in found:
            assert media.until is not None
            order = RecordingOrder(id=str(media.id), until=media.until)
            orders.setdefault(media.device_id, []).append(order)
        await _stamp_recorders(found, relay_of)
    for device in devices:
        if device.analysis_relay in out and device.id is not None and wanted(device, now):
            out[device.analysis_relay].append(
                AssignedCamera(
                    device_id=str(device.id),
                    mode=device.analysis_mode,
                    motion=device.motion_active,
                    armed=armed(device, now),
                    recordings=orders.get(device.id, []),
                )
            )
    return out


async def _stamp_recorders(
    recordings: list[Media], relay_of: dict[PydanticObjectId | None, str | None]
) -> None:
    """Each recording is the node's it is ordered to: its last upload, sent when the
    recording ends, may arrive after the camera's assignment ended with it."""
    by_relay: dict[str, list[PydanticObjectId]] = {}
    for media in recordings:
        relay_id = relay_of.get(media.device_id)
        if relay_id is not None and media.analysis_relay != relay_id and media.id is not None:
            by_relay.setdefault(relay_id, []).append(media.id)
    for relay_id, ids in by_relay.items():
        await Media.get_pymongo_collection().update_many(
            {"_id": {"$in": ids}, "state": "recording"}, {"$set": {"analysis_relay": relay_id}}
        )


async def assigned_to(relay_id: str, device_id: str) -> Device | None:
    """The device if it is assigned to this node and wanted now (the node may watch it)."""
    if not PydanticObjectId.is_valid(device_id):
        return None
    device = await Device.find_one({"_id": PydanticObjectId(device_id), "analysis_relay": relay_id})
    if device is None or not wanted(device, datetime.now(UTC)):
        return None
    return device


async def report_motion(device_id: str, active: bool) -> None:
    """The camera says it sees motion (or no longer does): on_motion nodes attach on it.
    Each connection of the camera starts without (cloud.signaling.presence)."""
    await Device.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(device_id)},
        {"$set": {"motion_active": active, "motion_at": datetime.now(UTC)}},
    )
