"""The one place that answers "may this principal see or control this device?".

Every device route calls :func:`authorize`; it reads ownership and shares from the
database at the moment of the request, never from a cache (docs/design.md, security rules).
A device the principal may not see is reported as unknown (404), so that ids reveal
nothing; a viewer asking to control a device they can see gets 403.

An access names the *grants* it rests on: the camera's binding (its activation with one
key; removal and re-onboarding end it) and, for a viewer, the share. Ending access is
:func:`record_change` first, then the change itself, so that a change the caller is told
of is already on record for every instance to enforce (docs/protocol.md, "Revocation").
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from beanie import PydanticObjectId

from cloud.auth.tokens import UserPrincipal
from cloud.devices.models import AccessChange, Device, Share
from cloud.errors import Forbidden, NotFound
from protocol.api import Role
from protocol.errors import ErrorCode


class Action(StrEnum):
    VIEW = "view"  # read the device, watch it, see its events
    CONTROL = "control"  # rename, remove, share


def binding(device: Device) -> str:
    """The grant of a camera's activation with its current key."""
    return binding_of(str(device.id), device.public_key)


def binding_of(device_id: str, public_key: str) -> str:
    """:func:`binding` from the two fields it rests on (a camera's hello reads only those)."""
    key = hashlib.sha256(public_key.encode()).hexdigest()[:16]
    return f"bind:{device_id}:{key}"


def share_grant(share: Share) -> str:
    return f"share:{share.id}"


@dataclass(frozen=True)
class DeviceAccess:
    device: Device
    role: Role
    share: Share | None = None

    @property
    def grants(self) -> tuple[str, ...]:
        """What this access rests on: the camera's binding, and the share of a viewer."""
        own = binding(self.device)
        return (own,) if self.share is None else (own, share_grant(self.share))


async def record_change(
    device: Device, grants: list[str], reason: Literal["access_revoked", "device_removed"]
) -> AccessChange:
    """Put on record that ``grants`` end; call before making the change itself."""
    assert device.id is not None
    change = AccessChange(device_id=device.id, grants=grants, reason=reason, at=datetime.now(UTC))
    await change.insert()
    return change


def parse_id(raw: str, what: str = "device") -> PydanticObjectId:
    if not PydanticObjectId.is_valid(raw) or len(raw) != 24:
        raise NotFound(
            f"no such {what}",
            ErrorCode.DEVICE_NOT_FOUND if what == "device" else ErrorCode.NOT_FOUND,
        )
    return PydanticObjectId(raw)


async def authorize(principal: UserPrincipal, device_id: str, action: Action) -> DeviceAccess:
    unknown = NotFound("no such device", ErrorCode.DEVICE_NOT_FOUND)
    device = await Device.get(parse_id(device_id))
    if device is None:
        raise unknown
    if device.owner_id == principal.user_id:
        return DeviceAccess(device, "owner")
    share = await Share.find_one(Share.device_id == device.id, Share.user_id == principal.user_id)
    if share is None:
        raise unknown
    if action is not Action.VIEW:
        raise Forbidden("only the camera's owner can do this")
    return DeviceAccess(device, "viewer", share)


async def visible_devices(principal: UserPrincipal) -> list[DeviceAccess]:
    """Devices the principal owns, then those shared with them, each with its role."""
    owned = await Device.find(Device.owner_id == principal.user_id).sort("name").to_list()
    shared_ids = [
        s.device_id for s in await Share.find(Share.user_id == principal.user_id).to_list()
    ]
    shared = (
        await Device.find({"_id": {"$in": shared_ids}}).sort("name").to_list() if shared_ids else []
    )
    return [DeviceAccess(d, "owner") for d in owned] + [DeviceAccess(d, "viewer") for d in shared]


async def audience(device_id: PydanticObjectId) -> list[PydanticObjectId]:
    """Users who may see ``device_id`` right now: its owner and its viewers."""
    # The ids only, without building documents: every camera's connect asks (presence).
    device = await Device.get_pymongo_collection().find_one(
        {"_id": device_id}, projection={"owner_id": 1}
    )
    if device is None:
        return []
    shares = Share.get_pymongo_collection().find(
        {"device_id": device_id}, projection={"user_id": 1, "_id": 0}
    )
    return [
        PydanticObjectId(i) for i in [device["owner_id"], *[s["user_id"] async for s in shares]]
    ]


async def audiences(
    owners: Mapping[PydanticObjectId, PydanticObjectId],
) -> dict[PydanticObjectId, list[PydanticObjectId]]:
    """:func:`audience` of many devices, given each one's owner: their shares in one read.

    For the caller that has just read the devices itself (cloud.signaling.presence).
    """
    viewers: dict[PydanticObjectId, list[PydanticObjectId]] = {d: [] for d in owners}
    if owners:
        shares = Share.get_pymongo_collection().find(
            {"device_id": {"$in": list(owners)}}, projection={"device_id": 1, "user_id": 1}
        )
        async for s in shares:
            viewers[PydanticObjectId(s["device_id"])].append(PydanticObjectId(s["user_id"]))
    return {d: [owner, *viewers[d]] for d, owner in owners.items()}
