"""Signaling connections served straight from the transport, without a task while idle.

A cloud instance holds one WebSocket per camera, and almost all of them are idle. Served as
ASGI, each costs uvicorn's protocol with its receive queue and kept handshake headers, a task
and its chain of middleware coroutines: ~33 KiB of RSS per idle camera, and every frame
passes through that queue and chain (docs/benchmarks.md, "Signaling"). Here a connection is
an :class:`asyncio.Protocol` over the sans-I/O ``websockets`` protocol (the parser uvicorn
uses too), plus the hub's own state. A task runs only while its frames are being handled.

uvicorn takes the class as its WebSocket implementation (``ws=``): it hands over every
upgrade request. The three signaling endpoints are served here; every other path goes on to
uvicorn's own implementation, unchanged. Behaviour is that of :meth:`Signaling.serve`, which
serves the same endpoints under any other ASGI server: the same hello within 5 s, the same
close codes, the same 64 KiB limit and pings.
"""

import asyncio
import logging
import time
from collections import deque
from typing import Any, Final, cast

from starlette.applications import Starlette
from uvicorn.config import WS_PROTOCOLS, Config
from uvicorn.importer import import_from_string
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol

from cloud.errors import CloudError, Unavailable, outage_unavailable
from cloud.signaling.admission import Admission
from cloud.signaling.deliveries import CLOSE_AUTH, Role
from cloud.signaling.server_internals import internals_problems
from cloud.signaling.ws import HELLO_TIMEOUT_S, Signaling, refusal
from protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)
# websockets' own lines ("connection open" for every camera): warnings only, or a reconnect
# storm writes one line per attempt.
ws_log = logging.getLogger(__name__ + ".websockets")
ws_log.setLevel(logging.WARNING)
# A connection refused before its upgrade: no WebSocket handshake, no closing handshake.
BUSY: Final = (
    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {}\r\nContent-Length: 0\r\n"
    "Connection: close\r\n\r\n"
)

ROLES: Final[dict[bytes, Role]] = {
    b"/ws/v1/device": "device",
    b"/ws/v1/client": "user",
    b"/ws/v1/relay": "relay",
}
CLOSE_TIMEOUT_S = 5.0  # for the peer's answer to our close frame
WRITE_LIMIT = 256 * 1024  # bytes the peer has not read yet: past this it is too slow
INBOX_HIGH, INBOX_LOW = 64, 16  # frames waiting: stop reading the socket, read again
PING: Final = b"vc"
# The hellos waiting in this process, and when the refused should come back
# (cloud.signaling.admission). Past its limit a new connection is refused at once with a bare
# 503 before the upgrade: during a reconnect storm the hellos already taken are served in
# time instead of every hello waiting until its camera gives up (the agent waits 10 s for its
# welcome), and in bench/storm.py refusals outnumber connects several times over.
ADMISSION = Admission()


class _Lost:
    """The inbox's last item: the connection is gone."""


LOST: Final = _Lost()


class DirectSocket(asyncio.Protocol):
    """One upgrade request: a signaling endpoint served here, or another path passed on to
    uvicorn's class.

    Subclassed by :func:`websocket_protocol`, which sets the application and that class.
    """

    __slots__ = (
        "_conn",
        "_inbox",
        "_inner",
        "_parts",
        "_ping",
        "_ping_interval",
        "_ping_timeout",
        "_principal",
        "_reading",
        "_role",
        "_saying_hello",
        "_server",
        "_setup",
        "_signaling",
        "_timer",
        "_transport",
        "_worker",
        "_ws",
    )
    _transport: asyncio.Transport  # from connection_made, the first call
    app: Starlette
    inner_class: type[asyncio.Protocol]

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        self._setup: tuple[Config, ServerState, dict[str, Any]] | None = (
            config,
            server_state,
            app_state,
        )
        self._inner: asyncio.Protocol | None = None
        self._server = server_state  # its connections and tasks: uvicorn waits for them
        self._ping_interval = config.ws_ping_interval
        self._ping_timeout = config.ws_ping_timeout
        self._ws: ServerProtocol | None = None
        self._signaling: Signaling | None = None
        self._conn: str | None = None  # the hub's connection id, once welcomed
        self._role: Role = "device"
        self._principal = ""  # the device, user or relay id, once authenticated
        self._inbox: deque[str | _Lost | None] | None = None  # only while frames wait
        self._worker: asyncio.Task[None] | None = None  # only while frames are handled
        self._timer: asyncio.TimerHandle | None = None  # hello, ping, pong or close deadline
        self._ping = False  # a ping awaits its pong
        self._parts: list[bytes] | None = None  # a fragmented message being assembled
        self._reading = True
        self._saying_hello = False  # counted in ADMISSION.waiting

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._ws is not None:
            self._ws.receive_data(data)
            self._handle_events()
        else:  # the upgrade request, as uvicorn rebuilt it
            self._dispatch(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        if self._ws is not None:
            self._ws.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
            return
        self._server.connections.discard(self)
        self._cancel_timer()
        self._hello_done()
        if self._ws is not None and self._ws.handshake_exc is None:
            self._push(LOST)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's shutdown, after the hub drained: close what is still open."""
        if self._ws is not None and self._ws.state is OPEN:
            self._ws.send_close(1012, "server restarting")
            self._flush()
        self._transport.close()

    # the handshake -----------------------------------------------------------------------

    def _dispatch(self, request: bytes) -> None:
        assert self._setup is not None
        config, server_state, app_state = self._setup
        self._setup = None
        role = ROLES.get(request.split(b" ", 2)[1].partition(b"?")[0])
        context = getattr(self.app.state, "context", None)
        if role is None or context is None:
            inner = self.inner_class(  # type: ignore[call-arg]
                config=config, server_state=server_state, app_state=app_state
            )
            self._inner = inner
            inner.connection_made(self._transport)
            inner.data_received(request)
            return
        if ADMISSION.full():
            retry_after = ADMISSION.refuse(time.monotonic())
            self._transport.write(BUSY.format(retry_after).encode())
            self._transport.close()
            return
        self._role, self._signaling = role, context.signaling
        self._ws = ServerProtocol(max_size=config.ws_max_size, logger=ws_log)
        self._ws.receive_data(request)
        self._handle_events()

    def _accept(self, request: Request) -> None:
        assert self._signaling is not None
        ws = self._require_ws()
        response = ws.accept(request)
        ws.send_response(response)
        self._flush()
        if response.status_code != 101:
            return
        # The parser generator keeps the handshake request (~2 KiB) in its frame for as long
        # as the connection lives; a fresh frame parser in the same state drops it.
        ws.parser = Protocol.parse(ws)
        next(ws.parser)
        self._server.connections.add(self)  # type: ignore[arg-type]  # any with shutdown()
        if self._signaling.draining:
            self.close_now(1012, "server restarting")
            return
        ADMISSION.waiting += 1
        self._saying_hello = True
        self._arm(HELLO_TIMEOUT_S, self._hello_timeout)

    # frames in ---------------------------------------------------------------------------

    def _handle_events(self) -> None:
        assert self._ws is not None
        for event in self._ws.events_received():
            if isinstance(event, Request):
                self._accept(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()  # pongs, close answers and protocol errors the parser queued

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG:
            if self._ping and frame.data == PING:
                self._ping = False
                self._arm(self._ping_interval, self._send_ping)
            return
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._parts = [] if frame.opcode is Opcode.TEXT else None
        elif frame.opcode is not Opcode.CONT:
            return  # ping (answered by the parser) and close (handled by the parser)
        if self._parts is not None:
            self._parts.append(bytes(frame.data))
        if not frame.fin:
            return
        parts, self._parts = self._parts, None
        if parts is None:
            self._push(None)  # binary: the hub answers that it wants text
            return
        try:
            self._push(b"".join(parts).decode())
        except UnicodeDecodeError:
            self.close_now(1007, "invalid UTF-8")

    def _push(self, item: str | _Lost | None) -> None:
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(item)
        if self._worker is None:
            # Among uvicorn's tasks, so that shutdown waits for a detach before the
            # application (its database) stops.
            self._worker = asyncio.create_task(self._work(), name=f"{self._role} {self._conn}")
            self._server.tasks.add(self._worker)
            self._worker.add_done_callback(self._server.tasks.discard)
        if len(self._inbox) >= INBOX_HIGH and self._reading:
            self._reading = False
            self._transport.pause_reading()

    async def _work(self) -> None:
        """Hand the waiting frames to the hub in order: hello first, LOST last."""
        assert self._signaling is not None
        signaling = self._signaling
        try:
            while self._inbox:
                item = self._inbox.popleft()
                if not self._reading and len(self._inbox) <= INBOX_LOW and self._is_live():
                    self._reading = True
                    self._transport.resume_reading()
                try:
                    if isinstance(item, _Lost):
                        if self._conn is not None:
                            conn, self._conn = self._conn, None
                            await signaling.detach(conn, self._role, self._principal)
                    elif self._conn is None:
                        await self._hello(signaling, item)
                    else:
                        with outage_unavailable():
                            await signaling.frame(self._conn, self._role, self._principal, item)
                except Unavailable as exc:  # the database is away: this frame is lost
                    log.warning("%s connection %s: frame dropped: %s", self._role, self._conn, exc)
                except Exception:  # the next item (LOST at the latest) must still be handled
                    log.exception("%s connection %s failed", self._role, self._conn)
                    self.close_now(1011, "internal error")
        finally:
            self._worker = None
            if not self._inbox:
                self._inbox = None

    async def _hello(self, signaling: Signaling, text: str | None) -> None:
        try:
            await self._say_hello(signaling, text)
        finally:
            if self._saying_hello:
                ADMISSION.done(time.monotonic())  # handled: it measures the connect rate
            self._hello_done()

    def _hello_done(self) -> None:
        if self._saying_hello:
            self._saying_hello = False
            ADMISSION.waiting -= 1

    async def _say_hello(self, signaling: Signaling, text: str | None) -> None:
        if not self._is_live():
            return  # closed before its hello was handled, or a frame after a refused hello
        self._cancel_timer()
        try:
            if text is None:
                raise ProtocolError(ErrorCode.UNAUTHENTICATED, "the first message must be hello")
            with outage_unavailable():  # the database away: 1013, try again later
                principal, grant = await signaling.hellos.authenticate(self._role, text)
        except (CloudError, ProtocolError) as exc:
            log.info("%s connection refused: %s", self._role, exc.message)
            self.close_now(*refusal(exc))
            return
        if not self._is_live():
            return
        self._principal = principal
        self._conn = signaling.attach(self, self._role, principal)
        self._arm(self._ping_interval, self._send_ping)
        try:
            with outage_unavailable():
                await signaling.welcome(self._conn, self._role, principal, grant)
        except Unavailable as exc:  # the LOST item detaches it
            log.info("%s connection %s refused: %s", self._role, self._conn, exc.message)
            self.close_now(*refusal(exc))
        except RuntimeError:  # gone before its welcome (it gave up waiting): LOST detaches it
            if self._is_live():
                raise
            log.info("%s connection %s left before its welcome", self._role, self._conn)

    def _hello_timeout(self) -> None:
        self._timer = None
        self._hello_done()
        log.info("%s connection refused: no hello within %.0f s", self._role, HELLO_TIMEOUT_S)
        self.close_now(CLOSE_AUTH, "authentication failed")

    # frames out (the hub's Socket) ---------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._is_live()

    async def send_text(self, text: str) -> None:
        if not self._is_live():
            raise RuntimeError("the connection is closed")
        ws = self._require_ws()
        if self._transport.get_write_buffer_size() > WRITE_LIMIT:
            raise OSError("the peer does not read its frames")
        ws.send_text(text.encode())
        self._flush()

    async def close(self, code: int, reason: str) -> None:
        self.close_now(code, reason)

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake; the TCP connection goes when the peer answers."""
        if not self._is_live():
            return
        assert self._ws is not None
        self._ws.send_close(code, reason)
        self._flush()
        self._arm(CLOSE_TIMEOUT_S, self._abort)

    # keepalive and plumbing ----------------------------------------------------------------

    def _send_ping(self) -> None:
        self._timer = None
        if not self._is_live():
            return
        assert self._ws is not None
        self._ping = True
        self._ws.send_ping(PING)
        self._flush()
        self._arm(self._ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._timer = None
        if self._is_live():
            assert self._ws is not None
            log.info("%s connection %s missed its pong", self._role, self._conn)
            self._ws.fail(1011, "keepalive ping timeout")
            self._flush()
            self._abort()

    def _abort(self) -> None:
        self._timer = None
        self._transport.close()

    def _is_live(self) -> bool:
        return self._ws is not None and self._ws.state is OPEN and not self._transport.is_closing()

    def _require_ws(self) -> ServerProtocol:
        assert self._ws is not None, "a signaling connection"
        return self._ws

    def _flush(self) -> None:
        for data in self._require_ws().data_to_send():
            if data:
                self._transport.write(data)
            else:  # the closing handshake is over: the server closes TCP first (RFC 6455 7.1.1)
                self._transport.close()

    def _arm(self, delay: float | None, callback: Any) -> None:
        self._cancel_timer()
        if delay is not None and delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def websocket_protocol(app: Starlette, inner: str = "websockets-sansio") -> type[DirectSocket]:
    """The class to give uvicorn as ``ws``: signaling here, the rest to ``inner``.

    Raises :class:`RuntimeError` when uvicorn or websockets lack what this module uses
    (:func:`internals_problems`): the cloud then fails at start.
    """
    missing = internals_problems()
    if missing:
        raise RuntimeError(
            "uvicorn or websockets changed; direct sockets use: " + "; ".join(missing)
        )
    inner_class = import_from_string(WS_PROTOCOLS.get(inner) or inner)
    attributes = {"__slots__": (), "app": app, "inner_class": inner_class}
    return type("SignalingWebSockets", (DirectSocket,), attributes)
