"""``GET /api/v1/stats``: a user's own cameras at a glance (docs/protocol.md, "Stats")."""

from datetime import date, datetime

from pydantic import Field

from protocol.api import MediaUsage, Response
from protocol.messages import StatsRoute


class CameraCounts(Response):
    owned: int = Field(description="Cameras you own (shared ones are their owner's)")
    online: int = Field(description="Of them, online now")


class DayEvents(Response):
    day: date = Field(description="A UTC day")
    total: int
    by_kind: dict[str, int] = Field(description="Event threads started that day, per kind")


class Stats(Response):
    """Your own cameras over the last ``window_days`` days (UTC), today included."""

    generated_at: datetime
    window_days: int
    cameras: CameraCounts
    events_per_day: list[DayEvents] = Field(description="Oldest first, one entry per day")
    sessions_by_route: dict[StatsRoute, int] = Field(
        description="Viewer sessions of your cameras started in the window, by route"
    )
    median_ttff_ms: int | None = Field(
        description="Median time to first frame the viewers reported; null: none reported"
    )
    storage: MediaUsage
