"""Event threads and their snapshots, kept for EVENT_RETENTION_DAYS.

One document per thread (its latest state), so a list shows one line per activity. The
TTL index tidies up; queries also check ``expires_at`` (docs/design.md: never rely on the sweep).
"""

from datetime import datetime
from typing import Annotated

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel

from protocol.events import EventSource, EventState


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
