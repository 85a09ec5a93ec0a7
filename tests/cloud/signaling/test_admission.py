"""Admission of hellos and the line of the refused (cloud.signaling.admission), pure."""

from cloud.signaling.admission import ASSUMED_RATE, MAX_RETRY_AFTER_S, RATE_WINDOW_S, Admission


def test_a_process_takes_connections_until_its_limit_of_waiting_hellos() -> None:
    admission = Admission(limit=3)
    for _ in range(3):
        assert not admission.full()
        admission.waiting += 1
    assert admission.full()
    admission.waiting -= 1
    assert not admission.full()


def test_the_refused_are_booked_behind_the_waiting_hellos_one_rate_step_apart() -> None:
    admission = Admission(limit=200)
    admission.waiting = 200
    rate = ASSUMED_RATE  # nothing measured yet
    told = [admission.refuse(now=100.0) for _ in range(3 * int(rate))]
    assert told[0] == int(200 / rate)  # behind the 200 waiting
    # Booked at the rate: as many per second of Retry-After as the process serves in one.
    per_second = {s: told.count(s) for s in set(told)}
    assert sorted(per_second) == list(range(told[0], told[-1] + 1))
    assert all(n <= rate + 1 for n in per_second.values())
    assert admission.refused == 3 * int(rate)


def test_the_measured_rate_shortens_the_line_and_never_falls_below_the_assumed_one() -> None:
    admission = Admission(limit=200)
    assert admission.rate(now=10.0) == ASSUMED_RATE
    for n in range(1200):  # 1,200 hellos handled within the last window
        admission.done(now=10.0 + n * RATE_WINDOW_S / 1200)
    assert admission.rate(now=10.0 + RATE_WINDOW_S) >= 1199 / RATE_WINDOW_S
    admission.waiting = 200
    told = [admission.refuse(now=11.0) for _ in range(2400)]
    assert max(told) <= 2  # 2,600 places at ~1,200/s
    assert admission.rate(now=30.0) == ASSUMED_RATE  # the window passed: measured nothing


def test_a_retry_after_never_exceeds_its_cap_however_long_the_line() -> None:
    admission = Admission(limit=1)
    admission.waiting = 1
    told = [admission.refuse(now=0.0) for _ in range(int(ASSUMED_RATE) * 3 * MAX_RETRY_AFTER_S)]
    assert max(told) == MAX_RETRY_AFTER_S
    assert min(told) == 0
    # The line starts again from the present once its places are past.
    assert admission.refuse(now=1000.0) == 0
