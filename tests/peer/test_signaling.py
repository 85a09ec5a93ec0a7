"""peer.signaling against a real WebSocket server on 127.0.0.1 that plays a scripted cloud."""

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from peer.signaling import TOLD_JITTER_S, Backoff, Handler, SignalingClient, retry_after
from protocol.messages import (
    GoAway,
    Hello,
    Ping,
    Pong,
    ServerMessage,
    SessionAnswer,
    SessionEnd,
    SessionOffer,
    Status,
    Welcome,
)

Script = Callable[[ServerConnection, int], Awaitable[None]]


class Cloud:
    """Each connection records its hello and runs ``script(socket, n)`` (n: 0, 1, ...)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.url = ""
        self.opened: list[float] = []  # monotonic time of each connection
        self.hellos: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []  # what clients sent after their hello
        self.close_codes: list[int | None] = []

    async def handle(self, socket: ServerConnection) -> None:
        n = len(self.opened)
        self.opened.append(time.monotonic())
        try:
            await self.script(socket, n)
        finally:
            await socket.wait_closed()
            self.close_codes.append(socket.close_code)

    async def hello(self, socket: ServerConnection, heartbeat_s: int = 20) -> None:
        """Take the hello and welcome the connection."""
        self.hellos.append(json.loads(await socket.recv()))
        welcome = Welcome(
            role="device",
            principal_id="d1",
            connection_id=f"i1.c{len(self.hellos)}",
            heartbeat_s=heartbeat_s,
        )
        await socket.send(welcome.text())

    async def listen(self, socket: ServerConnection) -> None:
        """Record what the client sends until it closes."""
        async for frame in socket:
            self.received.append(json.loads(frame))


@asynccontextmanager
async def cloud(script: Script) -> AsyncIterator[Cloud]:
    c = Cloud(script)
    async with serve(c.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c.url = f"ws://127.0.0.1:{port}/ws/v1/device"
        yield c


class Client:
    """A SignalingClient whose hello carries a fresh token per attempt, with its messages."""

    def __init__(self, url: str, handler: Handler | None = None, **options: Any) -> None:
        self.messages: list[ServerMessage] = []
        self.tokens = 0
        self.offline_calls = 0
        self.signaling = SignalingClient(
            url, self.hello, handler or self.handle, name="test", on_offline=self.offline, **options
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def hello(self) -> Hello:
        self.tokens += 1
        return Hello(token=f"token-{self.tokens}")

    async def handle(self, message: ServerMessage) -> None:
        self.messages.append(message)

    async def offline(self) -> None:
        self.offline_calls += 1

    def start(self) -> "Client":
        self.task = asyncio.create_task(self.signaling.run(self.stop))
        return self

    async def finish(self, timeout: float = 5.0) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_hello_welcome_and_typed_messages_to_the_handler() -> None:
    offer = SessionOffer(session_id="s1", sdp="v=0 offer", ice_servers=[])

    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        await socket.send(offer.text())
        await socket.send(
            '{"type":"status","id":"r1","ok":false,"error":{"code":"forbidden","message":"no"}}'
        )
        await c.listen(socket)

    async with cloud(script) as c:
        client = Client(c.url).start()
        await until(lambda: len(client.messages) == 2)
        assert client.signaling.online.is_set()
        assert client.signaling.welcome is not None
        assert client.signaling.welcome.connection_id == "i1.c1"
        assert c.hellos == [{"type": "hello", "token": "token-1"}]
        assert client.messages[0] == offer
        assert isinstance(client.messages[1], Status)
        assert client.messages[1].error is not None
        assert client.messages[1].error.code == "forbidden"
        assert await client.signaling.send(SessionAnswer(session_id="s1", sdp="v=0 answer"))
        await until(lambda: len(c.received) == 1)
        assert c.received == [{"type": "session.answer", "session_id": "s1", "sdp": "v=0 answer"}]
        await client.finish()
    assert not client.signaling.online.is_set()
    assert c.close_codes == [1000]  # the client closed normally on stop
    assert client.offline_calls == 1
    stats = client.signaling.stats
    assert (stats.connects, stats.reconnects, stats.errors, stats.skipped) == (1, 0, 0, 0)
    assert not await client.signaling.send(Pong())  # offline: dropped


async def test_heartbeat_pings_and_answers_the_servers_ping() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket, heartbeat_s=1)
        await socket.send(Ping(id="srv").text())
        await socket.send(Pong().text())  # not for the handler
        await c.listen(socket)

    async with cloud(script) as c:
        client = Client(c.url).start()
        await until(lambda: {"type": "ping"} in c.received, timeout=3)
        assert c.received[0] == {"type": "pong", "id": "srv"}
        assert client.messages == []
        await client.finish()


async def test_go_away_reconnects_after_its_delay_with_a_fresh_hello() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        if n == 0:
            await socket.send(GoAway(reconnect_after_ms=300, reason="server_shutdown").text())
        await c.listen(socket)

    async with cloud(script) as c:
        # The backoff would wait up to 10 s: the reconnection follows go_away's delay.
        client = Client(c.url, backoff_first_s=10.0).start()
        await until(lambda: len(c.hellos) == 2)
        gap = c.opened[1] - c.opened[0]
        assert 0.3 <= gap < 2.0
        assert [h["token"] for h in c.hellos] == ["token-1", "token-2"]
        await until(lambda: client.signaling.online.is_set())
        assert client.messages == []  # go_away is the client's business
        await client.finish()
    stats = client.signaling.stats
    assert (stats.connects, stats.reconnects, stats.errors) == (2, 1, 0)
    assert client.offline_calls == 2
    assert c.close_codes[0] == 1000  # the client closed the first one itself


def test_backoff_doubles_to_its_maximum_with_full_jitter() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(7))
    caps, delays = [], []
    for _ in range(200):
        caps.append(backoff.cap_s)
        delays.append(backoff.next())
    assert caps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert min(delays[3:]) < 0.5 < 3.5 < max(delays[3:])  # full jitter: the whole range
    backoff.reset()
    assert backoff.cap_s == 0.5


class RecordingBackoff(Backoff):
    def __init__(self, first_s: float, max_s: float) -> None:
        super().__init__(first_s, max_s)
        self.waits: list[tuple[float, float]] = []  # (delay, its bound)

    def next(self) -> float:
        cap = self.cap_s
        delay = super().next()
        self.waits.append((delay, cap))
        return delay


async def test_failed_attempts_back_off_within_the_jitter_bounds() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await socket.recv()
        await socket.close(1011, "internal error")  # refused before the welcome

    async with cloud(script) as c:
        client = Client(c.url)
        backoff = client.signaling.backoff = RecordingBackoff(0.05, 0.4)
        client.start()
        await until(lambda: len(c.opened) >= 7, timeout=10)
        await client.finish()
    assert [cap for _, cap in backoff.waits[:6]] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    for i, (delay, cap) in enumerate(backoff.waits[:6]):
        assert 0 <= delay <= cap
        gap = c.opened[i + 1] - c.opened[i]
        assert delay <= gap < delay + 1.0  # the wait, plus a connection's life
    assert client.signaling.stats.errors >= 7
    assert not client.signaling.online.is_set()


def refusing(statuses: list[tuple[int, str | None]]) -> Any:
    """A ``process_request`` answering the first upgrades with these (status, Retry-After)
    before the upgrade, as the cloud refuses past its admission limit; then upgrading."""
    left = list(statuses)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if not left:
            return None
        status, retry_after = left.pop(0)
        response = connection.respond(status, "busy\n")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    return process_request


async def test_a_503s_retry_after_is_waited_plus_jitter_and_the_backoff_does_not_grow() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await socket.wait_closed()

    c = Cloud(script)
    async with serve(c.handle, "127.0.0.1", 0, process_request=refusing([(503, "7")])) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/ws/v1/device", backoff_first_s=0.05).start()
        await until(lambda: client.signaling.next_delay_s is not None)
        await client.finish()
    delay = client.signaling.next_delay_s
    assert delay is not None
    assert 7 <= delay <= 7 + TOLD_JITTER_S
    assert client.signaling.backoff.cap_s == 0.05  # the refusal did not double it
    assert client.signaling.stats.errors == 1
    assert client.tokens == 0  # refused before the upgrade: no hello was made


async def test_a_retry_after_past_the_bound_is_capped_and_without_one_the_backoff_applies() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        await socket.wait_closed()

    c = Cloud(script)
    refusals = refusing([(503, "3600"), (503, None), (503, "soon")])
    async with serve(c.handle, "127.0.0.1", 0, process_request=refusals) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/ws/v1/device")
        backoff = client.signaling.backoff = RecordingBackoff(0.05, 0.4)
        backoff.max_s = 0.3  # the cap of a Retry-After too, so the test stays short
        client.start()
        await until(lambda: client.signaling.online.is_set(), timeout=10)
        await client.finish()
    # 3600 s is capped to the bound plus jitter; no header, or not a number: the backoff
    assert len(backoff.waits) == 2
    assert client.signaling.stats.errors == 3


def test_retry_after_is_read_from_a_refused_upgrade_only() -> None:
    def refused(status: int, value: str | None) -> InvalidStatus:
        headers = Headers() if value is None else Headers({"Retry-After": value})
        return InvalidStatus(Response(status, "x", headers))

    assert retry_after(refused(503, "4")) == 4.0
    assert retry_after(refused(429, " 0 ")) == 0.0
    assert retry_after(refused(503, None)) is None
    assert retry_after(refused(503, "Wed, 21 Oct 2026 07:28:00 GMT")) is None
    assert retry_after(refused(500, "4")) is None
    assert retry_after(OSError("refused")) is None
    backoff = Backoff(0.5, 30.0, random.Random(3))
    waits = [backoff.told(12) for _ in range(200)]
    assert all(12 <= w <= 12 + TOLD_JITTER_S for w in waits)
    assert max(waits) - min(waits) > TOLD_JITTER_S / 2  # spread, not one instant
    assert 30 <= backoff.told(3600) <= 30 + TOLD_JITTER_S
    assert backoff.cap_s == 0.5


async def test_a_clean_connection_resets_the_backoff() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        if n < 3:
            await socket.recv()
            await socket.close(1011, "internal error")
            return
        await c.hello(socket)
        await socket.close()  # a normal close after the welcome: no failure

    async with cloud(script) as c:
        client = Client(c.url, backoff_first_s=0.05)
        client.start()
        await until(lambda: len(c.opened) >= 5, timeout=10)
        await client.finish()
    assert client.signaling.stats.errors == 3
    assert client.signaling.backoff.cap_s <= 0.1  # reset by connection 4, one wait since


async def test_a_welcome_ends_the_run_of_failures() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        if n < 3:
            await socket.recv()
            await socket.close(1011, "internal error")  # refused before the welcome
            return
        await c.hello(socket)
        await socket.close(1011, "internal error")  # welcomed, then dropped abnormally

    async with cloud(script) as c:
        client = Client(c.url)
        backoff = client.signaling.backoff = RecordingBackoff(0.05, 0.4)
        client.start()
        await until(lambda: len(c.opened) >= 6, timeout=10)
        await client.finish()
    caps = [cap for _, cap in backoff.waits[:5]]
    assert caps == [0.05, 0.1, 0.2, 0.05, 0.05]  # after each welcome: the first wait again


@pytest.mark.parametrize("welcomed", [True, False])
async def test_close_code_4404_stops_for_good(welcomed: bool) -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        if welcomed:
            await c.hello(socket)
        else:
            await socket.recv()  # a removed camera's key: refused before the welcome
        await socket.close(4404, "device removed")

    async with cloud(script) as c:
        client = Client(c.url, backoff_first_s=0.01).start()
        assert client.task is not None
        await asyncio.wait_for(client.task, 5)  # returns by itself: stop is never set
        assert client.signaling.removed
        assert len(c.opened) == 1
    stats = client.signaling.stats
    assert (stats.connects, stats.reconnects, stats.errors) == (int(welcomed), 0, 0)


async def test_close_code_4404_is_an_ordinary_drop_for_a_relay() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        if n == 0:
            await socket.close(4404, "device removed")
        else:
            await c.listen(socket)

    async with cloud(script) as c:
        client = Client(c.url, backoff_first_s=0.01, stop_on_removed=False).start()
        await until(lambda: len(c.hellos) == 2)
        assert not client.signaling.removed
        await client.finish()
    assert client.signaling.stats.errors == 1


async def test_a_frame_that_does_not_decode_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    end = SessionEnd(session_id="s1", reason="peer_hangup")

    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        await socket.send("not json")
        await socket.send('{"type":"camera.reboot","id":"1"}')  # a type it does not know
        await socket.send('{"type":"session.end","reason":"timeout"}')  # no session_id
        await socket.send('{"type":"go_away","reconnect_after_ms":-1}')  # an invalid value
        await socket.send(b"\x00\x01")
        await socket.send(end.text())
        await c.listen(socket)

    caplog.set_level(logging.INFO, logger="peer.signaling")
    async with cloud(script) as c:
        client = Client(c.url).start()
        await until(lambda: len(client.messages) == 1)
        assert client.messages == [end]
        assert client.signaling.online.is_set()  # the connection goes on
        await client.finish()
    stats = client.signaling.stats
    assert (stats.connects, stats.errors, stats.skipped) == (1, 0, 5)
    skipped = [r.getMessage() for r in caplog.records if "skipped a frame" in r.getMessage()]
    assert len(skipped) == 5
    assert "unknown message type 'camera.reboot'" in skipped[1]


async def test_a_failing_handler_is_logged_and_the_next_message_still_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        await socket.send(SessionEnd(session_id="boom", reason="timeout").text())
        await socket.send(SessionEnd(session_id="s2", reason="timeout").text())
        await c.listen(socket)

    received: list[str] = []

    async def handle(message: ServerMessage) -> None:
        assert isinstance(message, SessionEnd)
        if message.session_id == "boom":
            raise RuntimeError("handler bug")
        received.append(message.session_id)

    async with cloud(script) as c:
        client = Client(c.url, handle).start()
        await until(lambda: received == ["s2"])
        await client.finish()
    assert "handling session.end failed" in caplog.text
    assert client.signaling.stats.connects == 1


async def test_while_online_runs_for_each_connection_and_is_cancelled_with_it() -> None:
    async def script(socket: ServerConnection, n: int) -> None:
        await c.hello(socket)
        await asyncio.sleep(0.2)
        if n == 0:
            await socket.close(1011, "internal error")
        else:
            await c.listen(socket)

    runs: list[str] = []

    async def while_online() -> None:
        runs.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("cancelled")

    async with cloud(script) as c:
        client = Client(c.url, backoff_first_s=0.01, while_online=while_online).start()
        await until(lambda: runs == ["started", "cancelled", "started"])
        await client.finish()
    assert runs == ["started", "cancelled", "started", "cancelled"]
