"""Media over HTTP (docs/protocol.md, "Media"): lists, metadata, byte ranges, deletion,
owners' video uploads (what relay nodes send is cloud.media.relays).

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
from cloud.devices.access import Action, authorize, parse_id
from cloud.errors import (
    CloudError,
    Malformed,
    NotFound,
    TooLarge,
)
from cloud.http import Endpoint, error_response, parse_query, reply
from cloud.media.catalog import (
    content_tokens,
    limits,
    live,
    media_store,
    now,
    remove,
    usage,
)
from cloud.media.intake import Intake
from cloud.media.models import Media
from cloud.media.ranges import Unsatisfiable, parse_range
from cloud.media.store import MissingFile
from cloud.media.tokens import ContentTokens
from protocol.api import (
    MediaContentQuery,
    MediaList,
    MediaOut,
    MediaQuery,
    MediaUsage,
    UploadQuery,
)
from protocol.errors import ErrorCode

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
    """Store an owner's video file; it is ``pending`` until a relay node takes its analysis.

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


TAG = "media"
ITEM = "/api/v1/media/{media_id}"
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
        "owner's quota (413 media_quota_exceeded). A relay node then analyses it "
        "(GET /uploads/{id} shows the progress).",
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
]
