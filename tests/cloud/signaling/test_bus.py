"""One contract for both buses: MemoryBus and RedisBus on a real redis-server.

Then what only Redis can do: several instances on one server, and surviving its restart.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack

import pytest

from cloud.signaling.bus import Bus, BusUnavailable, MemoryBus, Message
from cloud.signaling.redis_bus import RedisBus
from tests.servers import free_port, redis_server

Inbox = asyncio.Queue[Message]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """A running bus; on Redis under a name of its own, so tests share nothing."""
    name = "t" + secrets.token_hex(4)
    created: Bus
    if request.param == "memory":
        created = MemoryBus(name)
    else:
        created = RedisBus(request.getfixturevalue("redis_url"), name=name)
    await created.start()
    yield created
    await created.close()


@pytest.fixture
async def peer(bus: Bus, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """Another instance on the same bus; the in-memory bus serves one instance: itself."""
    if not isinstance(bus, RedisBus):
        yield bus
        return
    other = RedisBus(request.getfixturevalue("redis_url"), name=bus.name)
    await other.start()
    yield other
    await other.close()


async def receive(inbox: Inbox, within_s: float = 5) -> Message:
    async with asyncio.timeout(within_s):
        return await inbox.get()


async def test_a_running_bus_answers_ping(bus: Bus) -> None:
    assert await bus.ping()


async def test_a_published_message_reaches_the_handler_of_its_channel(bus: Bus) -> None:
    inbox: Inbox = asyncio.Queue()
    await bus.subscribe("device:cam-1", inbox.put)
    assert await bus.publish("device:cam-1", {"type": "offer", "sdp": "v=0"}) == 1
    assert await receive(inbox) == {"type": "offer", "sdp": "v=0"}


async def test_a_thousand_messages_on_one_channel_arrive_in_publish_order(bus: Bus) -> None:
    inbox: Inbox = asyncio.Queue()
    await bus.subscribe("device:cam-1", inbox.put)
    for n in range(1000):
        await bus.publish("device:cam-1", {"n": n})
    assert [(await receive(inbox))["n"] for _ in range(1000)] == list(range(1000))


async def test_publishing_to_a_channel_nobody_holds_returns_zero(bus: Bus) -> None:
    assert await bus.publish("device:nobody", {"type": "offer"}) == 0


async def test_a_message_from_one_instance_reaches_a_subscriber_on_another(
    bus: Bus, peer: Bus
) -> None:
    inbox: Inbox = asyncio.Queue()
    await peer.subscribe("device:cam-2", inbox.put)
    assert await bus.publish("device:cam-2", {"type": "answer"}) == 1
    assert await receive(inbox) == {"type": "answer"}


async def test_unsubscribe_stops_delivery(bus: Bus) -> None:
    inbox: Inbox = asyncio.Queue()
    await bus.subscribe("device:cam-3", inbox.put)
    assert await bus.publish("device:cam-3", {"n": 1}) == 1
    await receive(inbox)
    await bus.unsubscribe("device:cam-3")
    assert await bus.publish("device:cam-3", {"n": 2}) == 0
    await asyncio.sleep(0.2)
    assert inbox.empty()


async def test_a_handler_may_unsubscribe_its_own_channel(bus: Bus) -> None:
    seen: Inbox = asyncio.Queue()

    async def once(message: Message) -> None:
        await bus.unsubscribe("device:cam-4")
        await seen.put(message)

    await bus.subscribe("device:cam-4", once)
    await bus.publish("device:cam-4", {"n": 1})
    assert await receive(seen) == {"n": 1}
    assert await bus.publish("device:cam-4", {"n": 2}) == 0


async def test_subscribing_again_replaces_the_handler(bus: Bus) -> None:
    first: Inbox = asyncio.Queue()
    second: Inbox = asyncio.Queue()
    await bus.subscribe("device:cam-5", first.put)
    await bus.subscribe("device:cam-5", second.put)
    assert await bus.publish("device:cam-5", {"n": 1}) == 1
    assert await receive(second) == {"n": 1}
    assert first.empty()


async def test_a_handler_that_raises_does_not_stop_later_deliveries(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    inbox: Inbox = asyncio.Queue()

    async def fragile(message: Message) -> None:
        if message["n"] == 1:
            raise RuntimeError("boom")
        await inbox.put(message)

    await bus.subscribe("device:cam-6", fragile)
    await bus.publish("device:cam-6", {"n": 1})
    await bus.publish("device:cam-6", {"n": 2})
    assert await receive(inbox) == {"n": 2}
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_slow_handler_blocks_neither_publish_nor_other_channels(bus: Bus) -> None:
    release = asyncio.Event()
    inbox: Inbox = asyncio.Queue()

    async def slow(message: Message) -> None:
        async with asyncio.timeout(5):
            await release.wait()

    await bus.subscribe("device:slow", slow)
    await bus.subscribe("device:fast", inbox.put)
    async with asyncio.timeout(2):
        for n in range(100):
            await bus.publish("device:slow", {"n": n})
    await bus.publish("device:fast", {"n": 0})
    assert await receive(inbox, within_s=2) == {"n": 0}
    release.set()


async def test_presence_names_the_holder_until_it_expires(bus: Bus) -> None:
    await bus.set_presence("cam-a", "conn-1", ttl_s=0.3)
    assert await bus.presence(["cam-a", "cam-b"]) == {"cam-a": "conn-1", "cam-b": None}
    await asyncio.sleep(0.45)
    assert await bus.presence(["cam-a"]) == {"cam-a": None}
    assert await bus.presence([]) == {}


async def test_refreshing_presence_keeps_it_beyond_its_first_expiry(bus: Bus) -> None:
    await bus.set_presence("cam-a", "conn-1", ttl_s=0.4)
    await asyncio.sleep(0.25)
    await bus.set_presence("cam-a", "conn-1", ttl_s=0.4)
    await asyncio.sleep(0.25)
    assert await bus.presence(["cam-a"]) == {"cam-a": "conn-1"}


async def test_presence_is_cleared_only_by_its_holder(bus: Bus) -> None:
    await bus.set_presence("cam-a", "conn-1", ttl_s=5)
    await bus.set_presence("cam-a", "conn-2", ttl_s=5)  # a new connection takes over
    assert await bus.clear_presence("cam-a", "conn-1") is False
    assert await bus.presence(["cam-a"]) == {"cam-a": "conn-2"}
    assert await bus.clear_presence("cam-a", "conn-2") is True
    assert await bus.presence(["cam-a"]) == {"cam-a": None}
    assert await bus.clear_presence("cam-a", "conn-2") is False


async def test_each_expired_presence_goes_to_exactly_one_of_two_concurrent_claimers(
    bus: Bus, peer: Bus
) -> None:
    expired = [f"cam-{n}" for n in range(60)]
    for device in [*expired, "cam-refreshed", "cam-cleared"]:
        await bus.set_presence(device, "conn-1", ttl_s=0.2)
    await bus.set_presence("cam-live", "conn-1", ttl_s=5)
    assert await bus.clear_presence("cam-cleared", "conn-1")
    await asyncio.sleep(0.35)
    await peer.set_presence("cam-refreshed", "conn-2", ttl_s=5)  # set again after expiring

    async def drain(claimer: Bus) -> list[str]:
        claimed: list[str] = []
        while batch := await claimer.claim_expired_presence(limit=7):
            claimed += batch
        return claimed

    first, second = await asyncio.gather(drain(bus), drain(peer))
    assert sorted(first + second) == sorted(expired)
    assert not set(first) & set(second)
    assert await bus.claim_expired_presence() == []
    assert await bus.presence(["cam-refreshed", "cam-live"]) == {
        "cam-refreshed": "conn-2",
        "cam-live": "conn-1",
    }


async def test_claim_once_is_true_once_within_its_ttl_and_again_after_it(
    bus: Bus, peer: Bus
) -> None:
    key = "jti:" + secrets.token_hex(8)
    assert await bus.claim_once(key, ttl_s=0.3) is True
    assert await peer.claim_once(key, ttl_s=0.3) is False
    assert await bus.claim_once(key, ttl_s=0.3) is False
    await asyncio.sleep(0.45)
    assert await peer.claim_once(key, ttl_s=0.3) is True


async def test_a_closed_bus_is_unavailable_and_closing_twice_is_harmless(bus: Bus) -> None:
    await bus.close()
    assert not await bus.ping()
    with pytest.raises(BusUnavailable):
        await bus.publish("device:cam-1", {})
    with pytest.raises(BusUnavailable):
        await bus.subscribe("device:cam-1", asyncio.Queue[Message]().put)
    with pytest.raises(BusUnavailable):
        await bus.set_presence("cam-a", "conn-1", ttl_s=5)
    await bus.close()


# Redis only ---------------------------------------------------------------------------------


async def started(stack: AsyncExitStack, url: str, name: str) -> RedisBus:
    bus = RedisBus(url, name=name)
    await bus.start()
    stack.push_async_callback(bus.close)
    return bus


async def test_every_redis_instance_holding_a_channel_is_counted_and_served(
    redis_url: str,
) -> None:
    name = "t" + secrets.token_hex(4)
    async with AsyncExitStack() as stack:
        a, b = await started(stack, redis_url, name), await started(stack, redis_url, name)
        inbox_a: Inbox = asyncio.Queue()
        inbox_b: Inbox = asyncio.Queue()
        await a.subscribe("viewer:v-1", inbox_a.put)
        await b.subscribe("viewer:v-1", inbox_b.put)
        assert await a.publish("viewer:v-1", {"n": 1}) == 2
        assert await receive(inbox_a) == await receive(inbox_b) == {"n": 1}


async def test_calls_during_a_redis_outage_raise_bus_unavailable_promptly() -> None:
    with ExitStack() as server:
        url = server.enter_context(redis_server())
        async with AsyncExitStack() as stack:
            bus = await started(stack, url, "t" + secrets.token_hex(4))
            server.close()  # redis-server stopped
            calls = [
                lambda: bus.publish("device:cam-1", {"type": "offer"}),
                lambda: bus.set_presence("cam-1", "conn-1", ttl_s=5),
                lambda: bus.claim_once("jti:1", ttl_s=5),
                lambda: bus.subscribe("device:cam-9", asyncio.Queue[Message]().put),
            ]
            for call in calls:
                began = time.monotonic()
                with pytest.raises(BusUnavailable):
                    await call()
                assert time.monotonic() - began < 3
            assert not await bus.ping()


async def test_subscriptions_come_back_by_themselves_after_redis_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, name = free_port(), "t" + secrets.token_hex(4)
    inbox: Inbox = asyncio.Queue()
    with ExitStack() as first_server:
        url = first_server.enter_context(redis_server(port))
        async with AsyncExitStack() as stack:
            subscriber, publisher = await started(stack, url, name), await started(stack, url, name)
            await subscriber.subscribe("device:cam-r", inbox.put)
            assert await publisher.publish("device:cam-r", {"n": 0}) == 1
            assert await receive(inbox) == {"n": 0}

            with caplog.at_level(logging.INFO, logger="cloud.signaling.redis_bus"):
                first_server.close()
                with pytest.raises(BusUnavailable):
                    await publisher.publish("device:cam-r", {"n": -1})
                with redis_server(port):  # a new process where the old one was
                    deadline = time.monotonic() + 5
                    n = 0
                    while True:
                        n += 1
                        try:
                            if await publisher.publish("device:cam-r", {"n": n}) == 1:
                                break
                        except BusUnavailable:
                            pass
                        assert time.monotonic() < deadline, "the subscription did not come back"
                        await asyncio.sleep(0.05)
                    assert await receive(inbox) == {"n": n}
                    assert await subscriber.ping()
                    await subscriber.set_presence("cam-r", "conn-1", ttl_s=5)
                    assert await publisher.presence(["cam-r"]) == {"cam-r": "conn-1"}
    assert any("subscriber back" in r.getMessage() for r in caplog.records)


async def test_a_bus_started_while_redis_is_down_connects_when_redis_comes_up() -> None:
    port = free_port()
    async with AsyncExitStack() as stack:
        bus = await started(stack, f"redis://127.0.0.1:{port}/0", "t" + secrets.token_hex(4))
        assert not await bus.ping()
        with redis_server(port):
            deadline = time.monotonic() + 5
            while not await bus.ping():
                assert time.monotonic() < deadline, "the bus never connected"
                await asyncio.sleep(0.05)
            inbox: Inbox = asyncio.Queue()
            await bus.subscribe("device:cam-1", inbox.put)
            assert await bus.publish("device:cam-1", {"n": 1}) == 1
            assert await receive(inbox) == {"n": 1}


async def test_a_redis_restart_is_reported_when_lost_and_once_every_channel_is_held_again() -> None:
    """What was published in the gap is lost (at most once), but never silently: the gap
    listener hears of the loss at once, and again, with the same moment, when the channels
    are held again: from then on a publish reaches them."""
    port, name = free_port(), "t" + secrets.token_hex(4)
    inbox: Inbox = asyncio.Queue()
    gaps: asyncio.Queue[tuple[float, bool, int]] = asyncio.Queue()
    with ExitStack() as first_server:
        url = first_server.enter_context(redis_server(port))
        async with AsyncExitStack() as stack:
            subscriber, publisher = await started(stack, url, name), await started(stack, url, name)

            async def on_gap(lost_at: float, held: bool) -> None:
                # Held again when told so: a publish now reaches the subscriber.
                receivers = await publisher.publish("device:cam-g", {"n": 1}) if held else -1
                await gaps.put((lost_at, held, receivers))

            subscriber.on_gap(on_gap)
            await subscriber.subscribe("device:cam-g", inbox.put)
            before = time.monotonic()
            first_server.close()
            lost_at, held, _ = await asyncio.wait_for(gaps.get(), 15)
            assert before <= lost_at <= time.monotonic()
            assert held is False
            with pytest.raises(BusUnavailable):
                await publisher.publish("device:cam-g", {"n": 0})  # lost in the gap
            with redis_server(port):
                assert await asyncio.wait_for(gaps.get(), 15) == (lost_at, True, 1)
                assert await receive(inbox) == {"n": 1}
                assert gaps.empty()


async def test_a_bus_that_never_had_its_subscription_reports_no_gap() -> None:
    port = free_port()
    gaps: list[float] = []

    async def on_gap(lost_at: float, held: bool) -> None:
        gaps.append(lost_at)

    async with AsyncExitStack() as stack:
        bus = await started(stack, f"redis://127.0.0.1:{port}/0", "t" + secrets.token_hex(4))
        bus.on_gap(on_gap)
        with redis_server(port):
            inbox: Inbox = asyncio.Queue()
            deadline = time.monotonic() + 5
            while not await bus.ping():
                assert time.monotonic() < deadline, "the bus never connected"
                await asyncio.sleep(0.05)
            await bus.subscribe("device:cam-1", inbox.put)
            assert await bus.publish("device:cam-1", {"n": 1}) == 1
            assert await receive(inbox) == {"n": 1}
    assert gaps == []
