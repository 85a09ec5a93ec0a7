"""The signaling client cameras and relay nodes hold (docs/protocol.md, "WebSocket signaling").

:class:`SignalingClient` keeps one WebSocket to the cloud and speaks typed messages
(:mod:`protocol.messages`) both ways. Its contract:

- each attempt sends the ``hello`` that ``hello()`` makes (called once per upgraded
  attempt: a camera's assertion is single use) and waits ``open_timeout_s`` for ``welcome``; then
  ``online`` is set, an application ``ping`` goes out every ``heartbeat_s`` the welcome
  names, and ``while_online()`` (if given) runs until the connection ends;
- every frame is decoded with :func:`~protocol.messages.decode_server`: ``go_away`` closes
  the connection and reconnects after its ``reconnect_after_ms``; a server ``ping`` is
  answered with ``pong``; ``pong`` is dropped; every other message goes to ``handler``, one
  at a time and in order (a handler that waits holds the next message back). A frame that
  does not decode is logged and skipped, as is a message whose handler raises: neither
  ends the connection;
- a connection that fails or drops abnormally is retried after a delay of full jitter
  (:class:`Backoff`), doubling its bound with each failure in a row; a welcome ends the row
  (resets the backoff), and so does a connection that ends cleanly (``go_away``, the
  server's normal close);
- an attempt the cloud refuses before the upgrade with ``503`` (or ``429``) and a
  ``Retry-After`` (docs/protocol.md, "Admission") is retried after that many seconds (at most
  the backoff's bound ``backoff_max_s``) plus up to :data:`TOLD_JITTER_S` of jitter, and the
  backoff's bound does not grow: the cloud spreads the refused over the time it needs for
  them, a bound doubled by its refusals would keep a camera away long after there is room;
- close code 4404 (the device was removed or re-onboarded) sets ``removed`` and ends
  :meth:`SignalingClient.run` for good, unless ``stop_on_removed`` is False;
- when a connection (or an attempt) ends, ``online`` is cleared and ``on_offline()`` (if
  given) is awaited before any reconnection: per-connection state such as sessions ends
  there, since the cloud ends them too.
"""

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from protocol.messages import (
    MAX_FRAME_BYTES,
    GoAway,
    Hello,
    Message,
    Ping,
    Pong,
    ServerMessage,
    Welcome,
    decode_server,
)

log = logging.getLogger(__name__)

CLOSE_REMOVED = 4404
CLOSE_TIMEOUT_S = 2.0
# Added to a Retry-After the cloud gives in whole seconds: the cameras it books within one
# second come back spread over that second, not together at its start.
TOLD_JITTER_S = 1.0
RETRY_STATUSES = frozenset({429, 503})

Handler = Callable[[ServerMessage], Awaitable[None]]
Hook = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class SignalingStats:
    connects: int = 0  # welcomes received
    reconnects: int = 0  # reconnections scheduled (after a failure, a drop or go_away)
    errors: int = 0  # attempts or connections that failed or dropped abnormally
    skipped: int = 0  # frames that did not decode


class Backoff:
    """Exponential backoff with full jitter: after the n-th failure in a row the wait is
    uniform in ``[0, min(max_s, first_s * 2**(n-1))]``; :meth:`reset` after a success."""

    def __init__(
        self, first_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.cap_s = first_s  # the bound of the next wait
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not crypto)

    def next(self) -> float:
        delay = self._rng.uniform(0, self.cap_s)
        self.cap_s = min(self.cap_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.cap_s = self.first_s

    def told(self, retry_after_s: float) -> float:
        """The wait when the server says when to come back: ``retry_after_s`` (at most
        ``max_s``) plus jitter of up to :data:`TOLD_JITTER_S`. The bound stays as it was."""
        return min(max(0.0, retry_after_s), self.max_s) + self._rng.uniform(0, TOLD_JITTER_S)


def retry_after(exc: BaseException) -> float | None:
    """The seconds a refused upgrade (429 or 503) asks to wait with its ``Retry-After``; None
    for any other failure, or a header that is not delta-seconds (an HTTP-date is not sent
    by the cloud and is ignored: the backoff applies)."""
    if not isinstance(exc, websockets.InvalidStatus):
        return None
    response = exc.response
    if response.status_code not in RETRY_STATUSES:
        return None
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


class SignalingClient:
    """One signaling connection to ``url``, kept until :meth:`run`'s ``stop`` is set.

    ``name`` prefixes its log lines (``"camera 3f2a1c"``). ``stats`` may be shared with the
    application's own (a subclass of :class:`SignalingStats`).
    """

    def __init__(
        self,
        url: str,
        hello: Callable[[], Hello],
        handler: Handler,
        *,
        name: str = "signaling",
        on_offline: Hook | None = None,
        while_online: Hook | None = None,
        stop_on_removed: bool = True,
        backoff_first_s: float = 0.5,
        backoff_max_s: float = 30.0,
        open_timeout_s: float = 10.0,
        stats: SignalingStats | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.stop_on_removed = stop_on_removed
        self.open_timeout_s = open_timeout_s
        self.stats = stats if stats is not None else SignalingStats()
        self.online = asyncio.Event()
        self.removed = False
        self.welcome: Welcome | None = None  # the current connection's, while online
        self.backoff = Backoff(backoff_first_s, backoff_max_s)
        self.next_delay_s: float | None = None  # the wait before the next attempt, once known
        self._hello = hello
        self._handler = handler
        self._on_offline = on_offline
        self._while_online = while_online
        self._socket: ClientConnection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set (or the server closes with 4404)."""
        while not stop.is_set():
            go_away_ms: int | None = None
            told_s: float | None = None
            try:
                go_away_ms = await self._connection(stop)
                self.backoff.reset()
            except (OSError, TimeoutError, websockets.WebSocketException, ValueError) as exc:
                self.stats.errors += 1
                told_s = retry_after(exc)
                log.info("%s: connection failed: %s", self.name, str(exc) or type(exc).__name__)
            finally:
                self.online.clear()
                self.welcome = None
                if self._on_offline is not None:
                    await self._on_offline()
            if stop.is_set() or self.removed:
                return
            if go_away_ms is not None:
                delay = go_away_ms / 1000
            elif told_s is not None:
                delay = self.backoff.told(told_s)
            else:
                delay = self.backoff.next()
            self.next_delay_s = delay
            self.stats.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def send(self, message: Message) -> bool:
        """Send on the current connection; False (the message is dropped) when there is
        none or it is closing. Nothing is queued: the cloud forgets a connection's sessions
        when it drops, so its messages mean nothing on the next one."""
        socket = self._socket
        if socket is None:
            return False
        try:
            await socket.send(message.text())
        except websockets.ConnectionClosed:
            return False
        return True

    async def _connection(self, stop: asyncio.Event) -> int | None:
        """One connection's life; ``go_away``'s delay (ms), or None when it just ended."""
        async with websockets.connect(
            self.url,
            max_size=MAX_FRAME_BYTES,
            open_timeout=self.open_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
        ) as socket:
            try:
                # Made once upgraded: an attempt refused before (503) costs no signature.
                await socket.send(self._hello().text())
                frame = await asyncio.wait_for(socket.recv(), self.open_timeout_s)
                welcome = decode_server(frame) if isinstance(frame, str) else None
                if not isinstance(welcome, Welcome):
                    got = "a binary frame" if welcome is None else repr(welcome.type)
                    raise ValueError(f"expected welcome, got {got}")
                return await self._online(socket, welcome, stop)
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code == CLOSE_REMOVED and self.stop_on_removed:
                    self.removed = True
                    log.warning("%s: removed by the cloud (4404); not reconnecting", self.name)
                    return None
                raise

    async def _online(
        self, socket: ClientConnection, welcome: Welcome, stop: asyncio.Event
    ) -> int | None:
        self.stats.connects += 1
        # A welcome ends the run of failures: a connection that drops later starts again
        # from the first wait (after a storm, every camera would otherwise keep the long
        # bound its attempts reached, up to backoff_max_s, for its next drop).
        self.backoff.reset()
        self.welcome = welcome
        self._socket = socket
        self.online.set()
        log.info("%s: online as %s", self.name, welcome.connection_id)
        tasks = [
            asyncio.create_task(self._heartbeat(socket, max(welcome.heartbeat_s, 1))),
            asyncio.create_task(self._close_on(stop, socket)),
        ]
        if self._while_online is not None:
            tasks.append(asyncio.create_task(self._while_online()))
        try:
            return await self._read(socket)
        finally:
            self._socket = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, socket: ClientConnection) -> int | None:
        async for frame in socket:
            try:
                if not isinstance(frame, str):
                    raise ValueError("a binary frame")
                message = decode_server(frame)
            except ValueError as exc:  # ProtocolError included
                self.stats.skipped += 1
                log.warning("%s: skipped a frame from the cloud: %s", self.name, exc)
                continue
            match message:
                case GoAway():
                    log.info("%s: told to go away (%s)", self.name, message.reason)
                    return message.reconnect_after_ms
                case Ping():
                    await self.send(Pong(id=message.id))
                case Pong():
                    pass
                case _:
                    try:
                        await self._handler(message)
                    except Exception:
                        log.exception("%s: handling %s failed", self.name, message.type)
        return None

    @staticmethod
    async def _heartbeat(socket: ClientConnection, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await socket.send(Ping().text())

    @staticmethod
    async def _close_on(stop: asyncio.Event, socket: ClientConnection) -> None:
        await stop.wait()
        await socket.close()
