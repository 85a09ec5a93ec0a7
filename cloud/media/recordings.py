"""Recordings on request (docs/protocol.md, "Media"): the owner asks for the next N seconds
of a camera; the relay node assigned to it records them and uploads the file.

``POST /devices/{id}/recordings {duration_s}`` makes the recording (``state: "recording"``,
``until`` its end) and marks the camera recorded until then: the analysis assignment
(cloud.analysis) then gives it to a relay node even when it is disarmed, and ``relay.assign``
carries the order. The node records from now, with the pre-roll it holds when it was already
watching the camera, and uploads the file as it grows and once complete
(``PUT /relays/recordings/{id}``), the same way as an event clip. Listing, reading,
downloading and deleting are the media routes' (``kind=recording``).
"""

import logging
from datetime import timedelta

from beanie import PydanticObjectId
from pymongo import ReturnDocument
from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.tokens import now
from cloud.context import context, require_user, user
from cloud.devices.access import Action, authorize, parse_id
from cloud.devices.models import Device
from cloud.errors import Conflict, Forbidden, NotFound
from cloud.http import Endpoint, parse_body, parse_query, reply
from cloud.media.catalog import limits, media_store
from cloud.media.models import Media
from cloud.media.relays import clip_type, store_clip
from cloud.media.routes import media_for, media_out
from cloud.relays.routes import require_relay
from protocol.api import ClipUploadQuery, MediaOut, RecordingRequest
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)


async def create_recording(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    body = await parse_body(request, RecordingRequest)
    device = access.device
    assert device.id is not None
    if not device.online:
        raise Conflict("the camera is offline: it cannot be recorded now", ErrorCode.DEVICE_OFFLINE)
    at = now()
    until = at + timedelta(seconds=body.duration_s)
    limit = await limits(device.owner_id, context(request).settings)
    doc = Media(
        owner_id=device.owner_id,
        device_id=device.id,
        kind="recording",
        content_type="",  # known with the first upload: the camera's codec decides
        state="recording",
        created_at=at,
        updated_at=at,
        expires_at=at + timedelta(days=limit.retention_days),
        started_at=at,
        until=until,
    )
    await doc.insert()
    await Device.get_pymongo_collection().update_one(
        {"_id": device.id, "$or": [{"recording_until": None}, {"recording_until": {"$lt": until}}]},
        {"$set": {"recording_until": until}},
    )
    context(request).signaling.reassign()
    log.info("recording %s of device %s for %d s", doc.id, device.id, body.duration_s)
    return reply(media_for(request, doc), 201)


async def upload_recording(request: Request) -> Response:
    """Relay node: the whole recording so far; each upload replaces the last."""
    media_id = parse_id(request.path_params["media_id"], "recording")
    query = parse_query(request, ClipUploadQuery)
    content_type = clip_type(request, "recording")
    doc = await Media.find_one({"_id": media_id, "kind": "recording"})
    if doc is None:
        raise NotFound("no such recording")
    if doc.state != "recording":
        raise Conflict("this recording was already finished", ErrorCode.CLIP_FINISHED)
    device = await Device.get(doc.device_id)
    relay_id = request.state.principal
    if device is None or relay_id not in (device.analysis_relay, doc.analysis_relay):
        raise Forbidden("this relay node does not record this camera")
    store = media_store(request)
    stored = await store_clip(request, content_type, f"recording-{media_id}", doc.device_id)
    at = now()
    fields: dict[str, object] = {
        "file_id": PydanticObjectId(stored.file_id),
        "size": stored.size,
        "content_type": content_type,
        "updated_at": at,
    }
    if query.started_at is not None:
        fields["started_at"] = query.started_at
    if query.final:
        fields |= {"state": "ready", "ended_at": at, "duration_s": query.duration_s}
    before = await Media.get_pymongo_collection().find_one_and_update(
        {"_id": media_id, "state": "recording"},
        {"$set": fields},
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:  # finished meanwhile: this file is nobody's
        await store.delete(stored.file_id)
        raise Conflict("this recording was already finished", ErrorCode.CLIP_FINISHED)
    if before.get("file_id"):
        await store.delete(before["file_id"])
    updated = await Media.get(media_id)
    assert updated is not None
    log.info(
        "recording %s: %d bytes%s from relay %s",
        media_id,
        stored.size,
        " (final)" if query.final else "",
        request.state.principal,
    )
    return reply(media_out(updated, None, None))


TAG = "media"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/recordings",
        create_recording,
        "Record the camera from now for duration_s (at most 10 minutes)",
        TAG,
        status=201,
        body=RecordingRequest,
        response=MediaOut,
        errors=(403, 404, 409),
        auth=require_user,
    ),
    Endpoint(
        "PUT",
        "/api/v1/relays/recordings/{media_id}",
        upload_recording,
        "Relay node: the recording so far (the body), replacing the last upload",
        TAG,
        response=MediaOut,
        errors=(403, 404, 409, 413, 415),
        auth=require_relay,
    ),
]
