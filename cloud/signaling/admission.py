"""Which signaling connections a process takes now, and when the others should come back.

At most :data:`MAX_HELLOS` connections of a process may wait for their hello to be handled;
a connection beyond them is refused before its upgrade with ``503`` and a ``Retry-After``
(docs/protocol.md, "Admission"). The refused are told the time the process will have room
for them: each refusal books the next place in a virtual line that the process serves at its
connect rate, behind the hellos already waiting and the cameras told to come back before.
During a reconnect storm the refused cameras therefore return spread over the time the
process needs for all of them, instead of retrying on their own doubling backoff: that left
the last cameras of the 10,000 storm waiting out bounds of 16-30 s while the survivors idled
(docs/benchmarks.md, session 6).

The rate is the hellos handled over the last :data:`RATE_WINDOW_S`, and never less than
:data:`ASSUMED_RATE`: a process that was idle before the storm has measured nothing yet.
Overestimating is the cheap mistake (a camera back too early is refused again, cheaply, and
booked further on); underestimating would book the line too long and leave the process
idle. ``Retry-After`` is whole seconds (RFC 9110 10.2.3), rounded down: the agent adds up
to a second of jitter, which spreads the cameras booked within one second over it. It never
exceeds :data:`MAX_RETRY_AFTER_S`.
"""

import math
from collections import deque
from typing import Final

# Connections past their upgrade whose hello is not handled yet, per process. At the
# 870-1,130 connects/s of one process on the 2-core machine (docs/benchmarks.md, session 6),
# 200 waiting is under 0.3 s of work: the hellos taken are served well within their
# cameras' 10 s open timeout.
MAX_HELLOS = 200
# The connect rate assumed before one is measured: issue 16's target for one process, about
# what each survivor served in its busiest second of the 10,000 storm with SecantusDB on
# the same two cores (416-558/s). Booked at 300/s that storm took 17 s, at 500/s 12-13 s
# for 10-20 % more refusals (docs/benchmarks.md, storm session 7).
ASSUMED_RATE: Final = 500.0
RATE_WINDOW_S: Final = 1.0
MAX_RETRY_AFTER_S: Final = 30  # the agent's own backoff bound


class Admission:
    """The hellos waiting in one process and the line of those told to come back.

    Pure: the caller passes the monotonic time. ``waiting`` is kept by the caller (one more
    when a connection is taken, one less when its hello is handled or it left); :meth:`done`
    is told each hello handled, which measures the rate.
    """

    __slots__ = ("_done", "_line_end", "limit", "refused", "waiting")

    def __init__(self, limit: int = MAX_HELLOS) -> None:
        self.limit = limit
        self.waiting = 0
        self.refused = 0  # since the process started
        self._done: deque[float] = deque()  # when hellos were handled, the last RATE_WINDOW_S
        self._line_end = 0.0  # when the last camera told to come back has its place

    def full(self) -> bool:
        return self.waiting >= self.limit

    def done(self, now: float) -> None:
        """A hello was handled (welcomed or refused after it was read)."""
        self._done.append(now)
        self._forget(now)

    def rate(self, now: float) -> float:
        """Hellos handled per second lately, at least :data:`ASSUMED_RATE`."""
        self._forget(now)
        return max(ASSUMED_RATE, len(self._done) / RATE_WINDOW_S)

    def refuse(self, now: float) -> int:
        """Book the refused connection a place in the line: its ``Retry-After`` in seconds."""
        self.refused += 1
        rate = self.rate(now)
        place = min(max(self._line_end, now + self.waiting / rate), now + MAX_RETRY_AFTER_S)
        self._line_end = place + 1 / rate
        return math.floor(place - now)

    def _forget(self, now: float) -> None:
        while self._done and self._done[0] < now - RATE_WINDOW_S:
            self._done.popleft()
