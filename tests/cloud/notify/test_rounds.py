"""Rounds on their own: the retry schedule. Rounds sent and recorded by a running worker
are tested with the outbox (test_outbox.py)."""

import dataclasses

from cloud.notify.rounds import next_delay
from cloud.settings import Settings


def test_the_schedule_repeats_its_last_step() -> None:
    s = dataclasses.replace(Settings(), notify_retry_schedule_s=(1, 5, 30))
    assert [next_delay(s, n) for n in range(1, 6)] == [1, 5, 30, 30, 30]
