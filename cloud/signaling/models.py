"""Session records, as stored in MongoDB."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from beanie import Document, Indexed, PydanticObjectId
from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, IndexModel

from cloud import metrics
from cloud.signaling.deliveries import Record, StatsReport
from protocol.messages import CandidateType, StatsRoute, TransportProtocol


class SideStats(BaseModel):
    """One side's ``session.stats`` report, as it came (docs/protocol.md)."""

    route: StatsRoute
    local_candidate_type: CandidateType
    remote_candidate_type: CandidateType
    protocol: TransportProtocol
    ice_ms: int
    ttff_ms: int | None = None
    reported_at: datetime


class SessionRecord(Document):
    """One viewer session: who watched what, by which route, when, how it ended, and how each
    side says it connected."""

    session_id: Annotated[str, Indexed(unique=True)]
    device_id: PydanticObjectId
    viewer_id: str  # a user id, or a relay's id for a relay's own upstream session
    viewer_role: Literal["user", "relay"] = "user"
    route: str  # the cloud's: "p2p", or "relay" (through a relay node)
    created_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    viewer_stats: SideStats | None = None
    camera_stats: SideStats | None = None  # the camera's, or the serving relay node's

    class Settings:
        name = "sessions"
        # a camera's sessions, newest first (GET /devices/{id}/sessions)
        indexes = [IndexModel([("device_id", ASCENDING), ("created_at", DESCENDING)])]


async def keep_record(record: Record) -> None:
    """Store a viewer-side session's change of state (a hub :class:`Record`)."""
    now = datetime.now(UTC)
    if record.event == "created":
        await SessionRecord(
            session_id=record.session_id,
            device_id=PydanticObjectId(record.device_id),
            viewer_id=record.user_id,
            viewer_role="relay" if record.viewer_role == "relay" else "user",
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


async def keep_stats(report: StatsReport) -> None:
    """Store one side's ``session.stats`` on its session's record (the latest report wins).

    The camera's side may live on another instance than the record's writer; its report
    comes once ICE connected, long after the record was created.
    """
    stats = SideStats(
        **report.stats.model_dump(include=set(SideStats.model_fields)),
        reported_at=datetime.now(UTC),
    )
    if report.side == "viewer" and stats.ttff_ms is not None:
        metrics.TIME_TO_FIRST_FRAME.observe(stats.ttff_ms / 1000)
    await SessionRecord.get_pymongo_collection().update_one(
        {"session_id": report.session_id},
        {"$set": {f"{report.side}_stats": stats.model_dump()}},
    )
