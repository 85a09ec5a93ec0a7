"""Presence writes ordered by connection epochs, on the real database server."""

from starlette.applications import Starlette

from cloud.signaling import presence
from tests.conftest import ActivateDevice, MakeAccount


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
