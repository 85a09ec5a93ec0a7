"""Group commit: concurrent callers share queries, never a query older than their call."""

import asyncio

import pytest

from cloud.signaling.group_commit import GroupCommit


class Squares:
    """A query that records each call and can be held open."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.calls: list[list[int]] = []
        self.missing = missing
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self, keys: list[int]) -> dict[int, int]:
        self.calls.append(keys)
        fail, self.fail = self.fail, None  # this call fails, the next one not
        if self.gate is not None:
            await self.gate.wait()
        if fail is not None:
            raise fail
        return {k: k * k for k in keys if k not in self.missing}


async def test_callers_of_one_moment_share_one_query_and_a_missing_key_is_none() -> None:
    query = Squares(missing=frozenset({3}))
    group = GroupCommit(query, "test", limit=10)
    assert await asyncio.gather(*(group(k) for k in (1, 2, 3, 2))) == [1, 4, None, 4]
    assert query.calls == [[1, 2, 3]]
    assert group.waiting == 0


async def test_callers_arriving_during_a_query_go_in_the_next_one() -> None:
    query = Squares()
    query.gate = asyncio.Event()
    group = GroupCommit(query, "test", limit=10)
    first = asyncio.create_task(group(1))
    await asyncio.sleep(0.01)
    assert query.calls == [[1]]  # on its way
    later = [asyncio.create_task(group(k)) for k in (1, 5, 6)]
    await asyncio.sleep(0.01)
    assert query.calls == [[1]]  # they wait: key 1 too, it asked after the query began
    query.gate.set()
    assert await first == 1
    assert [await t for t in later] == [1, 25, 36]
    assert query.calls == [[1], [1, 5, 6]]


async def test_a_query_takes_at_most_limit_keys() -> None:
    query = Squares()
    group = GroupCommit(query, "test", limit=3)
    assert await asyncio.gather(*(group(k) for k in range(7))) == [k * k for k in range(7)]
    assert query.calls == [[0, 1, 2], [3, 4, 5], [6]]


async def test_the_latest_caller_of_a_key_supersedes_an_earlier_one_still_waiting() -> None:
    query = Squares()
    group = GroupCommit(query, "test", limit=10)
    earlier = asyncio.create_task(group(7, latest=True))
    later = asyncio.create_task(group(7, latest=True))
    assert await earlier is None
    assert await later == 49
    assert query.calls == [[7]]


async def test_a_failed_query_fails_its_callers_and_the_next_query_runs() -> None:
    query = Squares()
    query.gate = asyncio.Event()
    query.fail = ConnectionError("database away")
    group = GroupCommit(query, "test", limit=10)
    failing = [asyncio.create_task(group(k)) for k in (1, 2)]
    await asyncio.sleep(0.01)
    after = asyncio.create_task(group(3))
    await asyncio.sleep(0.01)
    query.gate.set()
    for task in failing:
        with pytest.raises(ConnectionError, match="database away"):
            await task
    assert await after == 9
    assert query.calls == [[1, 2], [3]]


async def test_a_key_whose_callers_all_left_is_not_asked_for() -> None:
    query = Squares()
    query.gate = asyncio.Event()
    group = GroupCommit(query, "test", limit=10)
    first = asyncio.create_task(group(1))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(group(2))
    stays = asyncio.create_task(group(3))
    await asyncio.sleep(0.01)
    gone.cancel()
    query.gate.set()
    assert (await first, await stays) == (1, 9)
    assert query.calls == [[1], [3]]


async def test_closing_cancels_the_query_and_its_callers() -> None:
    query = Squares()
    query.gate = asyncio.Event()
    group = GroupCommit(query, "test", limit=10)
    waiting = [asyncio.create_task(group(k)) for k in (1, 2)]
    await asyncio.sleep(0.01)
    await group.close()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert group.waiting == 0
    query.gate.set()
    assert await group(4) == 16  # usable again
