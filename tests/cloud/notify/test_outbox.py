"""The outbox itself, on the real database: claims, leases, retries per delivery, order,
idempotency. The app's own worker is paused so that only the outboxes made here claim."""

import asyncio
import dataclasses
import itertools
import secrets
from datetime import timedelta

from beanie import PydanticObjectId

from cloud.notify.models import Delivery, Notification
from cloud.notify.outbox import Outbox, Outcome, now
from cloud.settings import Settings


class Recorder:
    """A sender that records what it got (key, delivery index) and answers from a script
    per target (then: delivered)."""

    def __init__(
        self, script: dict[PydanticObjectId, list[Outcome]] | None = None, delay: float = 0.0
    ) -> None:
        self.sent: list[tuple[str, int, float]] = []
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.delay = delay

    async def __call__(self, notification: Notification, delivery: Delivery) -> Outcome:
        index = notification.deliveries.index(delivery)
        self.sent.append((notification.key, index, asyncio.get_running_loop().time()))
        if self.delay:
            await asyncio.sleep(self.delay)
        answers = self.script.get(delivery.target_id)
        return answers.pop(0) if answers else Outcome(True, status_code=200)

    def tries(self, key: str, index: int = 0) -> list[float]:
        return [t for k, i, t in self.sent if (k, i) == (key, index)]


def outbox(settings: Settings, sender: Recorder, **changes: object) -> Outbox:
    tuned = dataclasses.replace(settings, **{"notify_retry_schedule_s": (0.1,), **changes})  # type: ignore[arg-type]
    return Outbox(tuned, {"push": sender, "webhook": sender})


def notification(
    box: Outbox,
    key: str,
    targets: list[PydanticObjectId] | None = None,
    event: PydanticObjectId | None = None,
    type: str = "test",
    seq: int = 0,
) -> Notification:
    return box.new(
        key=key,
        channel="webhook",
        type=type,
        bodies=["{}"],
        deliveries=[
            Delivery(target_id=t, user_id=PydanticObjectId())
            for t in targets or [PydanticObjectId()]
        ],
        event_id=event,
        seq=seq,
    )


async def wait_settled(keys: list[str], timeout: float = 10.0) -> list[Notification]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        docs = await Notification.find({"key": {"$in": keys}}).sort("key").to_list()
        if len(docs) == len(keys) and all(d.status == "settled" for d in docs):
            return docs
        assert asyncio.get_running_loop().time() < deadline, [d.status for d in docs]
        await asyncio.sleep(0.05)


async def test_two_instances_never_send_the_same_delivery(settings: Settings, paused: None) -> None:
    one, two = Recorder(delay=0.05), Recorder(delay=0.05)
    a, b = outbox(settings, one), outbox(settings, two)
    tag = secrets.token_hex(4)
    keys = [f"{tag}-{i}" for i in range(100)]
    two_each = [PydanticObjectId(), PydanticObjectId()]
    added = await a.enqueue([notification(a, k, two_each) for k in keys])
    assert added == 200  # deliveries
    a.start()
    b.start()
    try:
        docs = await wait_settled(keys)
    finally:
        await a.stop()
        await b.stop()
    sent = [(k, i) for k, i, _ in one.sent + two.sent]
    assert sorted(sent) == sorted((k, i) for k in keys for i in (0, 1))  # once each
    assert one.sent
    assert two.sent
    assert all(d.status == "delivered" for doc in docs for d in doc.deliveries)
    assert all(d.attempts[0]["status_code"] == 200 for doc in docs for d in doc.deliveries)


async def test_enqueueing_is_idempotent_and_a_crashed_instances_lease_runs_out(
    settings: Settings, paused: None
) -> None:
    sender = Recorder()
    box = outbox(settings, sender)
    key = "lease-" + secrets.token_hex(4)
    assert await box.enqueue([notification(box, key)]) == 1
    assert await box.enqueue([notification(box, key), notification(box, key + "-b")]) == 1
    assert await box.enqueue([box.new(key=key + "-c", channel="push", type="test",
                                      bodies=[], deliveries=[])]) == 0  # fmt: skip
    claimed = await box.claim(10)  # an instance claims ... and dies
    assert key in [d.key for d in claimed]
    other = outbox(settings, Recorder())
    assert key not in [d.key for d in await other.claim(10)]  # leased: not claimable
    ran_out = now() - timedelta(seconds=1)  # the lease ran out (LEASE_S later)
    await Notification.get_pymongo_collection().update_one(
        {"key": key}, {"$set": {"lease_until": ran_out, "next_attempt_at": ran_out}}
    )
    box.start()
    try:
        [doc] = await wait_settled([key])
    finally:
        await box.stop()
    assert doc.deliveries[0].status == "delivered"
    assert len(sender.tries(key)) == 1


async def test_failures_are_retried_on_the_schedule_then_given_up_each_delivery_alone(
    settings: Settings, paused: None
) -> None:
    failing, fine = PydanticObjectId(), PydanticObjectId()
    sender = Recorder({failing: [Outcome(False, status_code=503)] * 100})
    box = outbox(settings, sender, notify_retry_schedule_s=(0.1, 0.3), notify_retry_for_s=1)
    key = "retry-" + secrets.token_hex(4)
    await box.enqueue([notification(box, key, [failing, fine])])
    box.start()
    try:
        [doc] = await wait_settled([key])
    finally:
        await box.stop()
    dead, delivered = doc.deliveries
    assert dead.status == "dead"
    assert dead.last_error == "HTTP 503"
    times = sender.tries(key, 0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 3 <= len(times) <= 6
    assert 0.08 <= gaps[0] < 0.3
    assert all(0.28 <= g < 0.6 for g in gaps[1:])
    assert all(a["status_code"] == 503 for a in dead.attempts)
    assert dead.attempts[-1]["next_attempt_at"] is None
    assert all(a["next_attempt_at"] for a in dead.attempts[:-1])
    # the other delivery of the notification went once, at the first round
    assert len(sender.tries(key, 1)) == 1
    assert delivered.status == "delivered"
    assert [a["status_code"] for a in delivered.attempts] == [200]
    # a refusal that will never succeed is dead at once
    never = PydanticObjectId()
    refused = Recorder({never: [Outcome(False, status_code=400, retry=False)]})
    box = outbox(settings, refused)
    await box.enqueue([notification(box, key + "-x", [never])])
    box.start()
    try:
        [doc] = await wait_settled([key + "-x"])
    finally:
        await box.stop()
    assert doc.deliveries[0].status == "dead"
    assert len(doc.deliveries[0].attempts) == 1


async def test_a_targets_later_notification_of_an_event_waits_for_the_earlier_one(
    settings: Settings, paused: None
) -> None:
    slow, quick = PydanticObjectId(), PydanticObjectId()
    sender = Recorder({slow: [Outcome(False, status_code=500), Outcome(False, status_code=500)]})
    box = outbox(settings, sender, notify_retry_schedule_s=(0.3,))
    event = PydanticObjectId()
    first, second = f"order-{event}-new", f"order-{event}-end"
    await box.enqueue(
        [
            notification(box, first, [slow, quick], event, "event.new", 1),
            notification(box, second, [slow, quick], event, "event.end", 2),
        ]
    )
    box.start()
    try:
        await wait_settled([first, second])
    finally:
        await box.stop()
    order = [(k, i) for k, i, _ in sender.sent]
    assert [k for k, i in order if i == 0] == [first, first, first, second]
    assert [k for k, i in order if i == 1] == [first, second]
    # the quick target did not wait for the slow one's retries
    assert sender.tries(second, 1)[0] < sender.tries(first, 0)[-1]


async def test_the_same_order_holds_for_notifications_claimed_from_the_database(
    settings: Settings, paused: None
) -> None:
    slow = PydanticObjectId()
    sender = Recorder({slow: [Outcome(False, status_code=500)]})
    box = outbox(settings, sender, notify_retry_schedule_s=(0.3,))
    event = PydanticObjectId()
    first, second = f"claimed-{event}-new", f"claimed-{event}-end"
    # stored while no worker runs: claimed, not sent from memory
    await box.enqueue([notification(box, first, [slow], event, "event.new", 1)])
    await box.enqueue([notification(box, second, [slow], event, "event.end", 2)])
    other = outbox(settings, sender, notify_retry_schedule_s=(0.3,))
    box.start()
    other.start()
    try:
        await wait_settled([first, second])
    finally:
        await box.stop()
        await other.stop()
    assert [k for k, _, _ in sender.sent] == [first, first, second]


async def test_a_killed_target_is_not_sent_and_its_notification_settles(
    settings: Settings, paused: None
) -> None:
    gone, kept = PydanticObjectId(), PydanticObjectId()
    sender = Recorder()
    box = outbox(settings, sender)
    key = "kill-" + secrets.token_hex(4)
    await box.enqueue([notification(box, key, [gone, kept])])
    await box.kill_target(gone, "the webhook was deleted")
    box.start()
    try:
        [doc] = await wait_settled([key])
    finally:
        await box.stop()
    assert [(k, i) for k, i, _ in sender.sent] == [(key, 1)]
    assert doc.deliveries[0].status == "dead"
    assert doc.deliveries[0].last_error == "the webhook was deleted"
    assert doc.deliveries[0].attempts == []


async def test_a_stopping_instance_gives_back_what_it_held(
    settings: Settings, paused: None
) -> None:
    box = outbox(settings, Recorder(delay=30))  # sends that never finish in time
    key = "held-" + secrets.token_hex(4)
    await box.enqueue([notification(box, key)])
    box.start()
    deadline = asyncio.get_running_loop().time() + 5
    while not (doc := await Notification.find_one(Notification.key == key)) or not doc.lease_owner:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    await box.stop()
    other = outbox(settings, Recorder())
    assert key in [d.key for d in await other.claim(100)]  # at once, not in LEASE_S
