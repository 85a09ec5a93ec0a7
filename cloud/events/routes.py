"""Events: relays report thread changes; users list, read, see snapshots, acknowledge.

Every read goes through :func:`cloud.devices.access.authorize` (or the list of visible
devices), and every push goes to the device's audience as the database has it now.
"""

import base64
import binascii
import contextlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError, PyMongoError
from starlette.requests import Request
from starlette.responses import Response

from cloud import metrics
from cloud.context import context, require_user, user
from cloud.devices.access import Action, audiences, authorize, parse_id, visible_devices
from cloud.devices.models import Device
from cloud.errors import Invalid, Malformed, NotFound, Unavailable, database_unavailable
from cloud.events.models import EventReceipt, EventSnapshot, EventThread, event_out
from cloud.http import Endpoint, parse_body, parse_query, reply
from cloud.media.models import Media
from cloud.notify.notifier import on_event as notify
from cloud.relays.routes import require_relay
from protocol.api import EventList, EventQuery
from protocol.errors import ErrorCode
from protocol.events import Event, EventReport
from protocol.messages import EventPush

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 768 * 1024
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
RECEIPT_LEASE_S = 15.0  # longer than a request can take with the database's timeouts
RECEIPT_KEEP = timedelta(days=1)
# relays ---------------------------------------------------------------------------------


def _jpeg(encoded: str) -> bytes:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("snapshot_jpeg is not base64") from None
    if not data.startswith(b"\xff\xd8\xff"):
        raise Invalid("snapshot_jpeg is not a JPEG image")
    return data


async def _claim(receipt_id: str) -> str | None:
    """Take the report with this key to apply it (None), or the answer it was given (a
    repeat); 503 while another request applies it."""
    at = datetime.now(UTC)
    claim = {"state": "applying", "lease_until": at + timedelta(seconds=RECEIPT_LEASE_S)}
    receipts = EventReceipt.get_pymongo_collection()
    try:
        await receipts.insert_one({"_id": receipt_id, **claim, "expires_at": at + RECEIPT_KEEP})
        return None
    except DuplicateKeyError:
        pass
    found = await receipts.find_one({"_id": receipt_id})
    if found is not None and found["state"] == "done":
        response: str = found["response"]
        return response
    # applying: a request that failed half-way (or died) leaves it to this one once its
    # lease is over; before that it may still be running
    taken = await receipts.update_one(
        {"_id": receipt_id, "state": "applying", "lease_until": {"$lte": at}}, {"$set": claim}
    )
    if taken.modified_count == 1:
        return None
    raise Unavailable("this report is being applied; try again shortly", 1)


async def report_event(request: Request) -> Response:
    """A thread's new state. With an ``Idempotency-Key`` (a relay node's retries carry the
    same one), a report already applied is answered as it was the first time and changes
    nothing: no second notification, and no second push once its receipt is done."""
    ctx = context(request)
    relay_id: str = request.state.principal
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise Invalid("Idempotency-Key: 8-128 letters, digits, '_' or '-'")
    body = await parse_body(request, EventReport, max_bytes=MAX_REPORT_BYTES)
    device = await Device.get(parse_id(body.device_id))
    if device is None or device.id is None:
        raise NotFound("no such device", ErrorCode.DEVICE_NOT_FOUND)
    snapshot = _jpeg(body.snapshot_jpeg) if body.snapshot_jpeg else None
    receipt_id = None if key is None else f"{relay_id}:{key}"
    if receipt_id is not None and (answered := await _claim(receipt_id)) is not None:
        log.info("event report %s of device %s: a repeat, answered again", key, device.id)
        return Response(answered, media_type="application/json")
    try:
        out, users, told = await _apply(
            ctx.settings.event_retention_days, relay_id, device, body, snapshot
        )
        await notify(request, device, out, users)  # Web Push, webhooks (cloud.notify)
        # Before the receipt is done: a receipt whose "done" reached the database after
        # this request gave up on it (a paused database) is answered to the retry from the
        # receipt, which pushes nothing, and the apps never heard of this state (the full
        # soak, docs/benchmarks.md, run F). So at least once: a retry after a push whose
        # receipt failed pushes the same state again, which changes nothing an app shows.
        if not told:
            await ctx.signaling.push(users, EventPush(**out.model_dump()))
        if receipt_id is not None:
            await EventReceipt.get_pymongo_collection().update_one(
                {"_id": receipt_id},
                {"$set": {"state": "done", "response": out.model_dump_json()}},
            )
    except BaseException as exc:
        if receipt_id is not None and database_unavailable(exc) is None:
            with contextlib.suppress(PyMongoError):  # not the database: the next try at once
                await EventReceipt.get_pymongo_collection().delete_one(
                    {"_id": receipt_id, "state": "applying"}
                )
        raise
    if body.state == "new":
        metrics.EVENT_THREADS.labels(body.kind).inc()
    log.info(
        "event %s %s %s of device %s from relay %s",
        out.id,
        body.kind,
        body.state,
        device.id,
        relay_id,
    )
    return reply(out)


async def _apply(
    retention_days: int,
    relay_id: str,
    device: Device,
    body: EventReport,
    snapshot: bytes | None,
) -> tuple[Event, list[PydanticObjectId], bool]:
    """Store the thread's new state (idempotent per device and thread); the thread as apps
    see it, who may see it, and whether the apps were told this state already (by the
    clip's upload)."""
    assert device.id is not None
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "relay_id": relay_id,
        "kind": body.kind,
        "state": body.state,
        "box": body.box,
        "ended_at": body.ended_at,
        "updated_at": now,
        "expires_at": now + timedelta(days=retention_days),
    }
    if snapshot is not None:
        fields["has_snapshot"] = True
    if body.end_offset_s is not None:
        fields["end_offset_s"] = body.end_offset_s
    origin = {"source": body.source, "upload_id": body.upload_id, "offset_s": body.offset_s}
    first = {"started_at": body.started_at, "acknowledged": False}
    if body.source == "upload":
        # A restarted analysis of the file reports the same threads again (the node names
        # them by the upload and their order): the newest attempt's times stand.
        fields |= {"started_at": body.started_at, "offset_s": body.offset_s}
        del first["started_at"], origin["offset_s"]
    # An upsert, then a read, rather than one find-and-modify: SecantusDB carries out a
    # find-and-modify's update with {_id, $and: [query]}, which it answers by scanning every
    # thread (the full soak, docs/benchmarks.md); both of these match an index exactly. A
    # thread's reports come one at a time (relay/reports.py), so the read sees this one; a
    # clip upload naming the thread between the two tells the apps this state as well (the
    # same state twice: an app shows the thread's latest state, so nothing changes).
    thread_key = {"device_id": device.id, "thread_id": body.thread_id}
    threads = EventThread.get_pymongo_collection()
    await threads.update_one(
        thread_key,
        {
            "$set": fields,
            "$max": {"score": body.score},  # a thread's score is its peak confidence
            "$setOnInsert": first
            | origin
            | ({} if snapshot is not None else {"has_snapshot": False}),
        },
        upsert=True,
    )
    doc = await threads.find_one(thread_key)
    if doc is None:  # removed with its camera meanwhile
        raise NotFound("no such device", ErrorCode.DEVICE_NOT_FOUND)
    thread = EventThread.model_validate({**doc, "id": doc["_id"]})
    told_by_upload = False
    if thread.clip_id is None:
        # The clip's first upload may have come first (both retried after an outage): it
        # found no thread to name it then, so the thread takes it now. When the upload names
        # it meanwhile, after this state was stored, the upload tells the apps this state.
        clip = await Media.get_pymongo_collection().find_one(
            {"device_id": device.id, "kind": "clip", "thread_id": body.thread_id}, {"_id": 1}
        )
        if clip is not None:
            took = await EventThread.get_pymongo_collection().update_one(
                {"_id": thread.id, "clip_id": None}, {"$set": {"clip_id": clip["_id"]}}
            )
            thread.clip_id = clip["_id"]
            told_by_upload = took.modified_count == 0
    if snapshot is not None:
        await EventSnapshot.get_pymongo_collection().update_one(
            {"event_id": thread.id},
            {"$set": {"jpeg": snapshot, "expires_at": fields["expires_at"]}},
            upsert=True,
        )
    # The device was read for this report: its shares are the one read left (not audience()).
    users = (await audiences({device.id: device.owner_id}))[device.id]
    return event_out(thread), users, told_by_upload


# users ----------------------------------------------------------------------------------


def _cursor(encoded: str) -> tuple[datetime, PydanticObjectId]:
    try:
        started, event_id = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
        return datetime.fromisoformat(started), PydanticObjectId(event_id)
    except (ValueError, TypeError, binascii.Error):
        raise Malformed("cursor is not one this server returned") from None


def _next_cursor(doc: EventThread) -> str:
    raw = json.dumps([doc.started_at.isoformat(), str(doc.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def list_events(request: Request) -> Response:
    query = parse_query(request, EventQuery)
    principal = user(request)
    if query.device_id is not None:
        devices = [(await authorize(principal, query.device_id, Action.VIEW)).device.id]
    else:
        devices = [a.device.id for a in await visible_devices(principal)]
    conditions: dict[str, Any] = {
        "device_id": {"$in": devices},
        "expires_at": {"$gt": datetime.now(UTC)},
    }
    if query.kind:
        conditions["kind"] = query.kind
    started: dict[str, datetime] = {}
    if query.since:
        started["$gte"] = query.since
    if query.until:
        started["$lt"] = query.until
    if started:
        conditions["started_at"] = started
    if query.cursor:
        at, last = _cursor(query.cursor)
        conditions["$or"] = [{"started_at": {"$lt": at}}, {"started_at": at, "_id": {"$lt": last}}]
    docs = (
        await EventThread.find(conditions)
        .sort("-started_at", "-_id")
        .limit(query.limit + 1)
        .to_list()
    )
    page = docs[: query.limit]
    cursor = _next_cursor(page[-1]) if len(docs) > query.limit else None
    return reply(EventList(events=[event_out(d) for d in page], next_cursor=cursor))


async def _visible_event(request: Request) -> EventThread:
    doc = await EventThread.get(parse_id(request.path_params["event_id"], "event"))
    if doc is None or doc.expires_at <= datetime.now(UTC):
        raise NotFound("no such event")
    try:
        await authorize(user(request), str(doc.device_id), Action.VIEW)
    except NotFound:
        raise NotFound("no such event") from None
    return doc


async def get_event(request: Request) -> Response:
    return reply(event_out(await _visible_event(request)))


async def get_snapshot(request: Request) -> Response:
    doc = await _visible_event(request)
    snapshot = await EventSnapshot.find_one(EventSnapshot.event_id == doc.id)
    if snapshot is None:
        raise NotFound("this event has no snapshot")
    return Response(snapshot.jpeg, media_type="image/jpeg")


async def acknowledge(request: Request) -> Response:
    doc = await _visible_event(request)
    await doc.set({EventThread.acknowledged: True})
    return reply(event_out(doc))


TAG = "events"
EVENT = "/api/v1/events/{event_id}"
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/events",
        list_events,
        "Events of the cameras you may see, newest first",
        TAG,
        query=EventQuery,
        response=EventList,
        errors=(400, 404),
        auth=require_user,
    ),
    Endpoint("GET", EVENT, get_event, "One event", TAG, response=Event, auth=require_user),
    Endpoint(
        "GET",
        EVENT + "/snapshot",
        get_snapshot,
        "The event's JPEG snapshot",
        TAG,
        media_type="image/jpeg",
        auth=require_user,
    ),
    Endpoint(
        "POST",
        EVENT + "/ack",
        acknowledge,
        "Acknowledge an event",
        TAG,
        response=Event,
        auth=require_user,
    ),
    Endpoint(
        "POST",
        "/api/v1/relays/events",
        report_event,
        "Relay node: report an event thread's new state (with an optional snapshot)",
        "relays",
        body=EventReport,
        response=Event,
        errors=(403, 404, 503),
        auth=require_relay,
        description=(
            "Send an Idempotency-Key header (8-128 letters, digits, '_' or '-'; the same on "
            "every retry of one report): a report already applied is answered as the first "
            "time and changes nothing (no second notification; the apps' push is at least "
            "once, see docs/protocol.md). 503 with Retry-After "
            "while the database is away, or while another request applies the same report."
        ),
    ),
]
