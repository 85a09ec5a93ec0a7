"""MongoDB through beanie on PyMongo's async client, or a local SecantusDB process.

With ``MONGODB_URL`` unset (development only: production requires it) the cloud starts
SecantusDB as a server process of its own (:mod:`cloud.localdb`), storing its data under
``DATA_DIR/db`` so that ``python -m cloud`` needs nothing else and keeps data across restarts.
SecantusDB's code (GPL-2.0-only) is never imported into the cloud's process: the two talk over
the MongoDB wire protocol only. ``make run`` starts that process itself and sets ``MONGODB_URL``.
TTL indexes only tidy up: SecantusDB sweeps them once a minute and MongoDB every 60 s too,
so every query that must not see expired data checks the expiry itself.

A database that is away (stopped, paused, unreachable) must fail a request within a few
seconds rather than hang it (docs/protocol.md: 503 with ``Retry-After``, cloud/http.py):
server selection, connecting and every socket read are bounded (``*_TIMEOUT_MS``), and the
driver does not retry a read or write on its own, since a retry after a socket timeout
doubles the wait; the callers retry instead (apps on 503, relay nodes with idempotency keys,
the periodic tasks at their next period); :func:`cloud.errors.database_unavailable` tells
an outage from a bug.

An instance runs at most ``MONGODB_POOL_SIZE`` operations at once (default 16, against the
driver's 100); the others wait in the instance, as long as a reply may take. A server that
falls behind then gets no more work than it can hold, and a wait that times out leaves it
nothing to do: one that times out on its socket closes the connection while the server
still runs its operation, and the retry opens another. With 100 per instance three
instances under the soak (bench/soak.py) grew SecantusDB to its 1,000-connection cap,
nearly all of them waiting for one collection's lock, and nothing recovered; with 16 the
same run answered 503 for a while and recovered (docs/benchmarks.md, "Soak under faults").
"""

import asyncio
import logging
from types import TracebackType
from typing import Any

import pymongo
from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from cloud.auth.models import RefreshToken, User
from cloud.devices.models import AccessChange, Device, Share
from cloud.events.models import EventReceipt, EventSnapshot, EventThread
from cloud.localdb import LocalDatabase
from cloud.onboarding.models import OnboardingTicket
from cloud.relays.models import RelayNode
from cloud.settings import Settings
from cloud.signaling.models import SessionRecord
from cloud.throttle import ThrottleCounter

log = logging.getLogger(__name__)

SERVER_SELECTION_TIMEOUT_MS = 3000  # no server answers its heartbeat: fail after this
CONNECT_TIMEOUT_MS = 3000  # a new connection (and the monitor's heartbeat)
SOCKET_TIMEOUT_MS = 5000  # one reply: a paused server fails the operation after this
STARTUP_TIMEOUT_S = 60.0  # the indexes at startup: a loaded database may take longer than 5 s

DOCUMENTS: list[type[Document]] = [
    User,
    RefreshToken,
    ThrottleCounter,
    OnboardingTicket,
    Device,
    Share,
    AccessChange,
    SessionRecord,
    RelayNode,
    EventThread,
    EventSnapshot,
    EventReceipt,
]


class Database:
    """Owns the client (and the local database process, if any) for one process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._server: LocalDatabase | None = None
        self.client: AsyncMongoClient[dict[str, Any]] | None = None

    async def __aenter__(self) -> "Database":
        url = self._settings.mongodb_url
        if url is None:
            url = await asyncio.to_thread(self._start_embedded)
        self.client = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
            connectTimeoutMS=CONNECT_TIMEOUT_MS,
            socketTimeoutMS=SOCKET_TIMEOUT_MS,
            maxPoolSize=self._settings.database_pool,
            waitQueueTimeoutMS=SOCKET_TIMEOUT_MS,
            retryReads=False,
            retryWrites=False,
            appname="visionconnect-cloud",
        )
        with pymongo.timeout(STARTUP_TIMEOUT_S):  # replaces the socket timeout for these
            await init_beanie(
                database=self.client[self._settings.database_name], document_models=DOCUMENTS
            )
        return self

    def _start_embedded(self) -> str:
        self._server = LocalDatabase(
            self._settings.data_dir / "db", cache_size=self._settings.embedded_db_cache
        )
        return self._server.start()

    async def ping(self) -> bool:
        if self.client is None:
            return False
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout=2.0)
        except Exception:
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None
