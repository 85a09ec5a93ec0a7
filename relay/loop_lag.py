"""How late the relay node's event loop runs: the delay between when a periodic wake-up was
due and when it ran. Everything a node does for viewers (forwarding packets, answering
checks) waits behind whatever holds the loop, so this is the figure to keep small while
detection runs (issue 12: p99 <= 10 ms at full detection budget)."""

import asyncio
import statistics
import time
from collections import deque

from relay import metrics

PERIOD_S = 0.05
WINDOW = 1200  # the last minute of wake-ups at 20 a second


class LoopLag:
    """Samples the loop's lag while :meth:`run` runs; :meth:`summary` of the recent window."""

    def __init__(self, period_s: float = PERIOD_S, window: int = WINDOW) -> None:
        self.period_s = period_s
        self.samples: deque[float] = deque(maxlen=window)

    async def run(self) -> None:
        while True:
            due = time.monotonic() + self.period_s
            await asyncio.sleep(self.period_s)
            lag = max(0.0, time.monotonic() - due)
            self.samples.append(lag)
            metrics.LOOP_LAG.observe(lag)

    def summary(self) -> dict[str, float]:
        """p50, p99 and max lag in ms over the window (zeros before any sample)."""
        if len(self.samples) < 2:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return {
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1),
        }
