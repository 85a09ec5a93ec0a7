"""The durable outbox: every push and webhook is a :class:`Delivery` in MongoDB before it is
sent, so a cloud restart loses none, and each is sent at least once.

Each cloud instance runs one :class:`Outbox` worker. It claims due deliveries by leasing them
(a conditional update per document: status claimable, due, lease expired), so two instances
never send the same one at once and a crashed instance's lease simply runs out
(``LEASE_S``). It sends them, records each try on the delivery (time, status code or error,
next try) and retries a failure after the next step of ``NOTIFY_RETRY_SCHEDULE_S`` (the
last step repeats) until ``NOTIFY_RETRY_FOR_S`` after its creation, when it is ``dead``.
Enqueueing wakes the worker of its instance at once (an asyncio.Event); the others poll
every ``POLL_S``.

Order: deliveries of one ``group`` (one target, one event thread) go in ``seq`` order: one
that is claimed while an earlier one of its group is unsettled is put back until then.
"""

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.errors import BulkWriteError, PyMongoError

from cloud import metrics
from cloud.notify.models import CLAIMABLE, EPOCH_LEASE, Channel, Delivery
from cloud.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 1.0
LEASE_S = 60.0  # longer than any send's timeout (SEND_TIMEOUT_S)
SEND_TIMEOUT_S = 10.0
BATCH = 100
CONCURRENCY = 64
ORDER_WAIT_S = 0.3  # a delivery waiting for an earlier one of its group looks again after
FIRST = ("event.new", "test")  # types that open their group
FLUSH_S = 0.05  # successes are recorded together, this long after the first of a batch


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retry: bool = True  # a failure: try again later (False: dead now)


Sender = Callable[[Delivery], Awaitable[Outcome]]
Check = Callable[[Delivery], Awaitable[Outcome | None]]


async def _anyone(delivery: Delivery) -> Outcome | None:
    return None


def now() -> datetime:
    return datetime.now(UTC)


def next_delay(settings: Settings, failures: int) -> float:
    """Seconds before the try after ``failures`` failed tries."""
    schedule = settings.notify_retry_schedule_s
    return schedule[min(failures, len(schedule)) - 1]


class Outbox:
    def __init__(self, settings: Settings, senders: dict[Channel, Sender]) -> None:
        self.settings = settings
        self._senders = senders
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._owner = secrets.token_hex(4)
        self._claims = itertools.count()
        self.allowed: Check = _anyone  # None: send; an Outcome: settle with it unsent
        self._direct: list[Delivery] = []  # enqueued here, leased to this instance, unsent
        self._look = True  # claim from the database now (else at the next poll)
        self._stopping = False
        self._delivered: list[tuple[Delivery, Outcome]] = []  # recorded in batches
        self._flushing: asyncio.Task[None] | None = None

    # enqueueing ---------------------------------------------------------------------------

    def new(self, **fields: Any) -> Delivery:
        """A delivery due now (not stored yet): pass it to :meth:`enqueue`."""
        at = now()
        keep = timedelta(seconds=self.settings.notify_retry_for_s + 7 * 86_400)
        return Delivery(created_at=at, next_attempt_at=at, expires_at=at + keep, **fields)

    async def enqueue(self, deliveries: list[Delivery]) -> int:
        """Store ``deliveries``; those whose ``key`` is already stored are skipped. Answers
        how many were added. With the worker running they are stored leased to this
        instance and sent from memory at once (no claim round trip); a crash before they
        are settled leaves them to whoever claims them when the lease runs out."""
        if not deliveries:
            return 0
        direct = self._task is not None
        at = now()
        documents = []
        for delivery in deliveries:
            document = delivery.model_dump(by_alias=True, exclude={"id", "revision_id"})
            if direct:
                document["lease_owner"] = f"{self._owner}:direct"
                document["lease_until"] = at + timedelta(seconds=LEASE_S)
            documents.append(document)
        refused: set[int] = set()
        try:
            await Delivery.get_pymongo_collection().insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            refused = {e["index"] for e in errors}
        added = [d for i, d in enumerate(documents) if i not in refused and "_id" in d]
        if direct:
            self._direct.extend(Delivery.model_validate({**d, "id": d["_id"]}) for d in added)
        else:
            self._look = True
        if added:
            self._wake.set()
        return len(added)

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
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:  # (pymongo may swallow a cancellation: do not wait forever)
            await asyncio.wait(set(self._inflight), timeout=5)
        if self._flushing is not None:
            self._flushing.cancel()
        await self.flush()
        self._direct = []
        try:  # what this instance held goes back now, not when its lease runs out
            await Delivery.get_pymongo_collection().update_many(
                {"lease_owner": {"$regex": f"^{self._owner}:"}},
                {"$set": {"lease_until": EPOCH_LEASE, "lease_owner": None}},
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
                room = CONCURRENCY - len(self._inflight)
                if room > 0 and self._direct:
                    batch, self._direct = self._direct[:room], self._direct[room:]
                    # one whose lease would run out during its send is left to the claims
                    # (a backlog): sent from here too, it could go twice at once
                    safe = now() + timedelta(seconds=SEND_TIMEOUT_S + 5)
                    await self._dispatch([d for d in batch if d.lease_until > safe])
                    progressed = True
                room = min(CONCURRENCY - len(self._inflight), BATCH)
                if room > 0 and (self._look or loop.time() - last_claim >= POLL_S):
                    self._look, last_claim = False, loop.time()
                    claimed = await self.claim(room)
                    await self._dispatch(claimed)
                    if len(claimed) == room:  # a full batch: more may be due
                        self._look = True
                    progressed = progressed or bool(claimed)
            except PyMongoError:
                log.warning("outbox: the database failed; trying again", exc_info=True)
            except Exception:
                log.exception("outbox: claiming failed")
            if (progressed or self._look) and len(self._inflight) < CONCURRENCY:
                await asyncio.sleep(0)
                continue
            waiters: set[asyncio.Future[Any]] = set(self._inflight)
            wake = asyncio.ensure_future(self._wake.wait())
            waiters.add(wake)
            timeout = max(0.01, POLL_S - (loop.time() - last_claim))
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()

    async def _dispatch(self, docs: list[Delivery]) -> None:
        if not docs:
            return
        for channel in {d.channel for d in docs}:
            prefetch = getattr(self._senders[channel], "prefetch", None)
            if prefetch is not None:
                await prefetch([d.target_id for d in docs if d.channel == channel])
        for group in await self._in_order(docs):
            task = asyncio.create_task(self._send_group(group))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def claim(self, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries to this instance."""
        collection = Delivery.get_pymongo_collection()
        at = now()
        due = {"status": {"$in": list(CLAIMABLE)}, "next_attempt_at": {"$lte": at}}
        cursor = (
            collection.find({**due, "lease_until": {"$lte": at}}, {"_id": 1})
            .sort("next_attempt_at", 1)
            .limit(limit)
        )
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return []
        token = f"{self._owner}:{next(self._claims)}"
        await collection.update_many(
            {"_id": {"$in": ids}, **due, "lease_until": {"$lte": at}},
            {"$set": {"lease_until": at + timedelta(seconds=LEASE_S), "lease_owner": token}},
        )
        found = collection.find({"_id": {"$in": ids}, "lease_owner": token})
        won = [Delivery.model_validate({**doc, "id": doc["_id"]}) async for doc in found]
        if len(won) < len(ids):  # another instance took some: look again at once
            self._look = True
        return won

    async def _in_order(self, docs: list[Delivery]) -> list[list[Delivery]]:
        """``docs`` by group in seq order, without those an unsettled earlier delivery of
        their group (not claimed here) must precede: those are put back."""
        groups: dict[str, list[Delivery]] = {}
        for doc in sorted(docs, key=lambda d: d.seq):
            groups.setdefault(doc.group, []).append(doc)
        blockers: dict[str, tuple[int, datetime]] = {}
        # a group's first delivery (a thread's new, a test) has nothing before it
        behind = [name for name, members in groups.items() if members[-1].type not in FIRST]
        if not behind:
            return list(groups.values())
        cursor = Delivery.get_pymongo_collection().find(
            {
                "group": {"$in": behind},
                "status": {"$in": list(CLAIMABLE)},
                "_id": {"$nin": [d.id for d in docs]},
            },
            {"group": 1, "seq": 1, "next_attempt_at": 1},
        )
        async for other in cursor:
            held = blockers.get(other["group"])
            if held is None or other["seq"] < held[0]:
                blockers[other["group"]] = (other["seq"], other["next_attempt_at"])
        ready: list[list[Delivery]] = []
        for name, members in groups.items():
            blocker = blockers.get(name)
            if blocker is None:
                ready.append(members)
                continue
            first = [d for d in members if d.seq < blocker[0]]
            if first:
                ready.append(first)
            later = [d for d in members if d.seq >= blocker[0]]
            await self._put_back(later, blocker[1])
        return ready

    async def _put_back(self, docs: list[Delivery], after: datetime) -> None:
        if not docs:
            return
        when = max(now() + timedelta(seconds=ORDER_WAIT_S), after)
        self._wake_at(when)
        await Delivery.get_pymongo_collection().update_many(
            {"_id": {"$in": [d.id for d in docs]}, "lease_owner": docs[0].lease_owner},
            {"$set": {"next_attempt_at": when, "lease_until": EPOCH_LEASE, "lease_owner": None}},
        )

    async def _send_group(self, docs: list[Delivery]) -> None:
        for index, doc in enumerate(docs):
            try:
                outcome = await self._send(doc)
                settled = await self.record(doc, outcome)
            except Exception:
                log.exception("outbox: delivery %s failed unexpectedly", doc.id)
                settled = False
            if not settled:  # the rest of its group waits for it
                await self._put_back(docs[index + 1 :], now())
                return

    async def _send(self, doc: Delivery) -> Outcome:
        refused = await self.allowed(doc)
        if refused is not None:
            return refused
        sender = self._senders[doc.channel]
        try:
            return await asyncio.wait_for(sender(doc), timeout=SEND_TIMEOUT_S + 5)
        except TimeoutError:
            return Outcome(False, error="timed out")

    async def record(self, doc: Delivery, outcome: Outcome) -> bool:
        """Store the try's outcome; True when the delivery is settled (delivered or dead).
        Successes are written in batches (within ``FLUSH_S``)."""
        metrics.NOTIFY_DELIVERIES.labels(doc.channel, outcome_label(outcome)).inc()
        if outcome.delivered:
            self._delivered.append((doc, outcome))
            if self._flushing is None or self._flushing.done():
                self._flushing = asyncio.create_task(self._flush_later())
            return True
        at = now()
        attempt: dict[str, Any] = {
            "at": at,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "next_attempt_at": None,
        }
        fields: dict[str, Any] = {"lease_until": EPOCH_LEASE, "lease_owner": None}
        failures = len(doc.attempts) + 1
        retry_at = at + timedelta(seconds=next_delay(self.settings, failures))
        give_up = doc.created_at + timedelta(seconds=self.settings.notify_retry_for_s)
        error = outcome.error or f"HTTP {outcome.status_code}"
        if outcome.retry and retry_at <= give_up:
            self._wake_at(retry_at)
            attempt["next_attempt_at"] = retry_at
            fields |= {"status": "failed", "next_attempt_at": retry_at, "last_error": error}
        else:
            fields |= {"status": "dead", "last_error": error}
        await Delivery.get_pymongo_collection().update_one(
            {"_id": doc.id, "lease_owner": doc.lease_owner},
            {"$set": fields, "$push": {"attempts": attempt}},
        )
        log.info(
            "delivery %s (%s %s): %s, %s", doc.id, doc.channel, doc.type, fields["status"], error
        )
        return bool(fields["status"] == "dead")

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_S)
        await self.flush()

    async def flush(self) -> None:
        """Write the successes recorded since the last flush: one update per status code."""
        while self._delivered:
            done, self._delivered = self._delivered, []
            at = now()
            by_code: dict[int | None, list[Any]] = {}
            for doc, outcome in done:
                by_code.setdefault(outcome.status_code, []).append(doc.id)
            for code, ids in by_code.items():
                attempt = {"at": at, "status_code": code, "error": None, "next_attempt_at": None}
                try:
                    await Delivery.get_pymongo_collection().update_many(
                        {"_id": {"$in": ids}, "status": {"$in": list(CLAIMABLE)}},
                        {
                            "$set": {
                                "status": "delivered",
                                "delivered_at": at,
                                "last_error": None,
                                "lease_until": EPOCH_LEASE,
                                "lease_owner": None,
                            },
                            "$push": {"attempts": attempt},
                        },
                    )
                except PyMongoError:  # not recorded: they are sent again (at least once)
                    log.warning("outbox: %d deliveries sent but not recorded", len(ids))

    async def kill_target(self, target_id: ObjectId, reason: str) -> None:
        """Every unsent delivery to ``target_id`` is dead (its target is gone or disabled)."""
        await Delivery.get_pymongo_collection().update_many(
            {"target_id": target_id, "status": {"$in": list(CLAIMABLE)}},
            {"$set": {"status": "dead", "last_error": reason}},
        )


def outcome_label(outcome: Outcome) -> str:
    """``delivered``, ``failed`` (tried again later) or ``refused`` (dead at once); a retried
    failure that runs out of time is counted as failed."""
    if outcome.delivered:
        return "delivered"
    return "failed" if outcome.retry else "refused"
