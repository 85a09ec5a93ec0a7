"""Where media bytes live: a small interface, GridFS behind it, and its in-memory twin.

The contract (``tests/cloud/media/test_store.py`` runs it on both implementations):

- ``put(chunks)`` consumes an async iterable of byte chunks into one new file and returns
  its id and size. The bytes are never held whole: each 255 KiB chunk is written as it
  fills. If the iterable raises (the caller's size cap, a client that went away) or the
  task is cancelled, the partial file is removed and the exception propagates: nothing is
  left behind.
- ``read(file_id, start, end)`` opens the file (``MissingFile`` from the ``await``, before
  any byte) and returns an async iterator over bytes ``[start, end)``, clamped to the file.
- ``delete(file_id)`` removes a file and all its chunks; ``False`` if there was none. A
  file deleted while being read ends that read early (its reader sees a short body and
  asks again).
- ``files_before(t)`` lists the files whose ``put`` began before ``t``, and
  ``remove_unfinished(t)`` removes what a ``put`` begun before ``t`` left when its process
  died mid-way (it could not clean up): the sweeper's tools against leftovers of crashes.

Files are immutable. Replacing content is: put a new file, point the document at it,
delete the old one (``cloud/media/catalog.py``).

Trade-off: GridFS keeps the bytes in the database the documents live in, so there is no
second service to run, secure or back up, and ``make run`` needs nothing; the price is
database size and I/O that an object store would take more cheaply at scale. The
interface is three calls so that an S3 implementation can sit beside this one. A range
read seeks to the chunk holding ``start`` (GridFS addresses chunks by number), so any
offset costs one chunk read, not a scan.
"""

import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bson import Binary, Int64, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import CorruptGridFile, NoFile
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger(__name__)

BUCKET = "media"
CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size


class MissingFile(LookupError):
    """There is no file with this id (never stored, or deleted)."""


@dataclass(frozen=True)
class StoredFile:
    file_id: ObjectId
    size: int


class MediaStore(Protocol):
    async def put(
        self,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoredFile: ...

    async def read(
        self, file_id: ObjectId, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]: ...

    async def delete(self, file_id: ObjectId) -> bool: ...

    def files_before(self, before: datetime) -> AsyncIterator[ObjectId]: ...

    async def remove_unfinished(self, before: datetime) -> int: ...


class GridFSMediaStore:
    """Files in the GridFS bucket ``media`` (collections ``media.files``, ``media.chunks``).

    Reads and deletes are pymongo's ``AsyncGridFSBucket``. Writes are ours, to the GridFS
    spec (a ``{files_id, n, data}`` document per full chunk as it fills, the ``files``
    document last): pymongo's ``AsyncGridIn`` batches chunks until ``MAX_MESSAGE_SIZE``
    (48 MB) before inserting any, which would hold a whole clip in memory. Ours holds one
    chunk per upload; a reader never sees a file whose ``files`` document is not yet
    written, so a half-written upload is invisible, and removing it is deleting its chunks.
    """

    def __init__(self, database: AsyncDatabase[Any], bucket: str = BUCKET) -> None:
        self._bucket = AsyncGridFSBucket(database, bucket_name=bucket, chunk_size_bytes=CHUNK_BYTES)
        self._files = database[f"{bucket}.files"]
        self._chunks = database[f"{bucket}.chunks"]
        self._indexed = False

    async def _ensure_indexes(self) -> None:
        # The indexes the GridFS spec requires; created once per process (idempotent).
        if not self._indexed:
            await self._chunks.create_index(
                [("files_id", ASCENDING), ("n", ASCENDING)], unique=True
            )
            await self._files.create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
            self._indexed = True

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoredFile:
        await self._ensure_indexes()
        file_id = ObjectId()
        pending = bytearray()
        written = 0

        async def flush(data: bytes) -> None:
            nonlocal written
            n = written // CHUNK_BYTES
            await self._chunks.insert_one({"files_id": file_id, "n": n, "data": Binary(data)})
            written += len(data)

        try:
            async for piece in chunks:
                pending += piece
                while len(pending) >= CHUNK_BYTES:
                    await flush(bytes(pending[:CHUNK_BYTES]))
                    del pending[:CHUNK_BYTES]
            if pending:
                await flush(bytes(pending))
            await self._files.insert_one(
                {
                    "_id": file_id,
                    "length": Int64(written),
                    "chunkSize": CHUNK_BYTES,
                    "uploadDate": datetime.now(UTC),
                    "filename": filename,
                    "metadata": dict(metadata or {}),
                }
            )
        except BaseException:
            await self._chunks.delete_many({"files_id": file_id})
            raise
        return StoredFile(file_id, written)

    async def read(
        self, file_id: ObjectId, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            out = await self._bucket.open_download_stream(file_id)
        except NoFile:
            raise MissingFile(str(file_id)) from None
        stop = out.length if end is None else min(end, out.length)
        start = max(0, min(start, stop))
        await out.seek(start)

        async def chunks() -> AsyncIterator[bytes]:
            remaining = stop - start
            try:
                while remaining > 0:
                    try:
                        data = await out.read(min(remaining, out.chunk_size))
                    except CorruptGridFile:
                        log.info("media file %s was deleted while being read", file_id)
                        return
                    if not data:
                        return
                    remaining -= len(data)
                    yield data
            finally:
                await out.close()

        return chunks()

    async def delete(self, file_id: ObjectId) -> bool:
        try:
            await self._bucket.delete(file_id)
        except NoFile:
            return False
        return True

    async def files_before(self, before: datetime) -> AsyncIterator[ObjectId]:
        # A file's id is made when its put begins (ObjectIds carry their creation time).
        query = {"_id": {"$lt": ObjectId.from_datetime(before)}}
        async for row in self._files.find(query, {"_id": 1}):
            yield row["_id"]

    async def remove_unfinished(self, before: datetime) -> int:
        """Chunks with no ``files`` document, of puts begun before ``before``."""
        query = {"n": 0, "files_id": {"$lt": ObjectId.from_datetime(before)}}
        started = [row["files_id"] async for row in self._chunks.find(query, {"files_id": 1})]
        removed = 0
        for at in range(0, len(started), 500):
            batch = started[at : at + 500]
            finished = {
                row["_id"] async for row in self._files.find({"_id": {"$in": batch}}, {"_id": 1})
            }
            unfinished = [file_id for file_id in batch if file_id not in finished]
            if unfinished:
                await self._chunks.delete_many({"files_id": {"$in": unfinished}})
                removed += len(unfinished)
        return removed


class MemoryMediaStore:
    """The in-memory twin: files as lists of chunks, for tests and tools."""

    def __init__(self, chunk_size: int = CHUNK_BYTES) -> None:
        self._chunk_size = chunk_size
        self.files: dict[ObjectId, bytes] = {}

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> StoredFile:
        data = bytearray()
        async for chunk in chunks:
            data += chunk
        file_id = ObjectId()
        self.files[file_id] = bytes(data)
        return StoredFile(file_id, len(data))

    async def read(
        self, file_id: ObjectId, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        data = self.files.get(file_id)
        if data is None:
            raise MissingFile(str(file_id))
        stop = len(data) if end is None else min(end, len(data))
        start = max(0, min(start, stop))

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(start, stop, self._chunk_size):
                if file_id not in self.files:
                    return  # deleted while being read, like GridFS's chunks going away
                yield data[at : min(at + self._chunk_size, stop)]

        return chunks()

    async def delete(self, file_id: ObjectId) -> bool:
        return self.files.pop(file_id, None) is not None

    async def files_before(self, before: datetime) -> AsyncIterator[ObjectId]:
        for file_id in list(self.files):
            if file_id.generation_time < before:
                yield file_id

    async def remove_unfinished(self, before: datetime) -> int:
        return 0  # a put here either completes or raises, and cleans up when it raises
