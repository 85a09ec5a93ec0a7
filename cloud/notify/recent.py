"""Target documents read just now, kept for the senders (cloud.notify.push and
cloud.notify.webhooks) so that a notification's round reads its targets at most once.

The trade-off is freshness for reads: a target changed within ``TRUST_S`` of its read is
sent to as it was read (see :class:`Recent`).
"""

import time
from collections.abc import Iterable
from typing import Generic, TypeVar

from beanie import Document
from bson import ObjectId

TRUST_S = 1.0  # a target document read this recently is sent to as read (Recent)
D = TypeVar("D", bound=Document)


class Recent(Generic[D]):
    """Target documents (push subscriptions, webhooks) read at most ``TRUST_S`` ago, by id:
    what the notifier read to make a notification serves the round that sends it from
    memory right after, and a round's one read serves all its deliveries. A target deleted
    or disabled meanwhile is then sent to at most ``TRUST_S`` after (as a share revoked:
    cloud.notify.notifier's access check is trusted as long)."""

    def __init__(self) -> None:
        self._docs: dict[ObjectId, tuple[float, D]] = {}

    def keep(self, docs: Iterable[D]) -> None:
        at = time.monotonic()
        if len(self._docs) > 10_000:
            self._docs = {k: v for k, v in self._docs.items() if at - v[0] <= TRUST_S}
        for doc in docs:
            if doc.id is not None:
                self._docs[doc.id] = (at, doc)

    def get(self, doc_id: ObjectId, within: float = TRUST_S) -> D | None:
        """The document if it was read at most ``within`` seconds ago."""
        found = self._docs.get(doc_id)
        if found is None or time.monotonic() - found[0] > within:
            return None
        return found[1]

    def missing(self, ids: Iterable[ObjectId]) -> list[ObjectId]:
        return [i for i in set(ids) if self.get(i) is None]

    def forget(self, doc_id: ObjectId) -> None:
        self._docs.pop(doc_id, None)

    def refresh(self, ids: Iterable[ObjectId], found: Iterable[D]) -> None:
        """``found``: the documents of ``ids`` read just now (one not found is gone)."""
        for doc_id in ids:
            self.forget(doc_id)
        self.keep(found)
