"""Fixed-window counters in the database, shared by every cloud instance.

Used for login throttling (failures per account, attempts per client address) and for
capping failed activations. A counter is one document keyed by a string; its window end
doubles as its TTL, and reads ignore windows that have ended, so expiry never depends on
the TTL sweep.
"""

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import Document
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from cloud.errors import Throttled


class ThrottleCounter(Document):
    id: str  # type: ignore[assignment]  # the counter's key
    hits: int
    window_end: datetime

    class Settings:
        name = "throttle"
        indexes = [IndexModel([("window_end", ASCENDING)], expireAfterSeconds=0)]


def key(kind: str, subject: str) -> str:
    """Keys hash their subject: the collection holds no emails or addresses in clear."""
    return f"{kind}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


class Throttle:
    async def hit(self, name: str, window_s: int) -> tuple[int, datetime]:
        """Count one event; return (events in the current window, window end)."""
        collection = ThrottleCounter.get_pymongo_collection()
        now = datetime.now(UTC)
        for _ in range(3):
            doc: dict[str, Any] | None = await collection.find_one_and_update(
                {"_id": name, "window_end": {"$gt": now}},
                {"$inc": {"hits": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return int(doc["hits"]), doc["window_end"]
            end = now + timedelta(seconds=window_s)
            try:
                await collection.update_one(
                    {"_id": name, "window_end": {"$lte": now}},
                    {"$set": {"hits": 1, "window_end": end}},
                    upsert=True,
                )
                return 1, end
            except DuplicateKeyError:
                continue  # another instance opened the window first: count in it
        raise RuntimeError(f"throttle counter {name} kept changing under us")

    async def peek(self, name: str) -> tuple[int, datetime | None]:
        doc = await ThrottleCounter.get_pymongo_collection().find_one(
            {"_id": name, "window_end": {"$gt": datetime.now(UTC)}}
        )
        return (0, None) if doc is None else (int(doc["hits"]), doc["window_end"])

    async def reset(self, name: str) -> None:
        await ThrottleCounter.get_pymongo_collection().delete_one({"_id": name})

    async def check(self, name: str, limit: int, message: str) -> None:
        """Raise 429 while the window's count has reached ``limit``."""
        count, end = await self.peek(name)
        if count >= limit and end is not None:
            raise Throttled(message, retry_after(end))

    async def limit(self, name: str, limit: int, window_s: int, message: str) -> None:
        """Count one event and raise 429 when it goes past ``limit``."""
        count, end = await self.hit(name, window_s)
        if count > limit:
            raise Throttled(message, retry_after(end))


def retry_after(end: datetime) -> int:
    return max(1, int((end - datetime.now(UTC)).total_seconds()) + 1)
