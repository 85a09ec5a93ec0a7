"""Presence writes ordered by connection epochs, on the real database server."""

import asyncio
from datetime import datetime
from unittest.mock import ANY

import httpx
import pytest
from beanie import PydanticObjectId
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import AutoReconnect
from starlette.applications import Starlette

from cloud.settings import Settings
from cloud.signaling import presence
from cloud.signaling.bus import MemoryBus
from tests.conftest import ActivateDevice, MakeAccount, share


async def test_a_stale_offline_never_overwrites_a_newer_online(
    app: Starlette, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    device = await activate_device(await make_account())
    old = await presence.came_online(device.id)
    new = await presence.came_online(device.id)
    assert old is not None
    assert new is not None
    assert new[0] > old[0]
    assert await presence.went_offline(device.id, old[0]) is None  # landed late: no effect
    assert await presence.not_online([device.id]) == []
    assert await presence.went_offline(device.id, new[0]) is not None
    assert await presence.not_online([device.id]) == [device.id]
    assert await presence.epoch_of(device.id) == new[0]


async def test_presence_of_a_removed_device_writes_nothing(app: Starlette) -> None:
    missing = "0123456789abcdef01234567"
    assert await presence.came_online(missing) is None
    assert await presence.went_offline(missing, 1) is None
    assert await presence.epoch_of(missing) is None


class Pushes:
    """What CameraPresence asked to push: (device, online, the users told)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bool, set[str]]] = []

    async def __call__(
        self, device_id: str, online: bool, seen: datetime, users: list[PydanticObjectId]
    ) -> None:
        self.sent.append((device_id, online, {str(u) for u in users}))


def database_view(settings: Settings, device_ids: list[str]) -> dict[str, tuple[bool, int]]:
    """Each device's (online, presence epoch) as another instance reads it: its own client."""
    with MongoClient(settings.mongodb_url) as other:
        devices = other[settings.database_name]["devices"]
        found = devices.find({"_id": {"$in": [ObjectId(d) for d in device_ids]}})
        return {str(d["_id"]): (d["online"], d["presence_epoch"]) for d in found}


async def test_cameras_connecting_together_are_written_in_one_batch_and_told_to_their_own_users(
    app: Starlette,
    settings: Settings,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    alice, bob, carol = await make_account(), await make_account(), await make_account()
    alices = [await activate_device(alice, f"Cam {n}") for n in range(3)]
    bobs = await activate_device(bob)
    assert (await share(client, alice, alices[0], carol)).status_code == 201
    cameras = {d.id: f"conn-{n}" for n, d in enumerate([*alices, bobs])}
    pushes = Pushes()
    watcher = presence.CameraPresence(cameras, MemoryBus(), pushes)
    await asyncio.gather(*(watcher.online(d, conn) for d, conn in cameras.items()))

    view = database_view(settings, list(cameras))
    assert {online for online, _ in view.values()} == {True}
    assert len({epoch for _, epoch in view.values()}) == 1  # one write for all four
    told = {device: users for device, online, users in pushes.sent if online}
    assert len(pushes.sent) == 4
    assert told == {
        alices[0].id: {alice.id, carol.id},
        alices[1].id: {alice.id},
        alices[2].id: {alice.id},
        bobs.id: {bob.id},
    }
    for device_id, conn in cameras.items():
        await watcher.offline(device_id, conn)
    assert {online for online, _ in database_view(settings, list(cameras)).values()} == {False}
    assert sorted(d for d, online, _ in pushes.sent if not online) == sorted(cameras)


async def test_of_two_connections_of_a_camera_waiting_together_only_the_later_is_written(
    app: Starlette, settings: Settings, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    account = await make_account()
    device = await activate_device(account)
    cameras = {device.id: "conn-new"}  # the hub replaced conn-old
    pushes = Pushes()
    watcher = presence.CameraPresence(cameras, MemoryBus(), pushes)
    await asyncio.gather(
        watcher.online(device.id, "conn-old"), watcher.online(device.id, "conn-new")
    )
    assert pushes.sent == [(device.id, True, {account.id})]
    await watcher.offline(device.id, "conn-old")  # its online was never written: nothing
    assert database_view(settings, [device.id])[device.id][0] is True
    await watcher.offline(device.id, "conn-new")
    assert database_view(settings, [device.id])[device.id][0] is False
    assert pushes.sent[-1] == (device.id, False, {account.id})


async def test_a_camera_removed_before_its_write_is_neither_written_nor_told(
    app: Starlette,
    settings: Settings,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    account = await make_account()
    kept, removed = await activate_device(account, "Kept"), await activate_device(account, "Gone")
    gone = await client.delete(f"/api/v1/devices/{removed.id}", headers=account.headers)
    assert gone.status_code == 204
    cameras = {kept.id: "conn-1", removed.id: "conn-2"}
    pushes = Pushes()
    watcher = presence.CameraPresence(cameras, MemoryBus(), pushes)
    await asyncio.gather(*(watcher.online(d, conn) for d, conn in cameras.items()))
    assert pushes.sent == [(kept.id, True, {account.id})]
    assert database_view(settings, list(cameras)) == {kept.id: (True, ANY)}


async def test_a_camera_whose_batch_was_written_but_not_read_back_still_goes_offline(
    app: Starlette,
    settings: Settings,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = await activate_device(await make_account())

    async def away(owners: object) -> dict[PydanticObjectId, list[PydanticObjectId]]:
        raise AutoReconnect("the database went away after the write")

    monkeypatch.setattr(presence, "audiences", away)
    pushes = Pushes()
    watcher = presence.CameraPresence({device.id: "conn-1"}, MemoryBus(), pushes)
    await watcher.online(device.id, "conn-1")
    assert pushes.sent == []  # who to tell is unknown: nobody is told
    assert database_view(settings, [device.id])[device.id][0] is True
    monkeypatch.undo()
    await watcher.offline(device.id, "conn-1")  # its epoch was kept: the offline lands
    assert database_view(settings, [device.id])[device.id][0] is False
