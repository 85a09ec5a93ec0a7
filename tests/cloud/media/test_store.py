"""One contract for both stores: MemoryMediaStore and GridFSMediaStore on SecantusDB."""

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from cloud.media.store import GridFSMediaStore, MediaStore, MemoryMediaStore, MissingFile

CHUNK = 255 * 1024


@dataclass
class Subject:
    store: MediaStore
    stored_bytes: Callable[[], Awaitable[int]]  # every byte the store keeps, whatever file


@pytest.fixture(params=["memory", "gridfs"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        memory = MemoryMediaStore()

        async def held() -> int:
            return sum(len(data) for data in memory.files.values())

        yield Subject(memory, held)
        return
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        request.getfixturevalue("mongodb_url"), tz_aware=True
    )
    database = client["store_" + secrets.token_hex(4)]

    async def kept() -> int:
        total = 0
        async for chunk in database["media.chunks"].find({}, {"data": 1}):
            total += len(chunk["data"])
        return total + await database["media.files"].count_documents({})

    yield Subject(GridFSMediaStore(database), kept)
    await client.drop_database(database.name)
    await client.close()


async def pieces(data: bytes, size: int = 70_000) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read_all(
    store: MediaStore, file_id: ObjectId, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in await store.read(file_id, start, end)])


async def test_a_file_put_in_pieces_reads_back_whole_with_its_size(subject: Subject) -> None:
    data = os.urandom(3 * CHUNK + 1234)
    stored = await subject.store.put(pieces(data), filename="clip")
    assert stored.size == len(data)
    assert await read_all(subject.store, stored.file_id) == data


async def test_a_range_reads_exactly_its_bytes_across_chunk_boundaries(subject: Subject) -> None:
    data = os.urandom(3 * CHUNK + 1234)
    stored = await subject.store.put(pieces(data), filename="clip")
    for start, end in [
        (0, 1),
        (0, 100),
        (CHUNK - 10, CHUNK + 10),
        (CHUNK, 2 * CHUNK),
        (12345, 3 * CHUNK + 5),
        (len(data) - 7, len(data)),
        (5, 5),
    ]:
        assert await read_all(subject.store, stored.file_id, start, end) == data[start:end]
    assert await read_all(subject.store, stored.file_id, len(data) - 3) == data[-3:]


async def test_a_range_past_the_end_is_clamped_to_the_file(subject: Subject) -> None:
    stored = await subject.store.put(pieces(b"0123456789"), filename="x")
    assert await read_all(subject.store, stored.file_id, 8, 1000) == b"89"
    assert await read_all(subject.store, stored.file_id, 50, 60) == b""


async def test_an_empty_body_is_an_empty_file(subject: Subject) -> None:
    stored = await subject.store.put(pieces(b""), filename="empty")
    assert stored.size == 0
    assert await read_all(subject.store, stored.file_id) == b""


async def test_a_deleted_file_is_missing_and_deleting_again_says_so(subject: Subject) -> None:
    data = os.urandom(2 * CHUNK)
    stored = await subject.store.put(pieces(data), filename="clip")
    other = await subject.store.put(pieces(b"keep me"), filename="other")
    assert await subject.store.delete(stored.file_id) is True
    with pytest.raises(MissingFile):
        await subject.store.read(stored.file_id)
    assert await subject.store.delete(stored.file_id) is False
    assert await read_all(subject.store, other.file_id) == b"keep me"
    assert await subject.stored_bytes() == len(b"keep me") + (
        1 if isinstance(subject.store, GridFSMediaStore) else 0
    )


async def test_reading_an_unknown_file_raises_before_any_byte(subject: Subject) -> None:
    with pytest.raises(MissingFile):
        await subject.store.read(ObjectId())


async def test_a_body_that_fails_midway_leaves_nothing_behind(subject: Subject) -> None:
    before = await subject.stored_bytes()

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield os.urandom(CHUNK)  # several whole chunks are written before it fails
        raise ValueError("client went away")

    with pytest.raises(ValueError, match="client went away"):
        await subject.store.put(failing(), filename="broken")
    assert await subject.stored_bytes() == before


async def test_a_cancelled_put_leaves_nothing_behind(subject: Subject) -> None:
    before = await subject.stored_bytes()
    sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(CHUNK)
        sent.set()
        await asyncio.Event().wait()
        yield b""  # never reached

    task = asyncio.create_task(subject.store.put(endless(), filename="stalled"))
    async with asyncio.timeout(10):
        await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await subject.stored_bytes() == before


async def test_gridfs_writes_chunks_as_they_arrive_not_the_whole_file_at_the_end(
    mongodb_url: str,
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    database = client["store_" + secrets.token_hex(4)]
    store = GridFSMediaStore(database)
    seen_while_sending: list[tuple[int, int]] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield os.urandom(CHUNK)
            seen_while_sending.append(
                (
                    await database["media.chunks"].count_documents({}),
                    await database["media.files"].count_documents({}),
                )
            )

    try:
        stored = await store.put(body(), filename="big")
        assert stored.size == 6 * CHUNK
        # Each chunk is in the database as soon as it is full, and the file appears only
        # when the last one is.
        assert seen_while_sending == [(n, 0) for n in range(1, 7)]
        assert await database["media.files"].count_documents({"_id": stored.file_id}) == 1
    finally:
        await client.drop_database(database.name)
        await client.close()


async def test_files_before_lists_the_files_whose_put_began_before_a_time(
    subject: Subject,
) -> None:
    a = await subject.store.put(pieces(b"a"), filename="a")
    b = await subject.store.put(pieces(b"b"), filename="b")
    later = datetime.now(UTC) + timedelta(seconds=2)  # ObjectIds count whole seconds
    listed = [file_id async for file_id in subject.store.files_before(later)]
    assert {a.file_id, b.file_id} <= set(listed)
    earlier = datetime.now(UTC) - timedelta(hours=1)
    assert [file_id async for file_id in subject.store.files_before(earlier)] == []


async def test_removing_unfinished_files_keeps_every_finished_one(subject: Subject) -> None:
    kept = await subject.store.put(pieces(os.urandom(2 * CHUNK)), filename="kept")
    held = await subject.stored_bytes()
    assert await subject.store.remove_unfinished(datetime.now(UTC) + timedelta(seconds=2)) == 0
    assert await subject.stored_bytes() == held
    assert len(await read_all(subject.store, kept.file_id)) == 2 * CHUNK


async def test_gridfs_removes_the_chunks_a_dead_process_left_of_an_unfinished_file(
    mongodb_url: str,
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    database = client["store_" + secrets.token_hex(4)]
    store = GridFSMediaStore(database)
    try:
        finished = await store.put(pieces(os.urandom(CHUNK + 10)), filename="done")
        old = ObjectId.from_datetime(datetime.now(UTC) - timedelta(days=2))
        recent = ObjectId()
        for files_id in (old, recent):  # what a process killed mid-put leaves: chunks only
            await database["media.chunks"].insert_many(
                [{"files_id": files_id, "n": n, "data": os.urandom(100)} for n in range(3)]
            )
        cutoff = datetime.now(UTC) - timedelta(days=1)
        assert await store.remove_unfinished(cutoff) == 1
        assert await database["media.chunks"].count_documents({"files_id": old}) == 0
        assert await database["media.chunks"].count_documents({"files_id": recent}) == 3
        assert await store.remove_unfinished(datetime.now(UTC) + timedelta(seconds=2)) == 1
        assert await database["media.chunks"].count_documents({"files_id": recent}) == 0
        assert await database["media.chunks"].count_documents({"files_id": finished.file_id}) == 2
    finally:
        await client.drop_database(database.name)
        await client.close()
