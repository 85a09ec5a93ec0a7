"""What relay nodes send and fetch about media (docs/protocol.md, "Media"): the clips of the
event threads they report, and the uploaded videos the cloud gives them to analyse (the
node reads the file, reports its progress, and its events as any other).

A relay authenticates with its credential (:func:`cloud.relays.routes.require_relay`); an
upload is served to, and reported by, only the node it was given to.
"""

import logging

from beanie import PydanticObjectId
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cloud.context import context
from cloud.devices.access import audience, parse_id
from cloud.devices.models import Device
from cloud.errors import (
    Forbidden,
    Invalid,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from cloud.events.models import event_out
from cloud.http import Endpoint, parse_body, parse_query, reply
from cloud.media.catalog import (
    live,
    media_store,
    now,
    save_clip,
)
from cloud.media.formats import CLIP_TYPES
from cloud.media.intake import Intake
from cloud.media.models import Media
from cloud.media.routes import THREAD_ID, declared_length, media_out
from cloud.media.store import StoredFile
from cloud.relays.routes import require_relay
from protocol.api import (
    ClipUploadQuery,
    MediaOut,
    UploadProgress,
)
from protocol.errors import ErrorCode
from protocol.messages import EventPush

log = logging.getLogger(__name__)


def clip_type(request: Request, what: str) -> str:
    """The Content-Type of a clip or recording upload (415 unless MP4 or WebM)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CLIP_TYPES:
        raise UnsupportedMediaType(f"send a {what} as video/mp4 or video/webm")
    return content_type


async def store_clip(
    request: Request, content_type: str, filename: str, device_id: PydanticObjectId
) -> StoredFile:
    """A relay node's clip or recording upload (the body), checked while it is stored:
    at most ``MEDIA_CLIP_MAX_BYTES``, and of ``content_type`` by its first bytes."""
    cap = context(request).settings.media_clip_max_bytes
    too_large = TooLarge(f"clips and recordings are limited to {cap} bytes")
    declared = declared_length(request)
    if declared is not None and declared > cap:
        raise too_large
    intake = Intake(request.stream(), cap, too_large, (content_type,))
    return await media_store(request).put(
        intake, filename=filename, metadata={"device_id": str(device_id)}
    )


async def upload_clip(request: Request) -> Response:
    """Relay node: the whole clip of an event thread so far; each upload replaces the last."""
    settings = context(request).settings
    device = await Device.get(parse_id(request.path_params["device_id"]))
    if device is None or device.id is None:
        raise NotFound("no such device", ErrorCode.DEVICE_NOT_FOUND)
    thread_id = request.path_params["thread_id"]
    if not THREAD_ID.match(thread_id):
        raise Invalid("thread_id: 1-64 letters, digits, '_' or '-'")
    query = parse_query(request, ClipUploadQuery)
    content_type = clip_type(request, "clip")
    store = media_store(request)
    stored = await store_clip(request, content_type, f"clip-{thread_id}", device.id)
    doc, named = await save_clip(
        store,
        settings,
        device,
        thread_id,
        stored,
        content_type,
        started_at=query.started_at,
        final=query.final,
        duration_s=query.duration_s,
    )
    log.info(
        "clip %s of device %s thread %s: %d bytes%s from relay %s",
        doc.id,
        device.id,
        thread_id,
        doc.size,
        " (final)" if query.final else "",
        request.state.principal,
    )
    if named is not None:  # the thread's apps learn of its clip, with the thread as it is now
        out = event_out(named)
        await context(request).signaling.push(
            await audience(device.id), EventPush(**out.model_dump())
        )
    return reply(media_out(doc, None, None))


async def report_upload(request: Request) -> Response:
    """Relay node: how its analysis of an uploaded video goes."""
    body = await parse_body(request, UploadProgress)
    doc = await Media.find_one(
        {"_id": parse_id(request.path_params["upload_id"], "upload"), "kind": "upload", **live()}
    )
    if doc is None:
        raise NotFound("no such upload")
    if doc.analysis_relay not in (None, request.state.principal):
        raise Forbidden("another relay node analyses this upload")
    progress = 1.0 if body.analysis == "analysed" else body.progress
    await doc.set(
        {
            Media.analysis: body.analysis,
            Media.progress: progress if progress is not None else doc.progress,
            Media.error: body.error,
            Media.updated_at: now(),
        }
    )
    return reply(media_out(doc, None, None))


async def upload_content(request: Request) -> Response:
    """The uploaded file, whole, for the relay node analysing it (404 for any other)."""
    doc = await Media.find_one(
        {
            "_id": parse_id(request.path_params["upload_id"], "upload"),
            "kind": "upload",
            "analysis_relay": request.state.principal,
            **live(),
        }
    )
    if doc is None or doc.file_id is None:
        raise NotFound("no such upload for this relay node")
    chunks = await media_store(request).read(doc.file_id, 0, doc.size)
    headers = {"Content-Length": str(doc.size)}
    return StreamingResponse(chunks, headers=headers, media_type=doc.content_type)


CLIP_DESCRIPTION = (
    "The body is the whole clip so far (Content-Type video/mp4 or video/webm, at most "
    "MEDIA_CLIP_MAX_BYTES), streamed into storage; it replaces the previous upload of the "
    "thread atomically, so the clip plays while the event runs. Query: started_at (RFC 3339), "
    "final (true on the last upload: state ready, ended_at, duration_s), duration_s. 409 "
    "clip_finished: a non-final upload after the final one. 415: not that container."
)


ENDPOINTS = [
    Endpoint(
        "PUT",
        "/api/v1/relays/devices/{device_id}/clips/{thread_id}",
        upload_clip,
        "Relay node: upload an event thread's clip so far",
        "relays",
        query=ClipUploadQuery,
        response=MediaOut,
        errors=(403, 409, 413, 415),
        auth=require_relay,
        description=CLIP_DESCRIPTION,
    ),
    Endpoint(
        "PATCH",
        "/api/v1/relays/uploads/{upload_id}",
        report_upload,
        "Relay node: report the analysis of an uploaded video",
        "relays",
        body=UploadProgress,
        response=MediaOut,
        errors=(403,),
        auth=require_relay,
    ),
    Endpoint(
        "GET",
        "/api/v1/relays/uploads/{upload_id}/content",
        upload_content,
        "Relay node: the uploaded video it was given to analyse",
        "relays",
        media_type="application/octet-stream",
        errors=(404,),
        auth=require_relay,
    ),
]
