"""The media sweeper: expired items go, and owners over their quota lose their oldest
clips and recordings.

One task per cloud process, owned by ``create_app``'s lifespan (``start`` / ``stop``),
runs :meth:`Retention.sweep` every ``MEDIA_SWEEP_INTERVAL_S``; each pass is bounded by a
timeout, and an error is logged and the next pass tries again. Several instances may sweep
at once: removal is idempotent (``cloud.media.catalog.remove``).

Rules of a pass:

1. Every item whose ``expires_at`` has passed is removed, file (``media.files`` and
   ``media.chunks``) and document.
2. Per owner, bytes of unexpired items are summed; an owner over their quota loses
   finished clips and recordings, oldest first, until under. Uploads and snapshots are
   kept (an upload over quota is refused when it is made, ``media_quota_exceeded``), and
   so is a clip still recording (its relay is writing it).
3. A clip or recording still ``recording`` with no upload for :data:`STALE_RECORDING` (its
   relay died or lost the camera before the final upload) becomes ``failed``: what it has
   stays playable until it expires, and it counts as finished for rule 2.
4. Once an hour, leftovers of processes that died mid-write, older than
   :data:`ORPHAN_AGE` (no write lasts that long): stored files no item points at (stored,
   then the process died before the document was written) and chunks of unfinished files.

Trade-off: the quota pass sums the whole collection with one aggregation per pass, simple
and always right; past a few hundred thousand items a running total per owner would be
cheaper.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId

from cloud.auth.models import User
from cloud.media.catalog import limits_of, live, remove
from cloud.media.models import Media
from cloud.media.store import MediaStore
from cloud.settings import Settings

log = logging.getLogger(__name__)

BATCH = 500  # items removed per query, so one pass never holds a huge list
ORPHAN_AGE = timedelta(days=1)
STALE_RECORDING = timedelta(hours=1)  # clips are capped at minutes; recordings at 10 min
ORPHAN_EVERY_S = 3600
TRIMMED_KINDS = ("clip", "recording")


@dataclass(frozen=True)
class SweepResult:
    expired: int
    over_quota: int


class Retention:
    def __init__(self, store: MediaStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="media-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self._settings.media_sweep_interval_s
        passes = 0
        while True:
            try:
                async with asyncio.timeout(max(60, interval)):
                    result = await self.sweep()
                    if passes % max(1, ORPHAN_EVERY_S // interval) == 0:
                        await self.collect_orphans()
                if result.expired or result.over_quota:
                    log.info(
                        "media sweep: %d expired, %d over quota removed",
                        result.expired,
                        result.over_quota,
                    )
            except Exception:
                log.exception("media sweep failed; trying again in %d s", interval)
            passes += 1
            await asyncio.sleep(interval)

    async def sweep(self) -> SweepResult:
        await self.fail_stale_recordings()
        return SweepResult(await self.remove_expired(), await self.enforce_quotas())

    async def fail_stale_recordings(self) -> int:
        result = await Media.get_pymongo_collection().update_many(
            {"state": "recording", "updated_at": {"$lt": datetime.now(UTC) - STALE_RECORDING}},
            {
                "$set": {
                    "state": "failed",
                    "error": "no upload for an hour: the recording never finished",
                    "updated_at": datetime.now(UTC),
                }
            },
        )
        return result.modified_count

    async def collect_orphans(self, before: datetime | None = None) -> int:
        """Remove stored files no item points at and unfinished files, begun before
        ``before`` (default: :data:`ORPHAN_AGE` ago); returns how many."""
        cutoff = before or datetime.now(UTC) - ORPHAN_AGE
        removed = await self._store.remove_unfinished(cutoff)
        batch: list[ObjectId] = []
        files = self._store.files_before(cutoff)
        while True:
            file_id = await anext(files, None)
            if file_id is not None:
                batch.append(file_id)
            if batch and (file_id is None or len(batch) == BATCH):
                referenced = {
                    row["file_id"]
                    async for row in Media.get_pymongo_collection().find(
                        {"file_id": {"$in": batch}}, {"file_id": 1}
                    )
                }
                for orphan in (f for f in batch if f not in referenced):
                    removed += await self._store.delete(orphan)
                    log.warning("media file %s belonged to no item: removed", orphan)
                batch = []
            if file_id is None:
                return removed

    async def remove_expired(self) -> int:
        removed = 0
        while True:
            batch = (
                await Media.find({"expires_at": {"$lte": datetime.now(UTC)}}).limit(BATCH).to_list()
            )
            for doc in batch:
                removed += await remove(self._store, doc)
            if len(batch) < BATCH:
                return removed

    async def enforce_quotas(self) -> int:
        pipeline: list[dict[str, Any]] = [
            {"$match": live()},
            {"$group": {"_id": "$owner_id", "bytes": {"$sum": "$size"}}},
        ]
        rows = await (await Media.get_pymongo_collection().aggregate(pipeline)).to_list()
        used = {PydanticObjectId(row["_id"]): int(row["bytes"]) for row in rows}
        owners = {u.id: u for u in await User.find({"_id": {"$in": list(used)}}).to_list() if u.id}
        removed = 0
        for owner_id, total in used.items():
            quota = limits_of(owners.get(owner_id), self._settings).quota_bytes
            if total > quota:
                removed += await self._trim(owner_id, total, quota)
        return removed

    async def _trim(self, owner_id: PydanticObjectId, total: int, quota: int) -> int:
        removed = 0
        condition: dict[str, Any] = {
            "owner_id": owner_id,
            "kind": {"$in": list(TRIMMED_KINDS)},
            "state": {"$ne": "recording"},
        }
        while total > quota:
            batch = (
                await Media.find({**condition, **live()})
                .sort("+created_at", "+_id")
                .limit(BATCH)
                .to_list()
            )
            if not batch:
                log.warning("owner %s stays over quota: %d of %d bytes", owner_id, total, quota)
                break
            for doc in batch:
                if total <= quota:
                    break
                if await remove(self._store, doc):
                    removed += 1
                total -= doc.size  # removed by us or by another sweeper: gone either way
        return removed
