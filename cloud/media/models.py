"""Media documents: what a clip, recording, snapshot or uploaded video is; the bytes are in
the store (``cloud.media.store``) under ``file_id``.

There is no TTL index on ``expires_at``: a TTL sweep would drop the document and leave its
GridFS file behind, so ``cloud.media.retention`` deletes both, and every query checks
``expires_at`` itself (the sweep runs every few minutes; an expired item is gone from
every read at once).
"""

from datetime import datetime

from beanie import Document, PydanticObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel

from protocol.api import MediaKind, MediaState, UploadAnalysisState


class Media(Document):
    owner_id: PydanticObjectId  # the device's owner when it was made: who pays the quota
    device_id: PydanticObjectId
    kind: MediaKind
    content_type: str
    size: int = 0
    file_id: PydanticObjectId | None = None  # None until there is content
    state: MediaState
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    thread_id: str | None = None  # clips: the event thread (unique per device)
    until: datetime | None = None  # recordings: when the recording asked for ends
    analysis_relay: str | None = None  # uploads: the node analysing it; recordings: recording
    filename: str | None = None  # uploads
    error: str | None = None  # failed: why
    # Uploads only: the relay's analysis of the file (not served yet: stays "pending").
    analysis: UploadAnalysisState | None = None
    progress: float | None = None

    class Settings:
        name = "media"
        indexes = [
            # A device's list, newest first, optionally of one kind.
            IndexModel(
                [
                    ("device_id", ASCENDING),
                    ("kind", ASCENDING),
                    ("created_at", DESCENDING),
                    ("_id", DESCENDING),
                ]
            ),
            IndexModel([("device_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
            # One clip per event thread; uploads and recordings have no thread.
            IndexModel(
                [("device_id", ASCENDING), ("thread_id", ASCENDING)],
                unique=True,
                partialFilterExpression={"kind": "clip"},
                name="one_clip_per_thread",
            ),
            # Uploads waiting for or under analysis, by node (cloud.analysis.assignment).
            IndexModel(
                [("kind", ASCENDING), ("analysis", ASCENDING), ("analysis_relay", ASCENDING)]
            ),
            # Usage and the quota sweep (oldest first), per owner.
            IndexModel([("owner_id", ASCENDING), ("created_at", ASCENDING)]),
            IndexModel([("expires_at", ASCENDING)]),
            IndexModel([("file_id", ASCENDING)]),  # the sweep's search for orphaned files
            IndexModel([("state", ASCENDING), ("updated_at", ASCENDING)]),  # stale recordings
        ]
