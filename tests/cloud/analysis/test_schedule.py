"""Weekly schedules, in the schedule's own time zone."""

from datetime import UTC, datetime

from cloud.analysis.schedule import in_schedule
from protocol.api import Schedule

NIGHTS = Schedule.model_validate(
    {
        "timezone": "Europe/Paris",
        "windows": [{"days": ["fri", "sat"], "start": "22:00", "end": "06:00"}],
    }
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_schedule_means_always() -> None:
    assert in_schedule(None, at("2026-12-01T12:00:00"))


def test_a_window_past_midnight_covers_the_next_morning_in_local_time() -> None:
    # Friday 2026-12-04; Paris is UTC+1 in December.
    assert not in_schedule(NIGHTS, at("2026-12-04T20:59:00"))  # Fri 21:59 Paris
    assert in_schedule(NIGHTS, at("2026-12-04T21:00:00"))  # Fri 22:00
    assert in_schedule(NIGHTS, at("2026-12-05T04:59:00"))  # Sat 05:59: Friday's night
    assert not in_schedule(NIGHTS, at("2026-12-05T05:00:00"))  # Sat 06:00
    assert in_schedule(NIGHTS, at("2026-12-06T04:00:00"))  # Sun 05:00: Saturday's night
    assert not in_schedule(NIGHTS, at("2026-12-06T21:30:00"))  # Sun 22:30: not Sunday's
    assert not in_schedule(NIGHTS, at("2026-12-03T22:00:00"))  # Thu 23:00


def test_summer_time_moves_the_window_with_the_clock() -> None:
    # Paris is UTC+2 in July: 22:00 local is 20:00 UTC.
    assert in_schedule(NIGHTS, at("2026-07-03T20:00:00"))  # Fri 22:00 Paris
    assert not in_schedule(NIGHTS, at("2026-07-03T19:59:00"))


def test_a_day_window_holds_from_its_start_up_to_its_end() -> None:
    office = Schedule.model_validate(
        {
            "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30"}
            ]
        }
    )
    assert in_schedule(office, at("2026-11-30T09:00:00"))  # Mon, UTC by default
    assert in_schedule(office, at("2026-11-30T17:29:59"))
    assert not in_schedule(office, at("2026-11-30T17:30:00"))
    assert not in_schedule(office, at("2026-11-29T12:00:00"))  # Sunday
