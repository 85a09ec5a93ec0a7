"""Session records, as stored in MongoDB."""

from datetime import UTC, datetime
from typing import Annotated

from beanie import Document, Indexed, PydanticObjectId

from cloud.signaling.deliveries import Record


class SessionRecord(Document):
    """One viewer session: who watched what, by which route, when, and how it ended."""

    session_id: Annotated[str, Indexed(unique=True)]
    device_id: Annotated[PydanticObjectId, Indexed()]
    viewer_id: str  # a user id, or a relay's id for a relay's own upstream session
    route: str
    created_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None

    class Settings:
        name = "sessions"


async def keep_record(record: Record) -> None:
    """Store a viewer-side session's change of state (a hub :class:`Record`)."""
    now = datetime.now(UTC)
    if record.event == "created":
        await SessionRecord(
            session_id=record.session_id,
            device_id=PydanticObjectId(record.device_id),
            viewer_id=record.user_id,
            route=record.route,
            created_at=now,
        ).insert()
        return
    collection = SessionRecord.get_pymongo_collection()
    if record.event == "answered":
        await collection.update_one(
            {"session_id": record.session_id}, {"$set": {"answered_at": now}}
        )
    else:
        await collection.update_one(
            {"session_id": record.session_id},
            {"$set": {"ended_at": now, "end_reason": record.reason}},
        )
