"""Group commit: the calls made while one query is on its way go together in the next.

A camera's connect reads its key and writes its presence; during a reconnect storm hundreds
of cameras do so each second, and the database spends most of its time per command, not per
document (docs/benchmarks.md, "Camera connects"). A :class:`GroupCommit` runs one query for
the keys asked for; the keys asked for meanwhile wait and go in the next query, up to
``limit`` at a time. There is no timer: when one camera connects alone its query runs at
once, and under load the batches grow by themselves to what arrives during one query. Every
caller gets the result of a query that started after it asked, so nothing read here is older
than a query of its own would have been.

The task that runs the queries exists only while callers wait; it belongs to the
:class:`GroupCommit`, and a caller's wait is bounded by the query's own timeouts (the
database client's). A failed query fails every call that went in it with its exception.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from itertools import islice
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class GroupCommit(Generic[K, V]):
    """Runs ``query(keys)`` for keys asked for by concurrent callers, ``limit`` at a time.

    ``query`` returns the value of each key it found; a key it leaves out is None to its
    callers (for a read: not found; for a write: not written).
    """

    def __init__(
        self, query: Callable[[list[K]], Awaitable[Mapping[K, V]]], name: str, limit: int
    ) -> None:
        self._query = query
        self._name = name
        self._limit = limit
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, key: K, *, latest: bool = False) -> V | None:
        """The value of ``key`` from the next query.

        Callers of one key in one query share its value; with ``latest`` an earlier caller
        of ``key`` still waiting gets None instead (superseded: the key's last caller is the
        one the query is for).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        waiters = self._waiting.setdefault(key, [])
        if latest:
            for earlier in waiters:
                if not earlier.done():
                    earlier.set_result(None)
            waiters.clear()
        waiters.append(future)
        if self._runner is None:
            self._runner = loop.create_task(self._run(), name=f"group-commit {self._name}")
        return await future

    @property
    def waiting(self) -> int:
        """Keys waiting for a query."""
        return len(self._waiting)

    async def close(self) -> None:
        """Cancel the query on its way; its callers and those waiting get CancelledError."""
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self) -> None:
        batch: dict[K, list[asyncio.Future[V | None]]] = {}
        try:
            while self._waiting:
                keys = list(islice(self._waiting, self._limit))
                batch = {key: self._waiting.pop(key) for key in keys}
                # Keys whose callers all went away (cancelled, superseded) are not asked for.
                wanted = [key for key, fs in batch.items() if any(not f.done() for f in fs)]
                try:
                    found = await self._query(wanted) if wanted else {}
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(found.get(key))
                batch = {}
        finally:
            self._runner = None
            for futures in [*batch.values(), *self._waiting.values()]:
                for future in futures:
                    future.cancel()
            self._waiting.clear()
