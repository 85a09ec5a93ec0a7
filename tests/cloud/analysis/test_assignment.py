"""Arming and assignment through the real app: a relay node over its WebSocket, a camera
over its own, the owner over HTTP. The app's assignment runs every second."""

import asyncio
import contextvars
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from beanie import PydanticObjectId
from starlette.applications import Starlette

from cloud import metrics
from cloud.analysis import assignment
from cloud.devices.models import Device
from cloud.relays.models import RelayNode
from tests.conftest import RELAY_SECRET, Account, ActivatedDevice, ActivateDevice, MakeAccount
from tests.peers import Peer, camera, connect

DEVICES = "/api/v1/devices"
OFFLINE = {"state": "offline", "relay_id": None}
DISARMED = {"state": "disarmed", "relay_id": None}
WAITING = {"state": "waiting_for_relay", "relay_id": None}


async def relay_node(ws_base: str, capacity: int) -> tuple[str, Peer]:
    relay_id = "relay-" + secrets.token_hex(4)
    relay = await connect(ws_base, "/ws/v1/relay", f"{relay_id}:{RELAY_SECRET}")
    assert (await relay.recv())["type"] == "welcome"
    await relay.send({"type": "relay.load", "load": 0, "sessions": 0, "capacity": capacity})
    return relay_id, relay


async def assigned(relay: Peer, device: ActivatedDevice, timeout: float = 8.0) -> dict[str, Any]:
    """The node's next relay.assign that says something about ``device`` (absent: {})."""
    deadline = time.monotonic() + timeout
    while True:
        message = await relay.expect("relay.assign", max(0.1, deadline - time.monotonic()))
        mine = [c for c in message["cameras"] if c["device_id"] == device.id]
        return mine[0] if mine else {}


async def analysis(client: httpx.AsyncClient, owner: Account, device: ActivatedDevice) -> Any:
    r = await client.get(f"{DEVICES}/{device.id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    return r.json()["analysis"]


async def until_analysis(
    client: httpx.AsyncClient, owner: Account, device: ActivatedDevice, want: dict[str, Any]
) -> None:
    deadline = time.monotonic() + 8
    while (got := await analysis(client, owner, device)) != want:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.2)


async def test_an_armed_camera_is_analysed_by_a_node_with_room_while_armed_and_online(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("armed")
    device = await activate_device(owner, "Porch")
    listed = (await client.get(f"{DEVICES}/{device.id}", headers=owner.headers)).json()
    assert (listed["armed"], listed["analysis_mode"], listed["schedule"]) == (
        True,
        "continuous",
        None,
    )
    assert listed["analysis"] == {
        "state": "offline",
        "relay_id": None,
    }  # armed by default, not connected yet

    _, full = await relay_node(ws_base, capacity=0)  # a node without room takes none
    relay_id, relay = await relay_node(ws_base, capacity=1000)
    cam = await camera(ws_base, device)
    assert await assigned(relay, device) == {
        "device_id": device.id,
        "mode": "continuous",
        "motion": False,
        "armed": True,
        "recordings": [],
    }
    await until_analysis(client, owner, device, {"state": "active", "relay_id": relay_id})
    assert [m for m in full.seen if m["type"] == "relay.assign"] == []

    # The node may watch it with no viewer routed through it; a node it is not assigned to
    # may not.
    await relay.send({"type": "session.request", "id": "up", "device_id": device.id})
    assert (await relay.expect("session.created"))["device_id"] == device.id
    await full.send({"type": "session.request", "id": "up", "device_id": device.id})
    refused = await full.expect("status")
    assert refused["error"]["code"] == "forbidden"

    disarmed = await client.patch(
        f"{DEVICES}/{device.id}", json={"armed": False}, headers=owner.headers
    )
    assert disarmed.status_code == 200, disarmed.text
    assert disarmed.json()["analysis"] == DISARMED
    assert await assigned(relay, device) == {}  # let go

    await client.patch(
        f"{DEVICES}/{device.id}",
        json={"armed": True, "analysis_mode": "on_motion"},
        headers=owner.headers,
    )
    assert (await assigned(relay, device))["motion"] is False
    await cam.send({"type": "device.motion", "id": "m1", "active": True})
    assert (await cam.expect("status"))["ok"] is True
    assert (await assigned(relay, device))["motion"] is True

    await cam.socket.close()
    assert await assigned(relay, device) == {}  # offline: nothing to analyse
    await until_analysis(client, owner, device, OFFLINE)
    cam = await camera(ws_base, device)  # a new connection starts without motion
    assert (await assigned(relay, device))["motion"] is False

    await relay.socket.close()
    await until_analysis(client, owner, device, WAITING)
    await full.socket.close()
    await cam.socket.close()


async def test_a_schedule_disarms_the_camera_outside_its_windows(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("schedule")
    device = await activate_device(owner)
    url = f"{DEVICES}/{device.id}"
    never = {  # a minute on one day of the week, a day away from now
        "timezone": "UTC",
        "windows": [{"days": ["mon"], "start": "00:00", "end": "00:01"}],
    }
    today = time.gmtime().tm_wday
    never["windows"][0]["days"] = [["mon", "tue", "wed", "thu", "fri", "sat", "sun"][today - 3]]
    r = await client.patch(url, json={"schedule": never}, headers=owner.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["schedule"], r.json()["analysis"]) == (
        never,
        DISARMED,
    )
    r = await client.patch(url, json={"schedule": None}, headers=owner.headers)
    assert (r.json()["schedule"], r.json()["analysis"]) == (
        None,
        OFFLINE,
    )
    for bad in (
        {"schedule": {"windows": []}},
        {"schedule": {"timezone": "Mars/Olympus", "windows": never["windows"]}},
        {"schedule": {"windows": [{"days": ["mon"], "start": "24:00", "end": "01:00"}]}},
        {"analysis_mode": "sometimes"},
        {"armed": "yes"},
    ):
        r = await client.patch(url, json=bad, headers=owner.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), bad


async def test_only_the_owner_arms_a_camera(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    await client.post(
        f"{DEVICES}/{device.id}/shares", json={"email": friend.email}, headers=owner.headers
    )
    url = f"{DEVICES}/{device.id}"
    shared = await client.get(url, headers=friend.headers)
    assert shared.json()["analysis"] == {
        "state": "offline",
        "relay_id": None,
    }  # a viewer sees the state
    r = await client.patch(url, json={"armed": False}, headers=friend.headers)
    assert r.status_code == 403
    stranger = await make_account("stranger")
    assert (
        await client.patch(url, json={"armed": False}, headers=stranger.headers)
    ).status_code == 404


class DeviceReads:
    """Counts ``Device.find`` calls made from the test's own task: the app's assignment loop
    runs beside it in another context and is not counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, waiting_only: bool = False) -> None:
        self.count = 0
        self._mine: contextvars.ContextVar[bool] = contextvars.ContextVar("mine", default=False)
        self._mine.set(True)
        find = Device.find

        def spy(*args: Any, **kwargs: Any) -> Any:
            waiting = bool(args) and args[0].get("analysis_relay", "") is None
            if self._mine.get() and (waiting or not waiting_only):
                self.count += 1
            return find(*args, **kwargs)

        monkeypatch.setattr(Device, "find", spy)

    def since(self) -> int:
        count, self.count = self.count, 0
        return count


async def test_with_no_live_relay_node_a_step_reads_no_devices_but_once_in_a_while(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes: dict[str, assignment.LiveRelay] = {}

    async def online_relays(
        now: datetime | None = None,
    ) -> tuple[dict[str, assignment.LiveRelay], set[str]]:
        return dict(nodes), set(nodes)

    monkeypatch.setattr(assignment, "online_relays", online_relays)
    reads = DeviceReads(monkeypatch)
    idle = assignment.IdleReads(every_s=3600)
    await assignment.assign(idle=idle)
    assert reads.since() > 0  # the first step without nodes releases what they had
    for _ in range(3):
        await assignment.assign(idle=idle)
    assert reads.since() == 0  # nothing to assign, nothing read
    assert metrics.LIVE.analysis == {"active": 0, "waiting_for_relay": idle.waiting}

    nodes["relay-full"] = assignment.LiveRelay("relay-full", capacity=0)
    await assignment.assign(idle=idle)
    assert reads.since() > 0  # a live node: every step reads
    del nodes["relay-full"]
    await assignment.assign(idle=idle)
    assert reads.since() > 0  # its cameras are released at once
    await assignment.assign(idle=idle)
    assert reads.since() == 0

    idle.every_s = 0  # its period passed: the step reads again (releases, the metric)
    await assignment.assign(idle=idle)
    assert reads.since() > 0
    await assignment.assign()  # without IdleReads every step reads, as before
    assert reads.since() > 0


async def test_with_every_live_node_full_a_step_reads_the_waiting_cameras_once_in_a_while(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = {"relay-full": assignment.LiveRelay("relay-full", capacity=0)}

    async def online_relays(
        now: datetime | None = None,
    ) -> tuple[dict[str, assignment.LiveRelay], set[str]]:
        return dict(nodes), set(nodes)

    monkeypatch.setattr(assignment, "online_relays", online_relays)
    waiting = DeviceReads(monkeypatch, waiting_only=True)
    idle = assignment.IdleReads(every_s=3600)
    await assignment.assign(idle=idle)
    assert waiting.since() == 1  # the first full step counts them (the metric)
    for _ in range(3):
        await assignment.assign(idle=idle)
    assert waiting.since() == 0  # nobody to assign them to

    nodes["relay-room"] = assignment.LiveRelay("relay-room", capacity=5)
    await assignment.assign(idle=idle)
    await assignment.assign(idle=idle)
    assert waiting.since() == 2  # room: every step reads
    del nodes["relay-room"]
    await assignment.assign(idle=idle)
    await assignment.assign(idle=idle)
    assert waiting.since() == 1  # full again: the first step reads, the next does not
    idle.every_s = 0  # its period passed
    await assignment.assign(idle=idle)
    assert waiting.since() == 1


def test_an_armed_online_camera_still_assigned_to_a_node_gone_is_waiting_for_relay() -> None:
    """What GET /devices shows does not wait for the release an idle step skips."""
    now = datetime.now(UTC)
    device = Device.model_construct(
        armed=True, online=True, schedule=None, analysis_relay="relay-gone"
    )
    assert assignment.analysis_state(device, {}, now).model_dump() == WAITING
    live = {"relay-gone": assignment.LiveRelay("relay-gone", 10)}
    assert assignment.analysis_state(device, live, now).model_dump() == {
        "state": "active",
        "relay_id": "relay-gone",
    }


def test_idle_reads_are_due_first_after_nodes_then_once_per_period() -> None:
    idle = assignment.IdleReads(every_s=30)
    assert idle.due(100.0)
    idle.read(100.0, waiting=7)
    assert not idle.due(129.9)
    assert idle.due(130.0)
    assert idle.waiting == 7
    idle.nodes_seen()
    assert idle.due(100.0)


async def analysed_by(device: ActivatedDevice) -> str | None:
    found = await Device.get(PydanticObjectId(device.id))
    assert found is not None
    return found.analysis_relay


async def test_a_node_not_heard_from_lately_keeps_its_cameras_until_it_goes_offline(
    ws_base: str, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    """After the database was away longer than LIVE_S no node's relay.load was stored, so
    every node looks silent until its next one: the steps in between must not take the
    cameras from the nodes analysing them (the full soak's database pause, run G)."""
    device = await activate_device(await make_account("silent"), "Hall")
    relay_id, relay = await relay_node(ws_base, capacity=1000)
    cam = await camera(ws_base, device)
    assert (await assigned(relay, device))["device_id"] == device.id
    nodes = RelayNode.get_pymongo_collection()
    long_ago = datetime.now(UTC) - timedelta(seconds=assignment.LIVE_S + 5)
    await nodes.update_one({"relay_id": relay_id}, {"$set": {"last_seen": long_ago}})
    for _ in range(3):  # the app's own steps run meanwhile, every second
        await assignment.assign()
        assert await analysed_by(device) == relay_id
    assert relay_id not in await assignment.live_relays()  # it takes no new camera
    await nodes.update_one({"relay_id": relay_id}, {"$set": {"online": False}})
    await assignment.assign()
    assert await analysed_by(device) is None
    await cam.socket.close()
    await relay.socket.close()
