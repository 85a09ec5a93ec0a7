"""The outbox itself, on the real database: claims, leases, retries, order, idempotency.
The app's own worker is paused so that only the outboxes made here claim."""

import asyncio
import dataclasses
import itertools
import secrets
from datetime import timedelta

from beanie import PydanticObjectId

from cloud.notify.models import Delivery
from cloud.notify.outbox import Outbox, Outcome, next_delay, now
from cloud.settings import Settings


class Recorder:
    """A sender that records what it got and answers from a script (then: delivered)."""

    def __init__(self, script: list[Outcome] | None = None, delay: float = 0.0) -> None:
        self.sent: list[tuple[str, float]] = []
        self.script = list(script or [])
        self.delay = delay

    async def __call__(self, delivery: Delivery) -> Outcome:
        self.sent.append((delivery.key, asyncio.get_running_loop().time()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.script.pop(0) if self.script else Outcome(True, status_code=200)


def outbox(settings: Settings, sender: Recorder, **changes: object) -> Outbox:
    tuned = dataclasses.replace(settings, **{"notify_retry_schedule_s": (0.1,), **changes})  # type: ignore[arg-type]
    return Outbox(tuned, {"push": sender, "webhook": sender})


def delivery(box: Outbox, key: str, group: str | None = None, seq: int = 0) -> Delivery:
    return box.new(
        key=key,
        channel="webhook",
        target_id=PydanticObjectId(),
        user_id=PydanticObjectId(),
        type="test",
        group=group or key,
        seq=seq,
        payload="{}",
    )


async def wait_settled(keys: list[str], timeout: float = 10.0) -> list[Delivery]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        docs = await Delivery.find({"key": {"$in": keys}}).to_list()
        if len(docs) == len(keys) and all(d.status in ("delivered", "dead") for d in docs):
            return docs
        assert asyncio.get_running_loop().time() < deadline, [d.status for d in docs]
        await asyncio.sleep(0.05)


async def test_two_instances_never_send_the_same_delivery(settings: Settings, paused: None) -> None:
    one, two = Recorder(delay=0.05), Recorder(delay=0.05)
    a, b = outbox(settings, one), outbox(settings, two)
    tag = secrets.token_hex(4)
    keys = [f"{tag}-{i}" for i in range(200)]
    assert await a.enqueue([delivery(a, k) for k in keys]) == 200
    a.start()
    b.start()
    try:
        await wait_settled(keys)
    finally:
        await a.stop()
        await b.stop()
    sent = [k for k, _ in one.sent + two.sent]
    assert sorted(sent) == sorted(keys)  # each exactly once, across both
    assert one.sent
    assert two.sent


async def test_enqueueing_is_idempotent_and_a_crashed_instances_lease_runs_out(
    settings: Settings, paused: None
) -> None:
    sender = Recorder()
    box = outbox(settings, sender)
    key = "lease-" + secrets.token_hex(4)
    assert await box.enqueue([delivery(box, key)]) == 1
    assert await box.enqueue([delivery(box, key), delivery(box, key + "-b")]) == 1
    claimed = await box.claim(10)  # an instance claims ... and dies
    assert key in [d.key for d in claimed]
    other = outbox(settings, Recorder())
    assert key not in [d.key for d in await other.claim(10)]  # leased: not claimable
    await Delivery.get_pymongo_collection().update_one(
        {"key": key}, {"$set": {"lease_until": now() - timedelta(seconds=1)}}
    )  # the lease ran out (LEASE_S later)
    box.start()
    try:
        [doc] = await wait_settled([key])
    finally:
        await box.stop()
    assert doc.status == "delivered"
    assert [k for k, _ in sender.sent].count(key) == 1


async def test_failures_are_retried_on_the_schedule_then_given_up(
    settings: Settings, paused: None
) -> None:
    sender = Recorder([Outcome(False, status_code=503)] * 100)
    box = outbox(settings, sender, notify_retry_schedule_s=(0.1, 0.3), notify_retry_for_s=1)
    key = "retry-" + secrets.token_hex(4)
    await box.enqueue([delivery(box, key)])
    box.start()
    try:
        [doc] = await wait_settled([key])
    finally:
        await box.stop()
    assert doc.status == "dead"
    assert doc.last_error == "HTTP 503"
    times = [t for k, t in sender.sent if k == key]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 3 <= len(times) <= 6
    assert 0.08 <= gaps[0] < 0.3
    assert all(0.28 <= g < 0.6 for g in gaps[1:])
    assert all(a["status_code"] == 503 for a in doc.attempts)
    assert doc.attempts[-1]["next_attempt_at"] is None
    # a refusal that will never succeed is dead at once
    refused = Recorder([Outcome(False, status_code=400, retry=False)])
    box = outbox(settings, refused)
    await box.enqueue([delivery(box, key + "-x")])
    box.start()
    try:
        [doc] = await wait_settled([key + "-x"])
    finally:
        await box.stop()
    assert doc.status == "dead"
    assert len(doc.attempts) == 1


async def test_a_later_delivery_of_a_group_waits_for_the_earlier_one(
    settings: Settings, paused: None
) -> None:
    sender = Recorder([Outcome(False, status_code=500), Outcome(False, status_code=500)])
    box = outbox(settings, sender, notify_retry_schedule_s=(0.3,))
    group = "order-" + secrets.token_hex(4)
    first, second = f"{group}-new", f"{group}-end"
    await box.enqueue([delivery(box, first, group, 1), delivery(box, second, group, 2)])
    box.start()
    try:
        await wait_settled([first, second])
    finally:
        await box.stop()
    order = [k for k, _ in sender.sent if k.startswith(group)]
    assert order == [first, first, first, second]


def test_the_schedule_repeats_its_last_step() -> None:
    s = dataclasses.replace(Settings(), notify_retry_schedule_s=(1, 5, 30))
    assert [next_delay(s, n) for n in range(1, 6)] == [1, 5, 30, 30, 30]


async def test_a_stopping_instance_gives_back_what_it_held(
    settings: Settings, paused: None
) -> None:
    box = outbox(settings, Recorder(delay=30))  # sends that never finish in time
    key = "held-" + secrets.token_hex(4)
    await box.enqueue([delivery(box, key)])
    box.start()
    deadline = asyncio.get_running_loop().time() + 5
    while not (doc := await Delivery.find_one(Delivery.key == key)) or not doc.lease_owner:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    await box.stop()
    other = outbox(settings, Recorder())
    assert key in [d.key for d in await other.claim(100)]  # at once, not in LEASE_S
