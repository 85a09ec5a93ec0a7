"""PUBLISH pipelined on a connection of its own, against a real redis-server on loopback."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cloud.signaling.redis_publisher import Publisher, PublishFailed
from tests.servers import redis_server


async def received(redis: Redis, channel: str, count: int) -> AsyncIterator[list[str]]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    got: list[str] = []

    async def read() -> None:
        while len(got) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got.append(message["data"].decode())

    task = asyncio.create_task(read())
    yield got
    await asyncio.wait_for(task, 10)
    await pubsub.aclose()


async def test_concurrent_publishes_arrive_in_order_with_their_receiver_counts() -> None:
    with redis_server() as url:
        redis = Redis.from_url(url)
        publisher = Publisher(url, connect_timeout_s=2, reply_timeout_s=2)
        reader = received(redis, "ch", 500)
        got = await anext(reader)
        counts = await asyncio.gather(*(publisher.publish("ch", f"m{i}") for i in range(500)))
        assert counts == [1] * 500
        assert await publisher.publish("nobody-listens", "x") == 0
        with pytest.raises(StopAsyncIteration):
            await anext(reader)
        assert got == [f"m{i}" for i in range(500)]
        publisher.close()
        await redis.aclose()


async def test_a_password_in_the_url_is_sent_and_a_wrong_one_fails_clearly() -> None:
    with redis_server(password="s3cret-pw") as url:
        publisher = Publisher(url, connect_timeout_s=2, reply_timeout_s=2)
        assert await publisher.publish("ch", "x") == 0
        publisher.close()
        wrong = Publisher(url.replace("s3cret-pw", "wrong"), connect_timeout_s=2, reply_timeout_s=2)
        with pytest.raises(PublishFailed, match=r"WRONGPASS|invalid password"):
            await wrong.publish("ch", "x")
        wrong.close()


async def test_a_server_that_stops_answering_fails_every_waiting_publish_in_time() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # reads everything, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2, reply_timeout_s=0.5)
    started = time.monotonic()
    results = await asyncio.gather(
        *(publisher.publish("ch", "x") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, PublishFailed) for r in results), results
    assert time.monotonic() - started < 2
    server.close()
    await server.wait_closed()


async def test_after_a_redis_restart_the_next_publish_connects_again() -> None:
    with redis_server() as url:
        publisher = Publisher(url, connect_timeout_s=2, reply_timeout_s=2)
        assert await publisher.publish("ch", "x") == 0
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(PublishFailed):
        await publisher.publish("ch", "while down")
    with redis_server(port):
        assert await publisher.publish("ch", "x") == 0
        publisher.close()
