"""Server-sent events: ``GET /api/v1/stream``, what the client WebSocket pushes, over HTTP.

The stream is a user connection of the hub like a client WebSocket, carried by a
:class:`StreamSocket` instead of a socket: :meth:`Signaling.attach` and
:meth:`Signaling.welcome` give it a connection id and subscribe the user's channel on the
bus, so pushes (``device.presence``, ``device.activated``, ``event``) reach it from
whichever cloud instance sends them, as they reach the user's WebSockets. It only listens:
a stream sends nothing, so it never requests sessions.

Authentication: the user's access token, as ``Authorization: Bearer`` or, for
``EventSource`` (which cannot set headers), as the query parameter ``access_token`` —
the same short-lived token the app's WebSocket sends in its ``hello``. The stream ends when
that token expires (a ``go_away`` with reason ``token_expired`` first) or when the account
is gone (checked every ``ACCOUNT_CHECK_S``); the client reconnects with a fresh token.

Ids and resume: every message has an ``id:``, ``<updated_at in ms>-<thread id>`` of the
latest event thread the stream has passed on (an event's own for an ``event``; the stream's
start for messages before any). A client reconnecting with ``Last-Event-ID`` (or
``last_event_id`` in the query, for a new ``EventSource``) first gets, in order of
``(updated_at, id)``, every thread of the cameras it may see now updated since
``RESUME_SLACK_S`` before that time, in its current state: at least once, so a thread may
come again (apply an event by its thread). More than ``REPLAY_MAX`` missed threads: a
``resync`` message instead, and the client reads ``GET /events``.
"""

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import jwt
from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.models import User
from cloud.auth.tokens import UserPrincipal
from cloud.context import context
from cloud.devices.access import visible_devices
from cloud.errors import CloudError, Malformed, Unauthenticated, Unavailable
from cloud.events.models import EventThread, event_out
from cloud.http import Endpoint, parse_query
from cloud.signaling.deliveries import CLOSE_AUTH
from cloud.signaling.ws import Signaling
from protocol.messages import EventPush, GoAway

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # the reconnection delay the stream asks of EventSource
ACCOUNT_CHECK_S = 30.0
RESUME_SLACK_S = 2.0  # pushes of two threads may arrive out of their updated_at order
REPLAY_MAX = 500
QUEUE_MAX = 1000  # frames waiting for a slow reader before the stream is closed
SEND_TIMEOUT_S = 10.0
CURSOR = re.compile(r"^(\d{1,15})-([0-9a-f]{24})$")
ZERO_ID = "0" * 24


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_token: str | None = Field(
        default=None,
        max_length=4096,
        description="The access token, for clients that cannot send the Authorization "
        "header (EventSource)",
    )
    last_event_id: str | None = Field(
        default=None,
        max_length=64,
        description="Resume after this id (what the Last-Event-ID header says, for a new "
        "EventSource)",
    )


# cursors ------------------------------------------------------------------------------------


def cursor_of(at: datetime, thread: str) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return f"{int(at.timestamp() * 1000)}-{thread}"


def parse_cursor(raw: str) -> tuple[datetime, str]:
    match = CURSOR.match(raw.strip())
    if match is None:
        raise Malformed("Last-Event-ID is not an id of this stream")
    at = datetime.fromtimestamp(int(match.group(1)) / 1000, UTC)
    return at, match.group(2)


def later(a: str, b: str) -> str:
    """The later of two cursors (both of this module's format)."""

    def key(cursor: str) -> tuple[int, str]:
        at, _, thread = cursor.partition("-")
        return int(at), thread

    return a if key(a) >= key(b) else b


# the hub's view of a stream -------------------------------------------------------------------


class StreamSocket:
    """A :class:`~cloud.signaling.ws.Socket` whose frames wait in a queue for the stream."""

    __slots__ = ("closed", "frames")

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str | None] = asyncio.Queue()  # None: closed
        self.closed = False

    @property
    def is_open(self) -> bool:
        return not self.closed

    async def send_text(self, text: str) -> None:
        if self.closed:
            raise RuntimeError("the stream has ended")
        if self.frames.qsize() >= QUEUE_MAX:
            raise RuntimeError("the stream's reader is too slow")
        self.frames.put_nowait(text)

    async def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            if code == CLOSE_AUTH:  # its sign-in ended (cloud.auth.signins): say so
                self.frames.put_nowait(GoAway(reconnect_after_ms=0, reason="token_revoked").text())
            self.frames.put_nowait(None)


# the endpoint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamUser:
    principal: UserPrincipal
    expires: float  # the access token's exp, seconds since the epoch


async def stream_user(request: Request) -> StreamUser:
    """The user's access token from the Authorization header or ``?access_token=``."""
    query = parse_query(request, StreamQuery)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or query.access_token or ""
    if not token:
        raise Unauthenticated("send 'Authorization: Bearer <access token>' or ?access_token=")
    ctx = context(request)
    principal = await ctx.signaling.signins.check(ctx.access_tokens.verify(token))
    expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    return StreamUser(principal, expires)


async def stream(request: Request) -> Response:
    ctx = context(request)
    query = parse_query(request, StreamQuery)
    who: StreamUser = request.state.principal
    principal, expires = who.principal, who.expires
    raw = request.headers.get("last-event-id") or query.last_event_id
    resume = parse_cursor(raw) if raw else None
    if ctx.signaling.draining:
        raise Unavailable("the server is restarting; reconnect shortly", 1)
    events = Stream(ctx.signaling, principal, expires, resume).events()
    return EventSourceResponse(
        events,
        ping=HEARTBEAT_S,
        send_timeout=SEND_TIMEOUT_S,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class Stream:
    """One stream's life: attach to the hub, replay what was missed, pass pushes on."""

    def __init__(
        self,
        signaling: Signaling,
        principal: UserPrincipal,
        expires: float,
        resume: tuple[datetime, str] | None,
    ) -> None:
        self.signaling = signaling
        self.principal = principal
        self.user = str(principal.user_id)
        self.expires = expires  # the token's exp, seconds since the epoch
        self.resume = resume
        self.socket = StreamSocket()
        self.cursor = cursor_of(datetime.now(UTC), ZERO_ID)

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        conn = self.signaling.attach(self.socket, "user", self.user)
        try:
            try:
                await self.signaling.welcome(conn, "user", self.user, self.principal.grant)
            except Unavailable:
                yield self._message(GoAway(reconnect_after_ms=5000, reason="service_unavailable"))
                return
            welcome = await self.socket.frames.get()  # always the first frame
            if welcome is None:
                return
            if self.resume is not None:
                self.cursor = cursor_of(*self.resume)
            yield self._frame(welcome, retry=RETRY_MS)
            if self.resume is not None:
                async for replayed in self._replay(*self.resume):
                    yield replayed
            async for live in self._live():
                yield live
        finally:
            # sse-starlette cancels the generator when the client goes: detach regardless
            with anyio.CancelScope(shield=True):
                await self.signaling.detach(conn, "user", self.user)

    async def _live(self) -> AsyncIterator[ServerSentEvent]:
        checked = time.monotonic()
        while True:
            left = self.expires - time.time()
            if left <= 0:
                yield self._message(GoAway(reconnect_after_ms=0, reason="token_expired"))
                return
            try:
                async with asyncio.timeout(min(left, ACCOUNT_CHECK_S)):
                    text = await self.socket.frames.get()
            except TimeoutError:
                text = ""
            if text is None:
                return  # closed by the hub (shutdown: after its go_away), or too slow
            if time.monotonic() - checked >= ACCOUNT_CHECK_S:
                checked = time.monotonic()
                if not await self._account_exists():
                    yield self._message(GoAway(reconnect_after_ms=0, reason="token_revoked"))
                    return
            if text:
                yield await self._live_frame(text)

    async def _account_exists(self) -> bool:
        try:
            return await User.get(self.principal.user_id) is not None
        except PyMongoError:
            return True  # the database is away: the token still holds until it expires

    async def _live_frame(self, text: str) -> ServerSentEvent:
        message = json.loads(text)
        if message.get("type") == "event":
            with contextlib.suppress(PyMongoError, ValueError):
                doc = await EventThread.get(PydanticObjectId(message["id"]))
                if doc is not None and doc.id is not None:
                    self.cursor = later(self.cursor, cursor_of(doc.updated_at, str(doc.id)))
        return ServerSentEvent(data=text, event=str(message.get("type", "message")), id=self.cursor)

    async def _replay(self, at: datetime, thread: str) -> AsyncIterator[ServerSentEvent]:
        try:
            devices = [a.device.id for a in await visible_devices(self.principal)]
            since = at - timedelta(seconds=RESUME_SLACK_S)
            docs = (
                await EventThread.find(
                    {
                        "device_id": {"$in": devices},
                        "updated_at": {"$gt": since},
                        "expires_at": {"$gt": datetime.now(UTC)},
                    }
                )
                .sort("updated_at", "_id")
                .limit(REPLAY_MAX + 1)
                .to_list()
            )
        except (PyMongoError, CloudError) as exc:
            log.warning("stream of user %s: no replay (%s)", self.user, exc)
            docs = None  # the client reads the list itself
        if docs is None or len(docs) > REPLAY_MAX:
            self.cursor = cursor_of(datetime.now(UTC), ZERO_ID)
            resync = {"type": "resync", "reason": "missed events not replayed: read GET /events"}
            yield ServerSentEvent(data=json.dumps(resync), event="resync", id=self.cursor)
            return
        for doc in docs:
            if doc.id is None:
                continue
            self.cursor = later(self.cursor, cursor_of(doc.updated_at, str(doc.id)))
            push = EventPush(**event_out(doc).model_dump())
            yield ServerSentEvent(data=json.dumps(push.dump()), event="event", id=self.cursor)

    def _frame(self, text: str, retry: int | None = None) -> ServerSentEvent:
        message: dict[str, Any] = json.loads(text)
        event = str(message.get("type", "message"))
        return ServerSentEvent(data=text, event=event, id=self.cursor, retry=retry)

    def _message(self, message: GoAway) -> ServerSentEvent:
        return ServerSentEvent(data=message.text(), event=message.type, id=self.cursor)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/stream",
        stream,
        "Server-sent events: presence, activations and events, with Last-Event-ID resume",
        "signaling",
        query=StreamQuery,
        errors=(400,),
        auth=stream_user,
        media_type="text/event-stream",
        description="`text/event-stream`. Each message's `event:` is the WebSocket type "
        "(`welcome`, `device.presence`, `device.activated`, `event`, `go_away`, `resync`) and "
        "its `data:` the same JSON as the WebSocket frame. See docs/protocol.md, "
        "'Server-sent events'.",
    ),
]
