"""The WebSocket edge of the hub: sockets and the bus in, the hub's deliveries out.

``/ws/v1/device``, ``/ws/v1/client`` and ``/ws/v1/relay``. The first frame must be
``hello`` within 5 s; a connection that fails to authenticate is closed with 4401 and
never touches the hub, so it cannot disturb a camera's live connection; one that cannot be
made reachable now (the bus is down) is closed with 1013, try again later. Everything the
hub decides comes back as deliveries that :meth:`Signaling.execute` carries out: frames to
local sockets, envelopes on the bus, presence and session records (and the sides'
``session.stats``) in the database.

Presence (cloud.signaling.presence), access changes (cloud.signaling.access_changes) and
the decision on a ``session.request`` (cloud.signaling.session_requests) have modules of
their own; this one runs their rounds and carries out what they ask of the hub.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from beanie import PydanticObjectId
from pymongo.errors import PyMongoError
from starlette.websockets import WebSocketDisconnect

from cloud import metrics
from cloud.analysis import assignment
from cloud.analysis.orders import RelayOrders
from cloud.auth.hello import HelloAuth
from cloud.auth.signins import SignIns
from cloud.auth.tokens import AccessTokens
from cloud.devices.models import AccessChange
from cloud.errors import Unavailable
from cloud.ice import ice_servers
from cloud.logs import set_principal
from cloud.relays import registry
from cloud.settings import Settings
from cloud.signaling import envelopes, session_requests
from cloud.signaling.access_changes import ACCESS_POLL_S, AccessChanges
from cloud.signaling.bus import Bus, BusUnavailable
from cloud.signaling.deliveries import (
    BROADCAST,
    CLOSE_AUTH,
    CLOSE_TRY_AGAIN,
    Close,
    Delivery,
    MotionReport,
    PresenceChanged,
    Publish,
    Record,
    Role,
    Send,
    StatsReport,
    Subscribe,
    user_channel,
)
from cloud.signaling.envelopes import Access, Push, Snapshot
from cloud.signaling.hub import Hub
from cloud.signaling.identity import DeviceAssertions
from cloud.signaling.models import keep_record, keep_stats
from cloud.signaling.presence import Presence
from cloud.signaling.sessions import Limits
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    EventPush,
    Message,
    RelayLoad,
    SessionRequest,
    Welcome,
    decode,
    request_id,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
TICK_S = 1.0
SWEEP_S = 2.0
ASSIGN_S = 1.0  # analysis assignment (cloud.analysis), sooner when a camera reports motion
STORED = (PresenceChanged, Record, StatsReport, MotionReport)  # deliveries that write the database


class Socket(Protocol):
    """What the hub needs of a connection: a Starlette WebSocket or a camera's socket."""

    @property
    def is_open(self) -> bool:
        """Whether frames can still be sent."""

    async def send_text(self, text: str) -> None:
        """Send one frame; raise OSError, RuntimeError or TimeoutError when the peer cannot
        take it (within ``SEND_TIMEOUT_S``)."""

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; never raises, also when the peer is gone already."""


class Signaling:
    """Owns the hub, its bus subscriptions, the local sockets and the periodic tasks."""

    def __init__(
        self, settings: Settings, bus: Bus, access_tokens: AccessTokens, instance: str
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.access_tokens = access_tokens
        self.assertions = DeviceAssertions(settings.public_url, bus)
        limits = Limits(
            sdp_per_s=settings.sdp_per_s,
            ice_per_s=settings.ice_per_s,
            viewers_per_camera=settings.viewers_per_camera,
        )
        self.hub = Hub(instance, lambda p: ice_servers(settings, p), limits)
        self.signins = SignIns(lambda grant: self.hub.revocations.any((grant,)))
        self.hellos = HelloAuth(access_tokens, self.signins, self.assertions, settings.relay_secret)
        self.sockets: dict[str, Socket] = {}
        self._attached_at: dict[str, float] = {}  # conn -> time.monotonic(), for _bus_gap
        self.access = AccessChanges(bus, self.hub.revocations, self._apply_access)
        self._tasks: list[asyncio.Task[None]] = []
        self._assign_soon = asyncio.Event()
        self._unwelcomed: dict[str, list[Message | dict[str, Any]]] = {}  # see welcome()
        self.orders = RelayOrders()  # the relay.assign each relay connection was sent
        # Presence lives presence_ttl_s unless refreshed (every quarter of it); clients are
        # asked to send an application ping every heartbeat_s.
        ttl_s = float(settings.presence_ttl_s)
        self.presence = Presence(self.hub, bus, ttl_s, self.push, self._publish)
        self.heartbeat_s = max(1, settings.presence_ttl_s // 3)
        self.refresh_s = ttl_s / 4
        self._lock = asyncio.Lock()  # the hub is one state machine: one step at a time
        self.draining = False

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.on_gap(self._bus_gap)
        await self.bus.subscribe(BROADCAST, self._handler(BROADCAST))
        self._tasks = [
            asyncio.create_task(self._every(TICK_S, self._tick), name="hub-tick"),
            asyncio.create_task(self._every(SWEEP_S, self.presence.sweep), name="presence-sweep"),
            asyncio.create_task(
                self._every(self.refresh_s, self.presence.refresh), name="presence-refresh"
            ),
            asyncio.create_task(
                self._every(self.refresh_s, self.presence.repair), name="presence-repair"
            ),
            asyncio.create_task(self._every(ACCESS_POLL_S, self.access.read), name="access"),
            asyncio.create_task(
                self._every(ASSIGN_S, self._assign, self._assign_soon), name="analysis"
            ),
        ]

    async def drain(self) -> None:
        """Tell every local connection to go away and close it (SIGTERM, shutdown)."""
        if self.draining:
            return
        self.draining = True
        async with self._lock:
            deliveries = self.hub.drain()
        await self.execute(deliveries)
        log.info("signaling drained")

    async def stop(self) -> None:
        await self.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(
        self,
        period: float,
        step: Callable[[], Awaitable[None]],
        sooner: asyncio.Event | None = None,
    ) -> None:
        """Run ``step`` every ``period`` (or as soon as ``sooner`` is set), logging failures."""
        while True:
            if sooner is None:
                await asyncio.sleep(period)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await sooner.wait()
                sooner.clear()
            try:
                await step()
            except BusUnavailable:
                log.warning("bus unavailable during %s", step.__name__)
            except PyMongoError as exc:
                log.warning("database unavailable during %s: %s", step.__name__, exc)
            except Exception:
                log.exception("periodic %s failed", step.__name__)

    async def _tick(self) -> None:
        async with self._lock:
            deliveries = self.hub.tick(time.monotonic())
        await self.execute(deliveries)

    async def ask_snapshot(self, channel: str, request_id: str, device_id: str) -> None:
        """Send a snapshot request to the camera or relay node holding ``channel``."""
        await self._publish(Publish(channel, Snapshot(request_id, device_id)))

    def reassign(self) -> None:
        """Run the analysis assignment now rather than at its next period (arming changed)."""
        self._assign_soon.set()

    async def _assign(self) -> None:
        """Assign armed cameras to relay nodes, and tell the nodes connected here theirs."""
        relays = {c.id: c.principal for c in self.hub.connections.values() if c.role == "relay"}
        await self.orders.step(relays, self._send)

    async def _apply_access(self, envelope: Access) -> None:
        async with self._lock:
            deliveries = self.hub.deliver(BROADCAST, envelope, time.monotonic())
        if deliveries:
            log.info("access change %s applied: %s", envelope.id, envelope.grants)
        await self.execute(deliveries)

    # the bus --------------------------------------------------------------------------------

    def _handler(self, channel: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def handle(wire: dict[str, Any]) -> None:
            try:
                envelope = envelopes.decode(wire)
            except envelopes.BadEnvelope as exc:  # from an instance of another version
                log.warning("ignored on %s: %s", channel, exc)
                return
            async with self._lock:
                deliveries = self.hub.deliver(channel, envelope, time.monotonic())
            await self.execute(deliveries)

        return handle

    async def _bus_gap(self, lost_at: float, held: bool) -> None:
        """The bus lost this instance's subscription at ``lost_at`` (``held``: and holds it
        again now).

        Whatever other instances publish for the connections here meanwhile (presence, event
        pushes, session messages) is lost, so the user connections that were here then are
        closed (:meth:`Hub.resync`), at once so that their apps know (and reconnect, and read
        the state afresh, once the bus is back: a hello is refused with 1013 until then), and
        again when the subscription is back, for any that the first round missed.
        Connections attached since held their channels only from the resubscription on.
        """
        conns = [c for c, at in self._attached_at.items() if at < lost_at]
        async with self._lock:
            deliveries = self.hub.resync(conns)
            if held:
                deliveries += self.hub.orphans(lost_at)
        log.warning(
            "bus subscription %s: closing %d user connections to resync",
            f"back after {time.monotonic() - lost_at:.1f} s" if held else "lost",
            sum(isinstance(d, Close) for d in deliveries),
        )
        await self.execute(deliveries)

    async def _publish(self, publish: Publish) -> None:
        try:
            receivers = await self.bus.publish(publish.channel, envelopes.encode(publish.envelope))
        except BusUnavailable:
            metrics.BUS_PUBLISH_ERRORS.inc()
            log.warning("bus unavailable: dropped %s to %s", publish.envelope.kind, publish.channel)
            receivers = 0
        if receivers == 0 and publish.channel != BROADCAST:
            async with self._lock:
                deliveries = self.hub.unrouted(publish)
            await self.execute(deliveries)

    # carrying out deliveries ------------------------------------------------------------------

    async def execute(self, deliveries: list[Delivery], *, strict: bool = False) -> None:
        """Carry out deliveries in order, the database's writes last (a slow database then
        delays no message: in the soak a revocation's ``session.end`` waited behind a session
        record's write); an error is logged and the next one goes on, but ``strict`` stops at
        an unavailable bus and raises :class:`BusUnavailable`."""
        for d in sorted(deliveries, key=lambda d: isinstance(d, STORED)):  # stable
            try:
                match d:
                    case Send():
                        await self._send(d.conn, d.message)
                    case Publish():
                        await self._publish(d)
                    case Close():
                        await self._close(d.conn, d.code, d.reason)
                    case Subscribe():
                        if d.on:
                            await self.bus.subscribe(d.channel, self._handler(d.channel))
                        else:
                            await self.bus.unsubscribe(d.channel)
                    case PresenceChanged():
                        await self.presence.changed(d)
                    case Record():
                        await keep_record(d)
                    case StatsReport():
                        await keep_stats(d)
                    case MotionReport():
                        await assignment.report_motion(d.device_id, d.active)
                        self.reassign()
            except BusUnavailable:
                if strict:
                    raise
                log.warning("bus unavailable while carrying out %s", type(d).__name__)
            except PyMongoError as exc:
                log.warning("database unavailable while carrying out %s: %s", d, exc)
            except Exception:
                log.exception("failed to carry out %s", type(d).__name__)

    async def _send(self, conn: str, message: Message | dict[str, Any]) -> None:
        held = self._unwelcomed.get(conn)
        if held is not None:
            held.append(message)
            return
        socket = self.sockets.get(conn)
        if socket is None or not socket.is_open:
            return
        text = message.text() if isinstance(message, Message) else json.dumps(message)
        try:
            await socket.send_text(text)
        except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
            log.info("connection %s could not take a frame; closing it", conn)
            await self._close(conn, 1008, "too slow")

    async def _close(self, conn: str, code: int, reason: str) -> None:
        socket = self.sockets.get(conn)
        if socket is not None:
            await socket.close(code, reason)

    async def push(self, users: list[PydanticObjectId], message: Message | EventPush) -> None:
        for user in users:
            await self._publish(Publish(user_channel(str(user)), Push(message.dump())))

    # changes of access, from the REST routes ----------------------------------------------------

    async def enforce(self, change: AccessChange) -> None:
        """Apply a recorded access change here now, and broadcast it to the other instances
        (:meth:`AccessChanges.enforce`)."""
        await self.access.enforce(change)

    # connections ----------------------------------------------------------------------------
    #
    # A connection's life, whatever carries it: authenticate its hello, attach it, welcome
    # it, hand it each frame, detach it. cloud.signaling.asgi_socket runs it over a Starlette
    # WebSocket; cloud.signaling.direct_socket runs it straight from the transport.

    def attach(self, socket: Socket, role: Role, principal: str) -> str:
        """Give an authenticated socket its connection id; :meth:`detach` must follow."""
        conn = self.hub.new_connection_id()
        self.sockets[conn] = socket
        self._attached_at[conn] = time.monotonic()
        metrics.CONNECTIONS.labels(role).inc()
        set_principal(role, principal)  # this connection's task: its log lines name it
        log.info("%s %s connected as %s", role, principal, conn)
        return conn

    async def welcome(self, conn: str, role: Role, principal: str, grant: str | None) -> None:
        """Make the connection reachable and welcome it. Raises Unavailable when the bus is
        down: the caller closes the connection (1013) and :meth:`detach` follows."""
        if role == "relay":
            await registry.register(principal, conn)
        # Frames for the connection before its welcome (a push on a channel it just
        # subscribed) wait for it: the welcome is always the first frame.
        self._unwelcomed[conn] = []
        try:
            async with self._lock:
                deliveries = self.hub.connect(conn, role, principal, grant)
            try:
                await self.execute(deliveries, strict=True)
            except BusUnavailable as exc:
                raise Unavailable("signaling is unavailable; try again shortly", 5) from exc
            if conn not in self.hub.connections:
                return  # refused by the hub (a revoked binding) and closed
            # Welcome once the connection's channels are held: reachable from then on.
            welcome = Welcome(
                role=role, principal_id=principal, connection_id=conn, heartbeat_s=self.heartbeat_s
            )
            await self.sockets[conn].send_text(welcome.text())
        finally:
            held = self._unwelcomed.pop(conn, [])
        for message in held:
            await self._send(conn, message)

    async def detach(self, conn: str, role: Role, principal: str) -> None:
        set_principal(role, principal)
        async with self._lock:
            deliveries = self.hub.disconnect(conn)
        await self.execute(deliveries)
        self._attached_at.pop(conn, None)
        if self.sockets.pop(conn, None) is not None:
            metrics.CONNECTIONS.labels(role).dec()
        log.info("%s %s disconnected (%s)", role, principal, conn)

    async def frame(self, conn: str, role: Role, principal: str, text: str | None) -> None:
        """One frame from a welcomed connection (None: a binary frame)."""
        set_principal(role, principal)
        if text is None:
            async with self._lock:
                deliveries = self.hub.strike(
                    conn, None, ErrorCode.MALFORMED_REQUEST, "send text frames"
                )
            await self.execute(deliveries)
            return
        try:
            message = decode(text)
        except ProtocolError as exc:
            async with self._lock:
                deliveries = self.hub.strike(conn, request_id(text), exc.code, exc.message)
            await self.execute(deliveries)
            return
        if isinstance(message, SessionRequest):
            deliveries = await session_requests.serve(
                self.hub, self._lock, conn, role, principal, message
            )
        elif isinstance(message, RelayLoad) and role == "relay":
            await registry.report(principal, conn, message)
            return
        else:
            async with self._lock:
                deliveries = self.hub.receive(conn, message, time.monotonic())
        await self.execute(deliveries)


def refusal(exc: Exception) -> tuple[int, str]:
    """The close code and reason for a connection refused before its welcome."""
    if isinstance(exc, Unavailable):
        return CLOSE_TRY_AGAIN, "try again later"
    return CLOSE_AUTH, "authentication failed"
