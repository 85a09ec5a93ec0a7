"""Media over HTTP (docs/protocol.md, "Media"): lists, metadata, byte ranges, deletion,
relays' clip uploads and owners' video uploads.

Who may do what is :func:`cloud.devices.access.authorize` on the item's device, read at
every request: anyone who may see the device reads its media, its owner deletes and
uploads. An item of a device the caller may not see answers 404 like an unknown one, and
so does a content URL whose token is bad, expired or another user's.
"""

import logging
import re
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cloud.auth.models import User
from cloud.auth.tokens import UserPrincipal
from cloud.context import context, require_user, user
from cloud.devices.access import Action, audience, authorize, parse_id
from cloud.devices.models import Device
from cloud.errors import (
    CloudError,
    Forbidden,
    Invalid,
    Malformed,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from cloud.events.models import EventThread, event_out
from cloud.http import Endpoint, error_response, parse_body, parse_query, reply
from cloud.media.catalog import (
    content_tokens,
    limits,
    live,
    media_store,
    now,
    remove,
    save_clip,
    usage,
)
from cloud.media.formats import CLIP_TYPES
from cloud.media.intake import Intake
from cloud.media.models import Media
from cloud.media.ranges import Unsatisfiable, parse_range
from cloud.media.store import MissingFile, StoredFile
from cloud.media.tokens import ContentTokens
from cloud.relays.routes import require_relay
from protocol.api import (
    ClipUploadQuery,
    MediaContentQuery,
    MediaList,
    MediaOut,
    MediaQuery,
    MediaUsage,
    UploadProgress,
    UploadQuery,
)
from protocol.errors import ErrorCode
from protocol.messages import EventPush

log = logging.getLogger(__name__)

CONTENT_PATH = "/api/v1/media/{}/content"
UPLOAD_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/webm")
THREAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # protocol.events.ThreadId
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def media_out(doc: Media, tokens: ContentTokens | None, viewer: UserPrincipal | None) -> MediaOut:
    """``doc`` as the API shows it; ``content_url`` carries a token for ``viewer``."""
    assert doc.id is not None
    url = None
    if doc.file_id is not None and tokens is not None and viewer is not None:
        url = CONTENT_PATH.format(doc.id) + "?token=" + tokens.issue(doc.id, viewer.user_id)
    return MediaOut(
        id=str(doc.id),
        device_id=str(doc.device_id),
        kind=doc.kind,
        content_type=doc.content_type,
        size=doc.size,
        state=doc.state,
        created_at=doc.created_at,
        expires_at=doc.expires_at,
        started_at=doc.started_at,
        ended_at=doc.ended_at,
        duration_s=doc.duration_s,
        thread_id=doc.thread_id,
        filename=doc.filename,
        error=doc.error,
        analysis=doc.analysis,
        progress=doc.progress,
        content_url=url,
    )


def media_for(request: Request, doc: Media) -> MediaOut:
    return media_out(doc, content_tokens(request), user(request))


async def _visible(request: Request, action: Action, param: str = "media_id") -> Media:
    """The unexpired item of the path whose device the caller may see (404 otherwise)."""
    unknown = NotFound("no such media")
    doc = await Media.get(parse_id(request.path_params[param], "media"))
    if doc is None or doc.expires_at <= datetime.now(UTC):
        raise unknown
    try:
        await authorize(user(request), str(doc.device_id), action)
    except NotFound:
        raise unknown from None
    return doc


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


# users ----------------------------------------------------------------------------------


def _cursor(encoded: str) -> dict[str, object]:
    created, _, last = encoded.partition("_")
    try:
        at = EPOCH + timedelta(milliseconds=int(created))
    except (ValueError, OverflowError):
        raise Malformed("cursor is not one this server returned") from None
    if not PydanticObjectId.is_valid(last) or len(last) != 24:
        raise Malformed("cursor is not one this server returned")
    before = PydanticObjectId(last)
    return {"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": before}}]}


def _next_cursor(doc: Media) -> str:
    return f"{(doc.created_at - EPOCH) // timedelta(milliseconds=1)}_{doc.id}"


async def list_media(request: Request) -> Response:
    query = parse_query(request, MediaQuery)
    access = await authorize(user(request), request.path_params["device_id"], Action.VIEW)
    conditions: dict[str, object] = {"device_id": access.device.id, **live()}
    if query.kind:
        conditions["kind"] = query.kind
    if query.cursor:
        conditions.update(_cursor(query.cursor))
    docs = await Media.find(conditions).sort("-created_at", "-_id").limit(query.limit + 1).to_list()
    page = docs[: query.limit]
    cursor = _next_cursor(page[-1]) if len(docs) > query.limit else None
    return reply(MediaList(media=[media_for(request, d) for d in page], next_cursor=cursor))


async def get_media(request: Request) -> Response:
    return reply(media_for(request, await _visible(request, Action.VIEW)))


async def get_upload(request: Request) -> Response:
    doc = await _visible(request, Action.VIEW, "upload_id")
    if doc.kind != "upload":
        raise NotFound("no such upload")
    return reply(media_for(request, doc))


async def require_viewer(request: Request) -> UserPrincipal:
    """A content URL's token for this item, else the Authorization header (401 without)."""
    token = request.query_params.get("token")
    if token is None:
        return await require_user(request)
    user_id = content_tokens(request).verify(token, request.path_params["media_id"])
    account = await User.get(user_id) if user_id is not None else None
    if account is None or account.id is None:
        raise NotFound("no such media")
    return UserPrincipal(account.id, account.email)


async def get_media_content(request: Request) -> Response:
    """The bytes, whole (200) or one range (206); 416 for a range past the end.

    The item is read again if its file was replaced between reading the document and
    opening the file (a clip's upload while its event runs).
    """
    parse_query(request, MediaContentQuery)
    store = media_store(request)
    for _ in range(3):
        doc = await _visible(request, Action.VIEW)
        if doc.file_id is None:
            raise NotFound("this media has no content yet")
        etag = f'"{doc.file_id}"'
        header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range != etag:
            header = None  # the client's copy is of another version: send this one whole
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "X-Content-Type-Options": "nosniff"}
        try:
            wanted = parse_range(header, doc.size)
        except Unsatisfiable:
            return error_response(
                416,
                ErrorCode.RANGE_NOT_SATISFIABLE,
                f"the content has {doc.size} bytes",
                {**headers, "Content-Range": f"bytes */{doc.size}"},
            )
        start, end = (wanted.start, wanted.end) if wanted else (0, doc.size)
        status = 206 if wanted else 200
        headers["Content-Length"] = str(end - start)
        if wanted:
            headers["Content-Range"] = wanted.content_range(doc.size)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=doc.content_type)
        try:
            chunks = await store.read(doc.file_id, start, end)
        except MissingFile:
            continue  # replaced or removed meanwhile: look again
        return StreamingResponse(
            chunks, status_code=status, headers=headers, media_type=doc.content_type
        )
    raise NotFound("no such media")


async def delete_media(request: Request) -> Response:
    doc = await _visible(request, Action.CONTROL)
    await remove(media_store(request), doc)
    log.info("media %s deleted by %s", doc.id, user(request).user_id)
    return reply(None, 204)


async def media_usage(request: Request) -> Response:
    principal = user(request)
    limit = await limits(principal.user_id, context(request).settings)
    by_kind = await usage(principal.user_id)
    return reply(
        MediaUsage(
            used_bytes=sum(by_kind.values()),
            quota_bytes=limit.quota_bytes,
            retention_days=limit.retention_days,
            by_kind=by_kind,
        )
    )


async def create_upload(request: Request) -> Response:
    """Store an owner's video file; its analysis by a relay is not served yet ("pending").

    Two uploads racing may both pass the quota check; the sweep never removes uploads,
    so such an owner stays over quota until they delete something.
    """
    settings = context(request).settings
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    device = access.device
    assert device.id is not None
    query = parse_query(request, UploadQuery)
    limit = await limits(device.owner_id, settings)
    used = sum((await usage(device.owner_id)).values())
    room = limit.quota_bytes - used
    too_large: CloudError = TooLarge(
        f"uploads are limited to {settings.media_upload_max_bytes} bytes"
    )
    if room < settings.media_upload_max_bytes:
        too_large = TooLarge(
            f"this upload would pass your media quota ({used} of {limit.quota_bytes} bytes used)",
            ErrorCode.MEDIA_QUOTA_EXCEEDED,
        )
    cap = min(settings.media_upload_max_bytes, room)
    declared = declared_length(request)
    if cap <= 0 or (declared is not None and declared > cap):
        raise too_large
    intake = Intake(request.stream(), cap, too_large, UPLOAD_TYPES)
    stored = await media_store(request).put(
        intake, filename=query.filename or "upload", metadata={"device_id": str(device.id)}
    )
    at = now()
    assert intake.content_type is not None
    doc = Media(
        owner_id=device.owner_id,
        device_id=device.id,
        kind="upload",
        content_type=intake.content_type,
        size=stored.size,
        file_id=PydanticObjectId(stored.file_id),
        state="ready",
        created_at=at,
        updated_at=at,
        expires_at=at + timedelta(days=limit.retention_days),
        filename=query.filename,
        analysis="pending",
        progress=0.0,
    )
    try:
        await doc.insert()
    except BaseException:
        await media_store(request).delete(stored.file_id)
        raise
    log.info("upload %s (%s, %d bytes) to device %s", doc.id, doc.content_type, doc.size, device.id)
    return reply(media_for(request, doc), 201)


# relays ---------------------------------------------------------------------------------


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
    doc = await save_clip(
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
    if doc.created_at == doc.updated_at:  # its first upload: the thread's apps learn of it
        thread = await EventThread.find_one({"device_id": device.id, "thread_id": thread_id})
        if thread is not None:
            out = event_out(thread)
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


TAG = "media"
ITEM = "/api/v1/media/{media_id}"
CLIP_DESCRIPTION = (
    "The body is the whole clip so far (Content-Type video/mp4 or video/webm, at most "
    "MEDIA_CLIP_MAX_BYTES), streamed into storage; it replaces the previous upload of the "
    "thread atomically, so the clip plays while the event runs. Query: started_at (RFC 3339), "
    "final (true on the last upload: state ready, ended_at, duration_s), duration_s. 409 "
    "clip_finished: a non-final upload after the final one. 415: not that container."
)
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/devices/{device_id}/media",
        list_media,
        "A camera's clips, recordings, snapshots and uploads, newest first",
        TAG,
        query=MediaQuery,
        response=MediaList,
        errors=(400, 404),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        "/api/v1/media/usage",
        media_usage,
        "Bytes your cameras' media take, your quota and retention",
        TAG,
        response=MediaUsage,
        auth=require_user,
    ),
    Endpoint("GET", ITEM, get_media, "One media item", TAG, response=MediaOut, auth=require_user),
    Endpoint(
        "GET",
        ITEM + "/content",
        get_media_content,
        "The item's bytes (Range: bytes=a-b, a-, -n)",
        TAG,
        query=MediaContentQuery,
        auth=require_viewer,
        description="200 with Accept-Ranges: bytes, or 206 with Content-Range for one range; "
        "416 with Content-Range: bytes */size when the range is past the end. Authenticate "
        "with the Authorization header or the token in content_url.",
    ),
    Endpoint(
        "DELETE",
        ITEM,
        delete_media,
        "Delete a media item and its content (the camera's owner)",
        TAG,
        status=204,
        errors=(403,),
        auth=require_user,
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/{device_id}/uploads",
        create_upload,
        "Upload a video file (MP4, MOV, MKV or WebM) for the camera (its owner)",
        TAG,
        status=201,
        query=UploadQuery,
        response=MediaOut,
        errors=(403, 413, 415),
        auth=require_user,
        description="The body is the file itself, recognised by its first bytes (415 "
        "otherwise); at most MEDIA_UPLOAD_MAX_BYTES (413 payload_too_large) and within the "
        "owner's quota (413 media_quota_exceeded). Its analysis stays 'pending' for now.",
    ),
    Endpoint(
        "GET",
        "/api/v1/uploads/{upload_id}",
        get_upload,
        "An uploaded video: its state and analysis progress",
        TAG,
        response=MediaOut,
        auth=require_user,
    ),
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
]
