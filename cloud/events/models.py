"""Event threads and their snapshots, kept for EVENT_RETENTION_DAYS.

One document per thread (its latest state), so a list shows one line per activity. The
TTL index tidies up; queries also check ``expires_at`` (docs/design.md: never rely on the sweep).
"""

from datetime import datetime
from typing import Annotated, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel

from protocol.events import Event, EventSource, EventState


class EventThread(Document):
    device_id: PydanticObjectId
    relay_id: str
    thread_id: str
    kind: str
    state: EventState
    score: float
    box: list[float] | None = None
    started_at: datetime
    ended_at: datetime | None = None
    updated_at: datetime
    acknowledged: bool = False
    has_snapshot: bool = False
    source: EventSource = "live"
    upload_id: str | None = None  # source upload: the video file, and where in it
    offset_s: float | None = None
    end_offset_s: float | None = None
    clip_id: PydanticObjectId | None = None  # its Media (cloud/media), set by the clip upload
    expires_at: datetime

    class Settings:
        name = "events"
        indexes = [
            IndexModel([("device_id", ASCENDING), ("thread_id", ASCENDING)], unique=True),
            IndexModel([("device_id", ASCENDING), ("started_at", DESCENDING), ("_id", DESCENDING)]),
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        ]


class EventSnapshot(Document):
    event_id: Annotated[PydanticObjectId, Indexed(unique=True)]
    jpeg: bytes
    expires_at: datetime

    class Settings:
        name = "event_snapshots"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)]


class EventReceipt(Document):
    """A relay node's event report by its ``Idempotency-Key`` (``_id``: relay id and key):
    ``applying`` while a request applies it (until ``lease_until``: a request that died
    meanwhile leaves it to the next try), then ``done`` with the answer given, which a
    repeat of the report gets again instead of applying it twice. Kept a day."""

    id: str  # type: ignore[assignment]
    state: Literal["applying", "done"]
    lease_until: datetime
    response: str | None = None
    expires_at: datetime

    class Settings:
        name = "event_receipts"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)]


SNAPSHOT_PATH = "/api/v1/events/{}/snapshot"


def event_out(doc: EventThread) -> Event:
    return Event(
        id=str(doc.id),
        device_id=str(doc.device_id),
        kind=doc.kind,
        state=doc.state,
        thread_id=doc.thread_id,
        score=doc.score,
        box=doc.box,
        started_at=doc.started_at,
        ended_at=doc.ended_at,
        snapshot_url=SNAPSHOT_PATH.format(doc.id) if doc.has_snapshot else None,
        acknowledged=doc.acknowledged,
        clip_id=str(doc.clip_id) if doc.clip_id else None,
        source=doc.source,
        upload_id=doc.upload_id,
        offset_s=doc.offset_s,
        end_offset_s=doc.end_offset_s,
    )
