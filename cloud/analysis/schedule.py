"""Whether an armed camera's weekly schedule covers a moment. Pure."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from protocol.api import Schedule

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def in_schedule(schedule: Schedule | None, at: datetime) -> bool:
    """True when ``at`` (aware) falls in one of the schedule's windows; no schedule: always.

    A window whose end is at or before its start runs past midnight: ``fri 22:00-06:00``
    covers Friday night until Saturday 06:00.
    """
    if schedule is None:
        return True
    local = at.astimezone(ZoneInfo(schedule.timezone))
    for window in schedule.windows:
        start, end = time.fromisoformat(window.start), time.fromisoformat(window.end)
        for day_offset in (0, -1):  # a window that began today, or yesterday past midnight
            day = local.date() + timedelta(days=day_offset)
            if DAYS[day.weekday()] not in window.days:
                continue
            opens = datetime.combine(day, start, local.tzinfo)
            closes = datetime.combine(day, end, local.tzinfo)
            if closes <= opens:
                closes += timedelta(days=1)
            if opens <= local < closes:
                return True
    return False
