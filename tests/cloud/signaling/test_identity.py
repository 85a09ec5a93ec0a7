"""Camera assertions checked against the key registered now, also when hellos come together."""

import asyncio
import base64

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette

from cloud.devices.access import binding_of
from cloud.errors import Unauthenticated
from cloud.signaling.bus import MemoryBus
from cloud.signaling.identity import DeviceAssertions
from device_sim.identity import assertion
from tests.conftest import ActivateDevice, MakeAccount, camera_key

AUDIENCE = "http://testserver"  # the settings' public_url


async def started_bus() -> MemoryBus:
    bus = MemoryBus()
    await bus.start()
    return bus


async def test_hellos_arriving_together_each_prove_their_own_camera_and_owner(
    app: Starlette, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    alice, bob = await make_account(), await make_account()
    devices = [await activate_device(alice, "A1"), await activate_device(alice, "A2")]
    devices.append(await activate_device(bob, "B1"))
    impostor_key, _ = camera_key()  # signs for alice's A1 without its key
    assertions = DeviceAssertions(AUDIENCE, await started_bus())
    results = await asyncio.gather(
        *(assertions.verify(assertion(d.private_key, d.id, AUDIENCE)) for d in devices),
        assertions.verify(assertion(impostor_key, devices[0].id, AUDIENCE)),
        return_exceptions=True,
    )
    *proved, impostor = results
    assert isinstance(impostor, Unauthenticated)
    owners = [alice.id, alice.id, bob.id]
    for device, owner, principal in zip(devices, owners, proved, strict=True):
        assert not isinstance(principal, BaseException), principal
        assert str(principal.device_id) == device.id
        assert str(principal.owner_id) == owner
        assert principal.binding.startswith(f"bind:{device.id}:")


async def test_a_removed_camera_is_refused_at_its_next_hello_though_it_connected_before(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    account = await make_account()
    device = await activate_device(account)
    assertions = DeviceAssertions(AUDIENCE, await started_bus())
    await assertions.verify(assertion(device.private_key, device.id, AUDIENCE))
    removed = await client.delete(f"/api/v1/devices/{device.id}", headers=account.headers)
    assert removed.status_code == 204
    with pytest.raises(Unauthenticated, match="unknown device"):
        await assertions.verify(assertion(device.private_key, device.id, AUDIENCE))


async def test_an_upper_case_device_id_proves_the_same_camera_and_binding(
    app: Starlette, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    device = await activate_device(await make_account())
    assertions = DeviceAssertions(AUDIENCE, await started_bus())
    principal = await assertions.verify(assertion(device.private_key, device.id.upper(), AUDIENCE))
    assert str(principal.device_id) == device.id
    raw = device.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    registered = base64.urlsafe_b64encode(raw).decode()  # as tests.conftest activates it
    assert principal.binding == binding_of(device.id, registered)  # as revocations name it
