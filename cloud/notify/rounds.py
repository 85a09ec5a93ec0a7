"""A round: one notification's due deliveries sent at once, then every try recorded in one
update of the notification (time, status code or error, next try). The outbox
(cloud.notify.outbox) decides which notification goes when and holds its lease; a round
only sends and records, under that lease.

A failed delivery is tried again after the next step of ``NOTIFY_RETRY_SCHEDULE_S`` (the
last step repeats) until ``NOTIFY_RETRY_FOR_S`` after the notification was made, when it is
``dead``.

Order: one event's notifications of a channel go in ``seq`` order per target. A round holds
back a delivery whose target's earlier delivery is unsettled, and looks again when that one
falls due.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bson import ObjectId
from pymongo.errors import PyMongoError

from cloud import metrics
from cloud.notify.models import CLAIMABLE, EPOCH_LEASE, Channel, Delivery, Notification
from cloud.settings import Settings

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
ROUND_S = SEND_TIMEOUT_S + 5  # what a round's sends read at its start serves this long
SENDS = 256  # deliveries being sent at once, over all notifications
ORDER_WAIT_S = 0.3  # a delivery waiting for an earlier one of its target looks again after
RECORD_FOR_S = 20.0  # a round's record is retried this long while the database is away
FIRST = ("event.new", "test")  # types that nothing precedes
NOT_ALLOWED = "no longer allowed to see the camera"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retry: bool = True  # a failure: try again later (False: dead now)


Sender = Callable[[Notification, Delivery], Awaitable[Outcome]]
# the users who may still receive a notification (None: anyone)
Audience = Callable[[Notification], Awaitable[Collection[ObjectId] | None]]


def now() -> datetime:
    return datetime.now(UTC)


def next_delay(settings: Settings, failures: int) -> float:
    """Seconds before the try after ``failures`` failed tries."""
    schedule = settings.notify_retry_schedule_s
    return schedule[min(failures, len(schedule)) - 1]


class Worker(Protocol):
    """What the rounds read from the outbox worker they serve, afresh at every round (the
    notifier sets them after it made the outbox, and tests change the settings)."""

    settings: Settings
    allowed: Audience

    def wake_at(self, when: datetime) -> None:
        """Look again at ``when``: a recorded notification falls due then."""


class Rounds:
    """The rounds of one outbox worker: at most ``SENDS`` deliveries in flight over all its
    notifications, each send cut off after ``SEND_TIMEOUT_S + 5``. A round never raises
    for a send (a sender's failure is an :class:`Outcome`); it raises when the database
    stays away longer than ``RECORD_FOR_S``, and the notification's lease then brings it
    back. The worker is told when a recorded notification falls due again, so that a retry
    sooner than its next poll is not late."""

    def __init__(self, worker: Worker, senders: dict[Channel, Sender]) -> None:
        self._worker = worker
        self._senders = senders
        self._sends = asyncio.Semaphore(SENDS)

    async def run(self, notification: Notification) -> None:
        """Send the notification's due deliveries, then record how each went."""
        at = now()
        # one whose lease would run out during its round is left to the claims (a backlog):
        # sent from here too, it could go twice at once
        if notification.lease_until <= at + timedelta(seconds=SEND_TIMEOUT_S + 10):
            return
        due = [
            i
            for i, d in enumerate(notification.deliveries)
            if d.status in CLAIMABLE and d.next_attempt_at is not None and d.next_attempt_at <= at
        ]
        held = await self._blocked(notification, due) if due else {}
        send = [i for i in due if i not in held]
        outcomes: dict[int, Outcome] = {}
        if send:
            users = await self._worker.allowed(notification)
            if users is not None:
                refused = Outcome(False, error=NOT_ALLOWED, retry=False)
                for i in send:
                    if notification.deliveries[i].user_id not in users:
                        outcomes[i] = refused
                send = [i for i in send if i not in outcomes]
        if send:
            sender = self._senders[notification.channel]
            prefetch = getattr(sender, "prefetch", None)
            if prefetch is not None:
                await prefetch([notification.deliveries[i].target_id for i in send])
            results = await asyncio.gather(*(self._send(notification, i) for i in send))
            outcomes.update(zip(send, results, strict=True))
        await self.record(notification, outcomes, held)

    async def _blocked(self, notification: Notification, due: list[int]) -> dict[int, datetime]:
        """The due deliveries whose target has an unsettled earlier delivery of this event
        (its ``new`` being retried, or held by another instance), and when to look again."""
        if notification.type in FIRST or notification.event_id is None:
            return {}
        cursor = Notification.get_pymongo_collection().find(
            {"event_id": notification.event_id},  # a few: the rest is filtered here
            {
                "channel": 1,
                "status": 1,
                "seq": 1,
                "deliveries.target_id": 1,
                "deliveries.status": 1,
                "deliveries.next_attempt_at": 1,
            },
        )
        waiting: dict[ObjectId, datetime] = {}
        async for other in cursor:
            if (other["channel"], other["status"]) != (notification.channel, "open"):
                continue
            if other["seq"] >= notification.seq:
                continue
            for earlier in other["deliveries"]:
                if earlier["status"] in CLAIMABLE:
                    when = earlier["next_attempt_at"] or EPOCH_LEASE
                    waiting[earlier["target_id"]] = max(
                        when, waiting.get(earlier["target_id"], when)
                    )
        if not waiting:
            return {}
        soon = now() + timedelta(seconds=ORDER_WAIT_S)
        return {
            i: max(soon, waiting[notification.deliveries[i].target_id])
            for i in due
            if notification.deliveries[i].target_id in waiting
        }

    async def _send(self, notification: Notification, index: int) -> Outcome:
        delivery = notification.deliveries[index]
        async with self._sends:
            try:
                sender = self._senders[notification.channel]
                return await asyncio.wait_for(
                    sender(notification, delivery), timeout=SEND_TIMEOUT_S + 5
                )
            except TimeoutError:
                return Outcome(False, error="timed out")
            except Exception as exc:
                log.exception("outbox: delivery %s failed unexpectedly", delivery.id)
                return Outcome(False, error=f"internal error: {type(exc).__name__}")

    async def record(
        self,
        notification: Notification,
        outcomes: dict[int, Outcome],
        held: dict[int, datetime] | None = None,
    ) -> None:
        """Store the round's tries (``outcomes`` by delivery index) and the deliveries held
        back until a time, in one update; the notification is ``settled`` once none of its
        deliveries is pending or failed. Also updates ``notification`` in memory."""
        at = now()
        sets: dict[str, Any] = {}
        pushes: dict[str, Any] = {}
        for i, outcome in outcomes.items():
            metrics.NOTIFY_DELIVERIES.labels(notification.channel, outcome_label(outcome)).inc()
            delivery = notification.deliveries[i]
            attempt = self._settle(notification, delivery, outcome, at)
            delivery.attempts.append(attempt)
            path = f"deliveries.{i}."
            sets |= {
                path + "status": delivery.status,
                path + "next_attempt_at": delivery.next_attempt_at,
                path + "last_error": delivery.last_error,
                path + "delivered_at": delivery.delivered_at,
            }
            pushes[path + "attempts"] = attempt
        for i, when in (held or {}).items():
            notification.deliveries[i].next_attempt_at = when
            sets[f"deliveries.{i}.next_attempt_at"] = when
        unsettled = [
            d.next_attempt_at or at for d in notification.deliveries if d.status in CLAIMABLE
        ]
        if unsettled:
            notification.next_attempt_at = min(unsettled)
            sets |= {"status": "open", "next_attempt_at": notification.next_attempt_at}
            self._worker.wake_at(notification.next_attempt_at)
        else:
            notification.status = "settled"
            sets["status"] = "settled"
        sets |= {"lease_until": EPOCH_LEASE, "lease_owner": None}
        update: dict[str, Any] = {"$set": sets}
        if pushes:
            update["$push"] = pushes
        written = await self._write(notification, update)
        delivered = [i for i, o in outcomes.items() if o.delivered]
        if not written and delivered:
            # the lease ran out meanwhile (someone may send these again): at least say
            # which were delivered, so that nobody sends them a third time
            await self._write(
                notification,
                {"$set": {f"deliveries.{i}.status": "delivered" for i in delivered}},
                leased=False,
            )
            log.warning("outbox: notification %s outlived its lease", notification.id)

    def _settle(
        self, notification: Notification, delivery: Delivery, outcome: Outcome, at: datetime
    ) -> dict[str, Any]:
        """Apply one try's outcome to ``delivery``; answers the attempt to record."""
        attempt: dict[str, Any] = {
            "at": at,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "next_attempt_at": None,
        }
        if outcome.delivered:
            delivery.status, delivery.delivered_at = "delivered", at
            delivery.next_attempt_at = delivery.last_error = None
            return attempt
        settings = self._worker.settings
        failures = len(delivery.attempts) + 1
        retry_at = at + timedelta(seconds=next_delay(settings, failures))
        give_up = notification.created_at + timedelta(seconds=settings.notify_retry_for_s)
        delivery.last_error = outcome.error or f"HTTP {outcome.status_code}"
        if outcome.retry and retry_at <= give_up:
            delivery.status, delivery.next_attempt_at = "failed", retry_at
            attempt["next_attempt_at"] = retry_at
        else:
            delivery.status, delivery.next_attempt_at = "dead", None
        log.info(
            "delivery %s (%s %s): %s, %s",
            delivery.id,
            notification.channel,
            notification.type,
            delivery.status,
            delivery.last_error,
        )
        return attempt

    async def _write(
        self, notification: Notification, update: dict[str, Any], leased: bool = True
    ) -> bool:
        """One update of the notification, tried again while the database is away (for up
        to ``RECORD_FOR_S``); False when this instance no longer holds its lease."""
        query: dict[str, Any] = {"_id": notification.id}
        if leased:
            query["lease_owner"] = notification.lease_owner
        collection = Notification.get_pymongo_collection()
        deadline = asyncio.get_running_loop().time() + RECORD_FOR_S
        pause = 0.2
        while True:
            try:
                result = await collection.update_one(query, update)
                return result.matched_count == 1
            except PyMongoError:
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise
                log.warning("outbox: recording %s failed; trying again", notification.id)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)


def outcome_label(outcome: Outcome) -> str:
    """``delivered``, ``failed`` (tried again later) or ``refused`` (dead at once); a retried
    failure that runs out of time is counted as failed."""
    if outcome.delivered:
        return "delivered"
    return "failed" if outcome.retry else "refused"
