"""The signaling bus: how cloud instances reach each other, keep presence, claim one-time values.

A viewer connected to instance A reaches a camera connected to instance B by a message that A
publishes on a channel B holds. Beside routing, the bus keeps which connection holds each
camera (presence, with expiry, so that a dead instance's cameras are noticed and claimed by a
live one) and claims one-time values (replay protection of token ids).

Two implementations with one behaviour, checked by one contract suite:
:class:`MemoryBus` (one instance, used when ``REDIS_URL`` is unset) and
``cloud.signaling.redis_bus.RedisBus`` (any number of instances on one Redis).

Delivery is at most once: a message goes only to the instances subscribed when it is
published, and is lost if a subscriber's connection is down at that moment. Such a loss is
never silent: once the subscriber connection is back and holds every channel again, the bus
calls its gap listener (:meth:`Bus.on_gap`), and the instance tells the connections that may
have missed something (cloud.signaling.ws, issue 16). Messages on one channel reach its
handler in publish order; a slow handler delays only its own channel.

BusUnavailable is the one error of the bus: the backing service did not answer in time, or
the bus is not running (not started, or closed).
"""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, Any]  # JSON-serialisable
Handler = Callable[[Message], Awaitable[None]]
GapListener = Callable[[float, bool], Awaitable[None]]  # (lost at, held again), see on_gap

HANDLER_TIMEOUT_S = 10.0  # a handler stuck longer is cancelled so its channel moves on
MAX_PENDING = 10_000  # per channel; beyond this a subscriber is hopelessly behind: drop
CLOSE_TIMEOUT_S = 2.0


class BusUnavailable(Exception):
    """The bus cannot serve the call now: its service is unreachable, or the bus is closed."""


class Bus(Protocol):
    async def start(self) -> None:
        """Begin serving. Never fails because a service is unreachable (see :meth:`ping`)."""

    async def close(self) -> None:
        """Stop every task and connection; later calls raise :class:`BusUnavailable`."""

    async def ping(self) -> bool:
        """Whether the bus can serve calls now (readiness); never raises."""

    async def publish(self, channel: str, message: Message) -> int:
        """Send ``message`` to every instance holding ``channel``; return how many hold it.

        0 means nobody holds the channel. The count says the message was handed over, not
        that a handler has run.
        """

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Make ``handler`` this instance's one handler of ``channel``, replacing any other.

        Effective when it returns: a message published afterwards is delivered. On
        :class:`BusUnavailable` nothing is left subscribed.
        """

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` here, dropping queued messages; never raises.

        Safe to call from the channel's own handler (the current call runs to its end).
        """

    def on_gap(self, listener: GapListener) -> None:
        """Make ``listener`` this instance's one listener of subscription gaps.

        Called as ``listener(lost_at, False)`` when the subscription is lost (``lost_at``: its
        ``time.monotonic()``), and as ``listener(lost_at, True)`` once every channel is held
        again (a message published from then on is delivered). What was published to them
        in between may never arrive. A bus that cannot lose its subscription
        (:class:`MemoryBus`) never calls it.
        """

    async def set_presence(self, device_id: str, holder: str, ttl_s: float) -> None:
        """Record that ``holder`` holds ``device_id`` for ``ttl_s``; set, take over or refresh."""

    async def clear_presence(self, device_id: str, holder: str) -> bool:
        """Forget the presence if ``holder`` still holds it unexpired; whether it did."""

    async def presence(self, device_ids: Sequence[str]) -> dict[str, str | None]:
        """The holder of each device, or None when absent or expired."""

    async def claim_expired_presence(self, limit: int = 100) -> list[str]:
        """Up to ``limit`` devices whose presence expired without a clear, then forgotten.

        Each expired device goes to exactly one caller across all instances. A device whose
        presence was set again after expiring is not expired any more.
        """

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        """True for the first claim of ``key`` within ``ttl_s``, False until it lapses."""


class _Subscription:
    __slots__ = ("closed", "handler", "pending", "task")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.pending: deque[Message] | None = None  # only while messages wait
        self.task: asyncio.Task[None] | None = None  # only while messages wait or run
        self.closed = False


class Deliveries:
    """This instance's subscriptions: per channel one handler, run by one task at a time.

    Putting a message on a channel never waits, so a slow handler never blocks a publisher or
    the reader of a connection, and each channel keeps its order. A channel's task lives only
    while it has messages: an idle channel (a camera nobody watches) costs no task or queue,
    which is most of them. A handler that raises or overruns ``HANDLER_TIMEOUT_S`` is logged
    and the next message is delivered.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._subscriptions: dict[str, _Subscription] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._subscriptions

    def channels(self) -> list[str]:
        return list(self._subscriptions)

    def add(self, channel: str, handler: Handler) -> None:
        if (existing := self._subscriptions.get(channel)) is not None:
            existing.handler = handler
            return
        self._subscriptions[channel] = _Subscription(handler)

    def deliver(self, channel: str, message: Message) -> bool:
        """Queue ``message`` for the channel's handler; False when the channel is not held."""
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            return False
        if subscription.pending is None:
            subscription.pending = deque()
        if len(subscription.pending) >= MAX_PENDING:
            log.warning(
                "%s: %s is %d messages behind; dropped one", self._owner, channel, MAX_PENDING
            )
            return True
        subscription.pending.append(message)
        if subscription.task is None:
            subscription.task = asyncio.create_task(
                self._run(channel, subscription), name=f"{self._owner} deliver {channel}"
            )
        return True

    async def remove(self, channel: str) -> None:
        subscription = self._subscriptions.pop(channel, None)
        if subscription is None:
            return
        subscription.closed = True
        subscription.pending = None
        task = subscription.task
        if task is None or task is asyncio.current_task():
            return  # idle, or unsubscribing from its own handler: it ends after this message
        task.cancel()
        _, pending = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
        if pending:
            log.warning("%s: the handler of %s ignored cancellation", self._owner, channel)

    async def close(self) -> None:
        subscriptions = list(self._subscriptions.values())
        self._subscriptions.clear()
        tasks: list[asyncio.Task[None]] = []
        for subscription in subscriptions:
            subscription.closed = True  # ends the loop even if a handler swallows the cancel
            subscription.pending = None
            task = subscription.task
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                tasks.append(task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            if pending:
                log.warning("%s: %d handlers ignored cancellation", self._owner, len(pending))

    async def _run(self, channel: str, subscription: _Subscription) -> None:
        try:
            while not subscription.closed and subscription.pending:
                message = subscription.pending.popleft()
                deadline = asyncio.timeout(HANDLER_TIMEOUT_S)
                try:
                    async with deadline:
                        await subscription.handler(message)
                except Exception:
                    if deadline.expired():
                        limit = HANDLER_TIMEOUT_S
                        log.error("%s: handler of %s overran %.0f s", self._owner, channel, limit)
                    else:
                        log.exception("%s: handler of %s failed", self._owner, channel)
        finally:
            subscription.task = None
            if not subscription.pending:
                subscription.pending = None


def copy_of(message: Message) -> Message:
    """The message as a receiver gets it: through JSON, as if it had crossed the network."""
    copied: Message = json.loads(json.dumps(message))
    return copied


class MemoryBus:
    """The bus of a single instance, in this process; expiry by the monotonic clock.

    Messages go through JSON like on Redis, so a message that could not cross the network
    fails here too and no receiver shares an object with its sender.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._deliveries = Deliveries(name)
        self._presence: dict[str, tuple[str, float]] = {}  # device -> (holder, expires at)
        self._once: dict[str, float] = {}  # key -> expires at
        self._next_sweep = 0.0
        self._running = False
        self.gap_listener: GapListener | None = None  # never called: nothing here is lost

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False
        await self._deliveries.close()

    async def ping(self) -> bool:
        return self._running

    async def publish(self, channel: str, message: Message) -> int:
        self._check_running()
        return int(self._deliveries.deliver(channel, copy_of(message)))

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._check_running()
        self._deliveries.add(channel, handler)

    async def unsubscribe(self, channel: str) -> None:
        await self._deliveries.remove(channel)

    def on_gap(self, listener: GapListener) -> None:
        self.gap_listener = listener

    async def set_presence(self, device_id: str, holder: str, ttl_s: float) -> None:
        self._check_running()
        self._presence[device_id] = (holder, time.monotonic() + ttl_s)

    async def clear_presence(self, device_id: str, holder: str) -> bool:
        self._check_running()
        entry = self._presence.get(device_id)
        if entry is None or entry[0] != holder or entry[1] <= time.monotonic():
            return False  # an expired entry stays, for claim_expired_presence
        del self._presence[device_id]
        return True

    async def presence(self, device_ids: Sequence[str]) -> dict[str, str | None]:
        self._check_running()
        now = time.monotonic()
        result: dict[str, str | None] = {}
        for device_id in device_ids:
            entry = self._presence.get(device_id)
            result[device_id] = entry[0] if entry is not None and entry[1] > now else None
        return result

    async def claim_expired_presence(self, limit: int = 100) -> list[str]:
        self._check_running()
        now = time.monotonic()
        expired = [d for d, (_, expires) in self._presence.items() if expires <= now][:limit]
        for device_id in expired:
            del self._presence[device_id]
        return expired

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        self._check_running()
        now = time.monotonic()
        if now >= self._next_sweep:  # forget lapsed keys now and then, not on every call
            self._once = {k: t for k, t in self._once.items() if t > now}
            self._next_sweep = now + 60
        if self._once.get(key, 0.0) > now:
            return False
        self._once[key] = now + ttl_s
        return True

    def _check_running(self) -> None:
        if not self._running:
            raise BusUnavailable(f"{self.name}: the bus is not running")
