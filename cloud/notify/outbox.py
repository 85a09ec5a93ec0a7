"""The durable outbox: every push and webhook is stored in MongoDB before it is sent, so a
cloud restart loses none, and each is sent at least once.

The unit is a :class:`Notification`: one message of one channel about one event state (or
one test push), to all its targets, each target's state inside it (a :class:`Delivery`).
An event report thus costs the store one insert and one update per channel. When each
delivery was a document of its own it cost one insert and one update per target (11 of
each per report in bench/notify.py), and SecantusDB, our test store, saturated between 110
and 275 deliveries a second (docs/benchmarks.md, "Notifications from the outbox").

Each cloud instance runs one :class:`Outbox` worker. Notifications enqueued on an instance
are stored leased to it and sent from its memory at once. Anything else due (a retry,
another instance's leftovers) is claimed from the database every ``POLL_S`` or when a
retry falls due: leased by a conditional update (open, due, lease expired), so two
instances never send the same one at once, and a crashed instance's lease simply runs out
(``LEASE_S``). A round sends every due delivery of the notification at once, then records
every try in one update (time, status code or error, next try); a failed delivery is tried
again after the next step of ``NOTIFY_RETRY_SCHEDULE_S`` (the last step repeats) until
``NOTIFY_RETRY_FOR_S`` after the notification was made, when it is ``dead``.

Order: one event's notifications of a channel go in ``seq`` order per target. A round holds
back a delivery whose target's earlier delivery is unsettled, and looks again when that one
falls due. On one instance an event's notifications of a channel share one task (a
chain), so an ``end`` enqueued while its ``new`` is being sent waits for it in memory.
"""

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, PyMongoError

from cloud import metrics
from cloud.errors import database_unavailable
from cloud.notify.models import CLAIMABLE, EPOCH_LEASE, Channel, Delivery, Notification
from cloud.notify.recent import Recent
from cloud.settings import Settings

# Recent: what the senders have always imported from here
__all__ = [
    "ROUND_S",
    "SEND_TIMEOUT_S",
    "Outbox",
    "Outcome",
    "Recent",
    "Sender",
    "next_delay",
    "now",
]

log = logging.getLogger(__name__)

POLL_S = 1.0
LEASE_S = 60.0  # longer than a round can take (SEND_TIMEOUT_S, then the record)
SEND_TIMEOUT_S = 10.0
BATCH = 50  # notifications claimed at once
CONCURRENCY = 64  # notifications in hand at once (sent, or waiting in their chain)
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


async def _anyone(notification: Notification) -> Collection[ObjectId] | None:
    return None


def now() -> datetime:
    return datetime.now(UTC)


def next_delay(settings: Settings, failures: int) -> float:
    """Seconds before the try after ``failures`` failed tries."""
    schedule = settings.notify_retry_schedule_s
    return schedule[min(failures, len(schedule)) - 1]


ROUND_S = SEND_TIMEOUT_S + 5  # what a round's sends read at its start serves this long


def chain_of(notification: Notification) -> str:
    """The notifications that go in order share this name: an event's, per channel."""
    if notification.event_id is None:
        return notification.key
    return f"{notification.channel}:{notification.event_id}"


class Outbox:
    def __init__(self, settings: Settings, senders: dict[Channel, Sender]) -> None:
        self.settings = settings
        self._senders = senders
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._chains: dict[str, list[Notification]] = {}  # name -> waiting, in its task
        self._tasks: set[asyncio.Task[None]] = set()
        self._held = 0  # notifications dispatched and not yet done with
        self._sends = asyncio.Semaphore(SENDS)
        self._owner = secrets.token_hex(4)
        self._claims = itertools.count()
        self.allowed: Audience = _anyone
        self._direct: list[Notification] = []  # enqueued here, leased to this instance
        self._look = True  # claim from the database now (else at the next poll)
        self._stopping = False

    # enqueueing ---------------------------------------------------------------------------

    def new(
        self,
        *,
        key: str,
        channel: Channel,
        type: str,
        bodies: list[str],
        deliveries: list[Delivery],
        device_id: ObjectId | None = None,
        event_id: ObjectId | None = None,
        seq: int = 0,
    ) -> Notification:
        """A notification due now (not stored yet): pass it to :meth:`enqueue`."""
        at = now()
        keep = timedelta(seconds=self.settings.notify_retry_for_s + 7 * 86_400)
        for delivery in deliveries:
            delivery.next_attempt_at = at
        users = list(dict.fromkeys(d.user_id for d in deliveries))
        return Notification(
            key=key,
            channel=channel,
            device_id=device_id,
            event_id=event_id,
            type=type,
            seq=seq,
            bodies=bodies,
            users=users,
            deliveries=deliveries,
            created_at=at,
            next_attempt_at=at,
            expires_at=at + keep,
        )

    async def enqueue(self, notifications: list[Notification]) -> int:
        """Store ``notifications``; those whose ``key`` is already stored are skipped, and
        so are those without a delivery. Answers how many deliveries were added. With the
        worker running they are stored leased to this instance and sent from memory at
        once (no claim round trip); a crash before they are settled leaves them to whoever
        claims them when the lease runs out."""
        notifications = [n for n in notifications if n.deliveries]
        if not notifications:
            return 0
        direct = self._task is not None
        at = now()
        documents = []
        for notification in notifications:
            document = notification.model_dump(by_alias=True, exclude={"id", "revision_id"})
            if direct:  # (not due while leased: see Notification.next_attempt_at)
                document["lease_owner"] = f"{self._owner}:direct"
                document["lease_until"] = document["next_attempt_at"] = at + timedelta(
                    seconds=LEASE_S
                )
            documents.append(document)
        refused: set[int] = set()
        try:
            await Notification.get_pymongo_collection().insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            refused = {e["index"] for e in errors}
        added = [d for i, d in enumerate(documents) if i not in refused and "_id" in d]
        if direct:
            self._direct.extend(Notification.model_validate({**d, "id": d["_id"]}) for d in added)
        else:
            self._look = True
        if added:
            self._wake.set()
        return sum(len(d["deliveries"]) for d in added)

    def wake(self) -> None:
        self._wake.set()

    def _wake_at(self, when: datetime) -> None:
        """Look again at ``when`` (sooner than the next poll)."""
        delay = (when - now()).total_seconds()
        if delay < POLL_S:
            asyncio.get_running_loop().call_later(max(0.0, delay) + 0.005, self._look_now)

    def _look_now(self) -> None:
        self._look = True
        self._wake.set()

    # the worker ---------------------------------------------------------------------------

    def start(self) -> None:
        self._look, self._stopping = True, False
        self._task = asyncio.create_task(self._run(), name="notify-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=5)
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:  # (pymongo may swallow a cancellation: do not wait forever)
            await asyncio.wait(set(self._tasks), timeout=5)
        self._direct = []
        try:  # what this instance held goes back now, not when its lease runs out
            await Notification.get_pymongo_collection().update_many(
                {"status": "open", "lease_owner": {"$regex": f"^{self._owner}:"}},
                {
                    "$set": {
                        "lease_until": EPOCH_LEASE,
                        "lease_owner": None,
                        "next_attempt_at": now(),
                    }
                },
            )
        except PyMongoError:
            log.warning("outbox: could not release its leases; they run out in %d s", LEASE_S)

    async def _run(self) -> None:
        last_claim = -POLL_S
        loop = asyncio.get_running_loop()
        while not self._stopping:
            progressed = False
            self._wake.clear()
            try:
                room = CONCURRENCY - self._held
                if room > 0 and self._direct:
                    batch, self._direct = self._direct[:room], self._direct[room:]
                    self._dispatch(batch)
                    progressed = True
                room = min(CONCURRENCY - self._held, BATCH)
                if room > 0 and (self._look or loop.time() - last_claim >= POLL_S):
                    self._look, last_claim = False, loop.time()
                    claimed = await self.claim(room)
                    self._dispatch(claimed)
                    if len(claimed) == room:  # a full batch: more may be due
                        self._look = True
                    progressed = progressed or bool(claimed)
            except PyMongoError:
                log.warning("outbox: the database failed; trying again", exc_info=True)
            except Exception:
                log.exception("outbox: claiming failed")
            if (progressed or self._look) and self._held < CONCURRENCY:
                await asyncio.sleep(0)
                continue
            wake = asyncio.ensure_future(self._wake.wait())
            timeout = max(0.01, POLL_S - (loop.time() - last_claim))
            try:
                await asyncio.wait({wake}, timeout=timeout)
            finally:
                wake.cancel()

    def _dispatch(self, notifications: list[Notification]) -> None:
        for notification in notifications:
            name = chain_of(notification)
            waiting = self._chains.get(name)
            if waiting is not None:
                if all(n.id != notification.id for n in waiting):
                    waiting.append(notification)
                    self._held += 1
                continue
            self._chains[name] = [notification]
            self._held += 1
            task = asyncio.create_task(self._chain(name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _chain(self, name: str) -> None:
        """Rounds of one chain's notifications, in ``seq`` order, one at a time."""
        waiting = self._chains[name]
        try:
            while waiting:
                waiting.sort(key=lambda n: n.seq)
                notification = waiting.pop(0)
                try:
                    await self._round(notification)
                except Exception as exc:  # its lease runs out and it is claimed again then
                    which = notification.id
                    if database_unavailable(exc) is None:
                        log.exception("outbox: notification %s failed unexpectedly", which)
                    else:  # an outage: nothing is lost, the claim comes again
                        log.warning("outbox: notification %s waits for the database", which)
                finally:
                    self._held -= 1
                    self._wake.set()
        finally:
            self._held -= len(waiting)
            del self._chains[name]

    async def claim(self, limit: int) -> list[Notification]:
        """Lease up to ``limit`` due notifications to this instance, one conditional
        update each (open, due: a leased one is due when its lease runs out), the earliest
        first."""
        collection = Notification.get_pymongo_collection()
        token = f"{self._owner}:{next(self._claims)}"
        won: list[Notification] = []
        while len(won) < limit:
            at = now()
            lease = at + timedelta(seconds=LEASE_S)
            doc = await collection.find_one_and_update(
                {"status": "open", "next_attempt_at": {"$lte": at}},
                {"$set": {"lease_until": lease, "lease_owner": token, "next_attempt_at": lease}},
                sort=[("next_attempt_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            won.append(Notification.model_validate({**doc, "id": doc["_id"]}))
        return won

    # a round --------------------------------------------------------------------------------

    async def _round(self, notification: Notification) -> None:
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
            users = await self.allowed(notification)
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
            self._wake_at(notification.next_attempt_at)
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
        failures = len(delivery.attempts) + 1
        retry_at = at + timedelta(seconds=next_delay(self.settings, failures))
        give_up = notification.created_at + timedelta(seconds=self.settings.notify_retry_for_s)
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

    # deliveries that will never be sent -----------------------------------------------------

    async def kill(
        self, query: dict[str, Any], reason: str, target_id: ObjectId | None = None
    ) -> None:
        """Every unsent delivery of the open notifications ``query`` matches (to
        ``target_id``, or all of them) is dead; their notifications settle at their next
        round."""
        only: dict[str, Any] = {"d.status": {"$in": list(CLAIMABLE)}}
        if target_id is not None:
            only["d.target_id"] = target_id
        await Notification.get_pymongo_collection().update_many(
            {**query, "status": "open"},
            {
                "$set": {
                    "deliveries.$[d].last_error": reason,
                    "deliveries.$[d].next_attempt_at": None,
                    # last: SecantusDB applies the paths in turn, each matching the array
                    # filter against the document as the paths before it left it
                    "deliveries.$[d].status": "dead",
                }
            },
            array_filters=[only],
        )

    async def kill_target(self, target_id: ObjectId, reason: str) -> None:
        """Every unsent delivery to ``target_id`` is dead (its target is gone or disabled)."""
        await self.kill({"deliveries.target_id": target_id}, reason, target_id)


def outcome_label(outcome: Outcome) -> str:
    """``delivered``, ``failed`` (tried again later) or ``refused`` (dead at once); a retried
    failure that runs out of time is counted as failed."""
    if outcome.delivered:
        return "delivered"
    return "failed" if outcome.retry else "refused"
