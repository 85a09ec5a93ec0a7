"""Session records, as stored in MongoDB."""

from datetime import datetime
from typing import Annotated

from beanie import Document, Indexed, PydanticObjectId


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
