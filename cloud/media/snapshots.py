"""Snapshots on demand (docs/protocol.md, "Media"): ``GET /devices/{id}/snapshot`` answers a
JPEG of the camera's picture now, within :data:`SNAPSHOT_TIMEOUT_S`.

The relay node watching the camera answers when there is one (it holds the latest decoded
frame, so nothing is asked of the camera); otherwise the camera itself. Either is sent a
``snapshot.request`` over its connection (through the bus: it may be held by another cloud
instance) and uploads the JPEG over HTTPS, to whichever instance: the ticket that joins the
two is a short-lived document, and the instance answering the viewer waits for it there.
"""

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel
from starlette.requests import Request
from starlette.responses import Response

from cloud.analysis.assignment import live_relays
from cloud.context import bearer_token, context, require_user, user
from cloud.devices.access import Action, authorize
from cloud.devices.models import Device
from cloud.errors import (
    CloudError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from cloud.http import Endpoint
from cloud.relays.models import RelayNode
from cloud.relays.routes import require_relay
from cloud.signaling.deliveries import conn_channel, device_channel
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 2.0
POLL_S = 0.05
MAX_JPEG_BYTES = 2 * 1024 * 1024
TICKET_KEPT_S = 60  # TTL: tidying only


class SnapshotTicket(Document):
    """One snapshot asked for: who must answer, and the JPEG once they have."""

    request_id: Annotated[str, Indexed(unique=True)]
    device_id: PydanticObjectId
    source: Literal["relay", "camera"]
    relay_id: str | None = None
    jpeg: bytes | None = None
    created_at: datetime

    class Settings:
        name = "snapshot_tickets"
        indexes = [IndexModel([("created_at", ASCENDING)], expireAfterSeconds=TICKET_KEPT_S)]


async def _watching_relay(device: Device) -> RelayNode | None:
    """The live relay node that holds the camera's picture now, if any."""
    relay_id = device.analysis_relay
    if relay_id is None or relay_id not in await live_relays():
        return None
    watching = device.armed and (device.analysis_mode == "continuous" or device.motion_active)
    if not watching and not (device.recording_until and device.recording_until > _now()):
        return None
    return await RelayNode.find_one({"relay_id": relay_id, "online": True})


def _now() -> datetime:
    return datetime.now(UTC)


async def get_snapshot(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.VIEW)
    device = access.device
    assert device.id is not None
    if not device.online:
        raise Conflict("the camera is offline: no picture now", ErrorCode.DEVICE_OFFLINE)
    relay = await _watching_relay(device)
    ticket = SnapshotTicket(
        request_id=secrets.token_urlsafe(12),
        device_id=device.id,
        source="relay" if relay is not None else "camera",
        relay_id=relay.relay_id if relay is not None else None,
        created_at=_now(),
    )
    await ticket.insert()
    channel = conn_channel(relay.connection_id) if relay else device_channel(str(device.id))
    await context(request).signaling.ask_snapshot(channel, ticket.request_id, str(device.id))
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        done = await SnapshotTicket.find_one(
            {"request_id": ticket.request_id, "jpeg": {"$ne": None}}
        )
        if done is not None and done.jpeg is not None:
            await done.delete()
            return Response(
                done.jpeg,
                media_type="image/jpeg",
                headers={"Cache-Control": "no-store", "X-Snapshot-Source": ticket.source},
            )
    log.warning("snapshot of %s: no answer from the %s in time", device.id, ticket.source)
    raise Unavailable(f"the {ticket.source} sent no picture in time; try again", 2)


async def _jpeg(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_JPEG_BYTES:
        raise TooLarge(f"a snapshot is at most {MAX_JPEG_BYTES} bytes")
    if not body.startswith(b"\xff\xd8\xff"):
        raise Invalid("the body is not a JPEG image")
    return body


async def _fulfil(request_id: str, condition: dict[str, object], jpeg: bytes) -> Response:
    done = await SnapshotTicket.get_pymongo_collection().update_one(
        {"request_id": request_id, "jpeg": None, **condition}, {"$set": {"jpeg": jpeg}}
    )
    if done.matched_count != 1:
        raise NotFound("no snapshot is waiting for this picture")
    return Response(status_code=204)


async def relay_snapshot(request: Request) -> Response:
    """Relay node: the picture a snapshot request asked it for."""
    jpeg = await _jpeg(request)
    relay_id: str = request.state.principal
    return await _fulfil(request.path_params["request_id"], {"relay_id": relay_id}, jpeg)


async def require_camera(request: Request) -> str:
    """A camera's single-use assertion (as on its WebSocket): its device id."""
    try:
        device = await context(request).signaling.assertions.verify(bearer_token(request))
    except CloudError:
        raise Unauthenticated("send the camera's assertion", ErrorCode.INVALID_TOKEN) from None
    return str(device.device_id)


async def camera_snapshot(request: Request) -> Response:
    """Camera: the picture a snapshot request asked it for."""
    jpeg = await _jpeg(request)
    device_id: str = request.state.principal
    if not PydanticObjectId.is_valid(device_id):
        raise Forbidden("not a camera")
    condition = {"device_id": PydanticObjectId(device_id), "source": "camera"}
    return await _fulfil(request.path_params["request_id"], condition, jpeg)


TAG = "media"
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/devices/{device_id}/snapshot",
        get_snapshot,
        "A JPEG of the camera's picture now (from the relay node watching it, else the camera)",
        TAG,
        media_type="image/jpeg",
        errors=(404, 409, 503),
        auth=require_user,
    ),
    Endpoint(
        "PUT",
        "/api/v1/relays/snapshots/{request_id}",
        relay_snapshot,
        "Relay node: the JPEG a snapshot.request asked for (the body)",
        TAG,
        status=204,
        errors=(404, 413, 422),
        auth=require_relay,
    ),
    Endpoint(
        "PUT",
        "/api/v1/devices/snapshots/{request_id}",
        camera_snapshot,
        "Camera: the JPEG a snapshot.request asked for (the body), with its assertion",
        TAG,
        status=204,
        errors=(401, 404, 413, 422),
        auth=require_camera,
    ),
]
