"""The node's event reports on their way to the cloud (``POST /relays/events``), kept until
the cloud takes them (issue 16 item 2: nothing lost while the cloud or its database is away).

Each report gets an ``Idempotency-Key`` when it is put here, the same on every retry, so the
cloud applies a report whose answer was lost once only (docs/protocol.md). Reports of one
thread go one at a time in the order they were put (a thread's ``end`` never overtakes its
``new``); different threads go side by side, so one thread retrying holds up no other.

A report the cloud did not take (the connection failed, a timeout, 408, 429 or a 5xx) is
tried again after a backoff (``Retry-After`` when the cloud gives one), doubling up to
``max_retry_s``, with jitter, for as long as it takes. One the cloud refuses otherwise (a
4xx: the camera was removed, the report is invalid) would be refused again: it is dropped
(``events_failed``). The buffer is bounded (``max_reports``, ``max_bytes``): when full, the
oldest ``update`` waiting goes first (a thread's intermediate state), then the oldest report
of any state (``events_dropped``); one being sent is never dropped.
"""

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from relay import metrics

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any], str], Awaitable[httpx.Response]]
Lane = tuple[str, str]  # (device, thread)

RETRY_STATUSES = frozenset({408, 425, 429})


@dataclass
class Pending:
    body: dict[str, Any]
    key: str
    lane: Lane
    size: int
    settled: "asyncio.Future[bool]" = field(repr=False)
    sending: bool = False
    attempts: int = 0


class ReportBuffer:
    def __init__(
        self,
        send: Send,
        stats: dict[str, int],
        *,
        max_reports: int = 2000,
        max_bytes: int = 64 * 1024 * 1024,
        first_retry_s: float = 0.5,
        max_retry_s: float = 5.0,
    ) -> None:
        self._send = send
        self.stats = stats
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self._lanes: dict[Lane, deque[Pending]] = {}
        self._workers: dict[Lane, asyncio.Task[None]] = {}
        self._bytes = 0
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        for name in ("events_sent", "events_failed", "events_retried", "events_dropped"):
            stats.setdefault(name, 0)

    def __len__(self) -> int:
        """Reports waiting (or being sent)."""
        return self._count

    @property
    def size(self) -> int:
        """Their bytes (bodies as JSON)."""
        return self._bytes

    def put(self, body: dict[str, Any]) -> "asyncio.Future[bool]":
        """Queue a report (a ``POST /relays/events`` body); never waits. The future is True
        once the cloud took it, False if it was refused or dropped."""
        size = len(json.dumps(body, separators=(",", ":")))
        lane = (str(body.get("device_id")), str(body.get("thread_id")))
        item = Pending(
            body, uuid.uuid4().hex, lane, size, asyncio.get_running_loop().create_future()
        )
        while self._count >= self.max_reports or self._bytes + size > self.max_bytes:
            victim = self._victim()
            if victim is None:  # everything held is being sent: this one goes
                self._drop(item, queued=False)
                return item.settled
            self._drop(victim)
        self._lanes.setdefault(lane, deque()).append(item)
        self._count += 1
        self._bytes += size
        self._idle.clear()
        if lane not in self._workers:
            self._workers[lane] = asyncio.create_task(self._drain(lane), name=f"reports{lane}")
        return item.settled

    async def flush(self, within_s: float) -> bool:
        """Wait until every report is settled, at most ``within_s``; whether they were."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def close(self) -> None:
        """Stop sending; what is still held is lost (logged)."""
        if self._count:
            log.warning("relay: %d event reports not delivered at shutdown", self._count)
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for lane in list(self._lanes.values()):
            for item in lane:
                if not item.settled.done():
                    item.settled.set_result(False)
        self._lanes.clear()
        self._workers.clear()
        self._count = self._bytes = 0
        self._idle.set()

    # internals ----------------------------------------------------------------------------

    def _victim(self) -> Pending | None:
        waiting = [item for lane in self._lanes.values() for item in lane if not item.sending]
        updates = [item for item in waiting if item.body.get("state") == "update"]
        chosen = updates or waiting
        return chosen[0] if chosen else None

    def _drop(self, item: Pending, *, queued: bool = True) -> None:
        if queued:
            self._remove(item)
        self.stats["events_dropped"] += 1
        metrics.EVENTS_SENT.labels("dropped").inc()
        log.warning(
            "relay: event report buffer full (%d reports, %d bytes): dropped %s %s of %s",
            self._count,
            self._bytes,
            item.body.get("state"),
            item.body.get("thread_id"),
            item.body.get("device_id"),
        )
        if not item.settled.done():
            item.settled.set_result(False)

    def _remove(self, item: Pending) -> None:
        lane = self._lanes.get(item.lane)
        if lane is None or item not in lane:
            return
        lane.remove(item)
        self._count -= 1
        self._bytes -= item.size
        if self._count == 0:
            self._idle.set()

    async def _drain(self, lane_id: Lane) -> None:
        """Send the lane's reports in order, each until the cloud takes or refuses it."""
        try:
            while lane := self._lanes.get(lane_id):
                item = lane[0]
                item.sending = True
                try:
                    taken = await self._deliver(item)
                finally:
                    item.sending = False
                self._remove(item)
                if not item.settled.done():
                    item.settled.set_result(taken)
        finally:
            if not self._lanes.get(lane_id):
                self._lanes.pop(lane_id, None)
            if self._workers.get(lane_id) is asyncio.current_task():
                del self._workers[lane_id]

    async def _deliver(self, item: Pending) -> bool:
        delay = self.first_retry_s
        while True:
            item.attempts += 1
            retry_after: float | None = None
            try:
                response = await self._send(item.body, item.key)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 200:
                    self.stats["events_sent"] += 1
                    metrics.EVENTS_SENT.labels("sent").inc()
                    return True
                if status < 500 and status not in RETRY_STATUSES:
                    self.stats["events_failed"] += 1
                    metrics.EVENTS_SENT.labels("refused").inc()
                    log.warning("relay: event refused (%s): %s", status, response.text[:200])
                    return False
                problem = f"HTTP {status}"
                with contextlib.suppress(ValueError):
                    retry_after = float(response.headers.get("retry-after", ""))
            self.stats["events_retried"] += 1
            metrics.EVENTS_SENT.labels("failed").inc()
            wait = min(self.max_retry_s, max(delay, retry_after or 0.0))
            wait *= random.uniform(0.8, 1.0)  # noqa: S311 (jitter, not a secret)
            log.warning(
                "relay: event report %s (%s of %s) not delivered (%s, try %d); again in %.1f s",
                item.key,
                item.body.get("state"),
                item.body.get("thread_id"),
                problem,
                item.attempts,
                wait,
            )
            await asyncio.sleep(wait)
            delay = min(self.max_retry_s, delay * 2)
