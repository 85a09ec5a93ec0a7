import pytest

from relay.budget import DetectionBudget


def ask(
    budget: DetectionBudget, schedule: dict[str, float], seconds: float, start: float = 0.0
) -> dict[str, int]:
    """Each camera asks every ``schedule[camera]`` seconds for ``seconds``; grants per camera."""
    events = []
    for camera, period in schedule.items():
        k = 0
        while k * period < seconds:
            events.append((start + k * period, camera))
            k += 1
    grants = dict.fromkeys(schedule, 0)
    for now, camera in sorted(events):
        grants[camera] += budget.try_acquire(camera, now)
    return grants


def test_one_camera_gets_the_whole_rate_and_no_more() -> None:
    budget = DetectionBudget(4.0)
    grants = ask(budget, {"a": 1 / 30}, seconds=60)
    assert 4.0 * 60 - 1 <= grants["a"] <= 4.0 * 60 + 1


def test_a_busy_camera_does_not_starve_a_quiet_one() -> None:
    budget = DetectionBudget(4.0)
    grants = ask(budget, {"busy": 1 / 15, "quiet": 1.0}, seconds=60)
    assert grants["quiet"] >= 59  # every ask but perhaps the very first
    assert grants["busy"] == pytest.approx(3.0 * 60, abs=3)  # and the rest goes to the busy one


def test_busy_cameras_share_the_rate_equally() -> None:
    budget = DetectionBudget(6.0)
    grants = ask(budget, {"a": 1 / 15, "b": 1 / 10, "c": 1 / 25}, seconds=60)
    for camera in "abc":
        assert grants[camera] == pytest.approx(2.0 * 60, abs=3), grants
    assert sum(grants.values()) <= 6.0 * 60 + 4


def test_a_camera_that_stops_asking_releases_its_share() -> None:
    budget = DetectionBudget(4.0, idle_after_s=2.0)
    first = ask(budget, {"a": 1 / 15, "b": 1 / 15}, seconds=30)
    assert first["a"] == pytest.approx(2.0 * 30, abs=2)
    assert budget.active_cameras == ["a", "b"]
    later = ask(budget, {"a": 1 / 15}, seconds=30, start=30.0)
    assert later["a"] == pytest.approx(4.0 * 30, abs=4)
    assert budget.active_cameras == ["a"]
    assert budget.share() == 4.0


def test_a_new_camera_is_served_at_once_when_there_is_spare_capacity() -> None:
    budget = DetectionBudget(4.0)
    ask(budget, {"a": 1.0}, seconds=10)  # uses 1/s of 4/s
    assert budget.try_acquire("b", 10.5)


def test_a_forgotten_camera_stops_sharing_at_once() -> None:
    budget = DetectionBudget(4.0)
    ask(budget, {"a": 0.1, "b": 0.1}, seconds=5)
    budget.forget("b")
    budget.forget("unknown")
    assert budget.active_cameras == ["a"]


def test_time_going_backwards_grants_nothing_extra() -> None:
    budget = DetectionBudget(1.0)
    assert budget.try_acquire("a", 10.0)
    assert not budget.try_acquire("a", 5.0)
    assert not budget.try_acquire("a", 10.5)
    assert budget.try_acquire("a", 11.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_per_s": 0.0},
        {"rate_per_s": 1.0, "burst": 0.5},
        {"rate_per_s": 1.0, "idle_after_s": 0.0},
    ],
)
def test_an_invalid_budget_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        DetectionBudget(**kwargs)
