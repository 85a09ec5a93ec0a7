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
(``LEASE_S``). What the worker holds goes in rounds (cloud.notify.rounds): every due
delivery of the notification sent at once, every try recorded in one update, a failure
tried again on a schedule until it is ``dead``, a target's deliveries of an event kept in
``seq`` order.

Order in memory: on one instance an event's notifications of a channel share one task (a
chain), so an ``end`` enqueued while its ``new`` is being sent waits for it there.
"""

import asyncio
import itertools
import logging
import secrets
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.errors import BulkWriteError, PyMongoError

from cloud.errors import database_unavailable
from cloud.notify.models import CLAIMABLE, EPOCH_LEASE, Channel, Delivery, Notification
from cloud.notify.recent import Recent
from cloud.notify.rounds import (
    ROUND_S,
    SEND_TIMEOUT_S,
    Audience,
    Outcome,
    Rounds,
    Sender,
    next_delay,
    now,
)
from cloud.settings import Settings

# what the senders and the notifier have always imported from here
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
BATCH = 50  # notifications claimed at once
CONCURRENCY = 64  # notifications in hand at once (sent, or waiting in their chain)


async def _anyone(notification: Notification) -> Collection[ObjectId] | None:
    return None


def chain_of(notification: Notification) -> str:
    """The notifications that go in order share this name: an event's, per channel."""
    if notification.event_id is None:
        return notification.key
    return f"{notification.channel}:{notification.event_id}"


class Outbox:
    """One instance's outbox: stores notifications, leases them to this instance (at
    enqueue or by a claim) and hands each to its rounds, at most ``CONCURRENCY`` at once.
    ``settings`` and ``allowed`` may be changed at any time: the next round reads them."""

    def __init__(self, settings: Settings, senders: dict[Channel, Sender]) -> None:
        self.settings = settings
        self.allowed: Audience = _anyone
        self._rounds = Rounds(self, senders)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._chains: dict[str, list[Notification]] = {}  # name -> waiting, in its task
        self._tasks: set[asyncio.Task[None]] = set()
        self._held = 0  # notifications dispatched and not yet done with
        self._owner = secrets.token_hex(4)
        self._claims = itertools.count()
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

    def wake_at(self, when: datetime) -> None:
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
                    await self._rounds.run(notification)
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
        """Lease up to ``limit`` due notifications to this instance (open, due: a leased
        one is due when its lease runs out), the earliest first.

        Each is read, taken by a compare-and-set on its owner, and read again (the state
        its round starts from), rather than by one find-and-modify: SecantusDB carries out
        a find-and-modify's update with ``{_id, $and: [query]}``, a filter it answers by
        scanning the whole collection (the full soak, docs/benchmarks.md). Another
        instance may take it in between: then the next due one is tried."""
        collection = Notification.get_pymongo_collection()
        token = f"{self._owner}:{next(self._claims)}"
        won: list[Notification] = []
        while len(won) < limit:
            at = now()
            due = await collection.find_one(
                {"status": "open", "next_attempt_at": {"$lte": at}},
                {"lease_owner": 1},
                sort=[("next_attempt_at", 1)],
            )
            if due is None:
                break
            lease = at + timedelta(seconds=LEASE_S)
            taken = await collection.update_one(
                {"_id": due["_id"], "lease_owner": due.get("lease_owner")},  # an index exactly
                {"$set": {"lease_until": lease, "lease_owner": token, "next_attempt_at": lease}},
            )
            if taken.modified_count != 1:
                continue
            doc = await collection.find_one({"_id": due["_id"]})
            if doc is not None:
                won.append(Notification.model_validate({**doc, "id": doc["_id"]}))
        return won

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
