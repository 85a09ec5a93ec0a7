"""The media catalog: documents and their stored files kept consistent, and owners' limits.

Rules every writer here follows, so that no file is ever left that nothing points at:

- Removing an item deletes its file first, then the document, and the document only if
  it still points at that file (a clip upload may have swapped in a new one meanwhile:
  then it goes round again). A crash in between leaves a document without content (its
  content answers 404, the next delete or sweep finishes it), never an orphaned file.
- Replacing content (a clip while its event runs) stores the new file, swaps ``file_id``
  in one ``find_one_and_update`` that returns the previous version, then deletes the old
  file. Readers always find a whole file: the old one or the new one.
- Every read of the catalog ignores expired items (``expires_at``), whatever the sweep
  (``cloud.media.retention``) has done yet.

Limits are per owner: ``User.media_retention_days`` / ``media_quota_bytes`` when set,
else ``MEDIA_RETENTION_DAYS`` / ``MEDIA_QUOTA_BYTES``. An item's ``expires_at`` is fixed
when it is made.

Other features call :func:`delete_device_media` (a removed camera) and
:func:`delete_owner_media` (a deleted account) with :func:`media_store` of the request.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request

from cloud.auth.models import User
from cloud.devices.models import Device
from cloud.errors import Conflict
from cloud.events.models import EventThread
from cloud.media.models import Media
from cloud.media.store import MediaStore, StoredFile
from cloud.media.tokens import ContentTokens
from cloud.settings import Settings
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)


def media_store(request: Request) -> MediaStore:
    """The process's store (``create_app`` puts it on ``app.state``)."""
    store: MediaStore = request.app.state.media_store
    return store


def content_tokens(request: Request) -> ContentTokens:
    tokens: ContentTokens = request.app.state.content_tokens
    return tokens


def now() -> datetime:
    """The current time at BSON's precision (milliseconds), so what is written reads back."""
    current = datetime.now(UTC)
    return current.replace(microsecond=current.microsecond // 1000 * 1000)


def live() -> dict[str, Any]:
    """The condition every read adds: not expired."""
    return {"expires_at": {"$gt": datetime.now(UTC)}}


@dataclass(frozen=True)
class Limits:
    retention_days: int
    quota_bytes: int


async def limits(owner_id: PydanticObjectId, settings: Settings) -> Limits:
    owner = await User.get(owner_id)
    return limits_of(owner, settings)


def limits_of(owner: User | None, settings: Settings) -> Limits:
    days = owner.media_retention_days if owner is not None else None
    quota = owner.media_quota_bytes if owner is not None else None
    return Limits(
        retention_days=settings.media_retention_days if days is None else days,
        quota_bytes=settings.media_quota_bytes if quota is None else quota,
    )


async def usage(owner_id: PydanticObjectId) -> dict[str, int]:
    """Bytes stored per kind for ``owner_id`` (expired items not counted)."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {"owner_id": owner_id, **live()}},
        {"$group": {"_id": "$kind", "bytes": {"$sum": "$size"}}},
    ]
    rows = await (await Media.get_pymongo_collection().aggregate(pipeline)).to_list()
    return {row["_id"]: int(row["bytes"]) for row in rows}


async def remove(store: MediaStore, doc: Media) -> bool:
    """Delete ``doc``'s file, then ``doc``; False if someone else removed it first."""
    collection = Media.get_pymongo_collection()
    for _ in range(5):
        if doc.file_id is not None:
            await store.delete(doc.file_id)
        deleted = await collection.delete_one({"_id": doc.id, "file_id": doc.file_id})
        if deleted.deleted_count:
            if doc.kind == "clip" and doc.thread_id is not None:
                await EventThread.get_pymongo_collection().update_one(
                    {"device_id": doc.device_id, "thread_id": doc.thread_id, "clip_id": doc.id},
                    {"$unset": {"clip_id": ""}},
                )
            log.info("media %s (%s, %d bytes) removed", doc.id, doc.kind, doc.size)
            return True
        current = await Media.get(doc.id) if doc.id is not None else None
        if current is None:
            return False
        doc = current  # its content was replaced meanwhile: remove the new file too
    raise RuntimeError(f"media {doc.id} kept changing while being removed")


async def _remove_all(store: MediaStore, condition: dict[str, Any]) -> int:
    removed = 0
    while batch := await Media.find(condition).limit(500).to_list():
        for doc in batch:
            removed += await remove(store, doc)
    return removed


async def delete_device_media(store: MediaStore, device_id: PydanticObjectId) -> int:
    """Delete every media item of a device, documents and files; call when it is removed."""
    return await _remove_all(store, {"device_id": device_id})


async def delete_owner_media(store: MediaStore, owner_id: PydanticObjectId) -> int:
    """Delete every media item an owner pays for, documents and files (account deletion)."""
    return await _remove_all(store, {"owner_id": owner_id})


async def save_clip(
    store: MediaStore,
    settings: Settings,
    device: Device,
    thread_id: str,
    stored: StoredFile,
    content_type: str,
    *,
    started_at: datetime | None,
    final: bool,
    duration_s: float | None,
) -> tuple[Media, EventThread | None]:
    """Make ``stored`` the content of the clip of ``thread_id`` (created on first upload);
    the clip, and its event thread as this upload left it when this upload named the clip on
    it (None when the thread named it already, or there is no thread yet: the thread's
    report names it then, and tells the apps).

    A non-final upload after the final one is refused (409 ``clip_finished``) and its file
    deleted; a repeated final upload replaces the content again (a relay's retry). Until
    the swap, a failure deletes ``stored``; after it, ``stored`` is the clip's content.
    """
    assert device.id is not None
    at = now()
    new_id = ObjectId()
    fields: dict[str, Any] = {
        "file_id": stored.file_id,
        "size": stored.size,
        "content_type": content_type,
        "updated_at": at,
        "state": "ready" if final else "recording",
    }
    condition: dict[str, Any] = {"device_id": device.id, "kind": "clip", "thread_id": thread_id}
    if not final:
        condition["state"] = "recording"
    limit = await limits(device.owner_id, settings)
    on_insert: dict[str, Any] = {
        "_id": new_id,
        "owner_id": device.owner_id,
        "created_at": at,
        "expires_at": at + timedelta(days=limit.retention_days),
    }
    if started_at is not None:
        fields["started_at"] = started_at
    else:
        on_insert["started_at"] = at
    try:
        before = await Media.get_pymongo_collection().find_one_and_update(
            condition,
            {"$set": fields, "$setOnInsert": on_insert},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
    except BaseException as exc:
        await store.delete(stored.file_id)  # never swapped in: nothing points at it
        if isinstance(exc, DuplicateKeyError):
            # The filter missed because the clip is already "ready", and the upsert then
            # met the one-clip-per-thread index.
            raise Conflict("this clip was already finished", ErrorCode.CLIP_FINISHED) from None
        raise
    media_id = PydanticObjectId(before["_id"] if before else new_id)
    if before and before.get("file_id") and before["file_id"] != stored.file_id:
        await store.delete(before["file_id"])
    if final:
        began = started_at or (before or {}).get("started_at") or at
        ended: dict[str, Any] = {"ended_at": at, "duration_s": duration_s}
        if duration_s is None:
            ended["duration_s"] = max(0.0, (at - began).total_seconds())
        await Media.get_pymongo_collection().update_one({"_id": media_id}, {"$set": ended})
    named = await EventThread.get_pymongo_collection().find_one_and_update(
        {"device_id": device.id, "thread_id": thread_id, "clip_id": {"$ne": media_id}},
        {"$set": {"clip_id": media_id}},
        return_document=ReturnDocument.AFTER,
    )
    doc = await Media.get(media_id)
    if doc is None:
        raise RuntimeError(f"clip {media_id} vanished after its upload")
    return doc, None if named is None else EventThread.model_validate({**named, "id": named["_id"]})
