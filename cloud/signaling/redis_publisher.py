"""PUBLISH (and the other one-line commands of a camera's connect) on a Redis connection of
its own, pipelined.

Every signaling message between instances is one PUBLISH. Through redis-py's pool one costs
~125 µs of CPU (checkout, health check, retry wrapper, parser); here it is one formatted
command and one future. Commands issued in one loop iteration leave in one write, and
Redis answers them in order, so replies are matched first in, first out. No reply within
``reply_timeout_s`` means the connection is dead: it is dropped, every waiting publish fails,
and the next one connects again. A publish is never retried: pub/sub delivers at most once,
and a retry after a lost reply could deliver twice.
"""

import asyncio
import ssl
import time
from collections import deque
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

NIL = -1  # the reply nil (only commands whose integer replies are never negative use it)


class PublishFailed(Exception):
    """The connection failed, was dropped, or Redis answered with an error."""


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One connection: commands out, integer (or OK, or error) replies back in order."""

    def __init__(self, reply_timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._reply_timeout_s = reply_timeout_s
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[asyncio.Future[int], float]] = deque()
        self._out: list[bytes] = []
        self._buffer = bytearray()
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        failure = PublishFailed(f"connection lost: {exc or 'closed by Redis'}")
        for future, _ in self._waiting:
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            if not self._waiting:
                self.abort()  # a reply nobody asked for: the stream cannot be trusted
                return
            future, _ = self._waiting.popleft()
            if future.done():
                continue  # its caller gave up
            if line[:1] == b":":
                future.set_result(int(line[1:]))
            elif line[:1] == b"+":
                future.set_result(0)
            elif line == b"$-1":  # nil: SET NX that lost, a script that returns nothing
                future.set_result(NIL)
            elif line[:1] == b"-":
                future.set_exception(PublishFailed(line.decode(errors="replace")))
            else:  # a reply of several lines: no command sent here asks for one
                future.set_exception(PublishFailed("unexpected reply"))
                self.abort()
                return

    def send(self, command: bytes) -> asyncio.Future[int]:
        if self.closed or self._transport is None:
            raise PublishFailed("not connected")
        future = self._loop.create_future()
        self._waiting.append((future, time.monotonic()))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout_s, self._check)
        return future

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.closed and self._transport is not None:
            self._transport.writelines(out)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        overdue = self._waiting[0][1] + self._reply_timeout_s - time.monotonic()
        if overdue <= 0:
            self.abort()
        else:
            self._watchdog = self._loop.call_later(overdue, self._check)


class Publisher:
    """PUBLISH to the Redis at ``url`` (redis://, rediss:// or unix://, with credentials)."""

    def __init__(self, url: str, *, connect_timeout_s: float, reply_timeout_s: float) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def publish(self, channel: str, text: str) -> int:
        """How many subscribers received ``text``; PublishFailed or TimeoutError otherwise."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(_command(b"PUBLISH", channel.encode(), text.encode()))

    async def command(self, *parts: bytes) -> int:
        """Any command whose reply is one line: an integer, ``+OK`` (0) or nil (:data:`NIL`).
        Not retried, like a publish."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(_command(*parts))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.abort()
            self._connection = None

    async def _connect(self) -> _Connection:
        async with self._connecting, asyncio.timeout(self._connect_timeout_s):
            if self._connection is not None and not self._connection.closed:
                return self._connection  # another publish connected meanwhile
            loop, options = asyncio.get_running_loop(), self._options

            def factory() -> _Connection:
                return _Connection(self._reply_timeout_s)

            connection: _Connection
            if options.get("connection_class") is UnixDomainSocketConnection:
                _, connection = await loop.create_unix_connection(factory, options["path"])
            else:
                secure = options.get("connection_class") is SSLConnection
                tls = ssl.create_default_context() if secure else None
                _, connection = await loop.create_connection(
                    factory, options["host"], options.get("port", 6379), ssl=tls
                )
            if password := options.get("password"):
                user = [options["username"]] if options.get("username") else []
                auth = _command(b"AUTH", *(c.encode() for c in [*user, password]))
                try:
                    await connection.send(auth)
                except BaseException:
                    connection.abort()
                    raise
            self._connection = connection
            return connection
