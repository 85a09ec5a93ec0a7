"""The WebSocket edge of the hub: sockets and the bus in, the hub's deliveries out.

``/ws/v1/device``, ``/ws/v1/client`` and ``/ws/v1/relay``. The first frame must be
``hello`` within 5 s; a connection that fails to authenticate is closed with 4401 and
never touches the hub, so it cannot disturb a camera's live connection; one that cannot be
made reachable now (the bus is down) is closed with 1013, try again later. Everything the
hub decides comes back as deliveries that :meth:`Signaling.execute` carries out: frames to
local sockets, envelopes on the bus, presence and session records (and the sides'
``session.stats``) in the database.

Access changes reach the hub from three sides, and the first one wins: the route that made
the change (:meth:`Signaling.enforce`), the broadcast channel, and the database record that
every instance reads every ``ACCESS_POLL_S`` — so a change is enforced everywhere within
about a second even when the bus lost its broadcast.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from beanie import PydanticObjectId
from pymongo.errors import PyMongoError
from starlette.websockets import WebSocketDisconnect

from cloud import metrics
from cloud.analysis import assignment
from cloud.analysis.orders import RelayOrders
from cloud.analysis.threads import end_threads_of
from cloud.auth.hello import HelloAuth
from cloud.auth.signins import SignIns
from cloud.auth.tokens import AccessTokens, UserPrincipal
from cloud.devices.access import Action, authorize, binding
from cloud.devices.models import AccessChange
from cloud.errors import CloudError, Unavailable, outage_unavailable
from cloud.ice import ice_servers
from cloud.logs import set_principal
from cloud.relays import registry
from cloud.settings import Settings
from cloud.signaling import envelopes
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
from cloud.signaling.envelopes import Access, Gone, Push, Snapshot
from cloud.signaling.hub import Hub
from cloud.signaling.identity import DeviceAssertions
from cloud.signaling.models import keep_record, keep_stats
from cloud.signaling.presence import CameraPresence
from cloud.signaling.sessions import Limits
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    DevicePresence,
    EventPush,
    Message,
    RelayLoad,
    SessionRequest,
    Status,
    StatusError,
    Welcome,
    decode,
    request_id,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
TICK_S = 1.0
SWEEP_S = 2.0
ACCESS_POLL_S = 0.5
ASSIGN_S = 1.0  # analysis assignment (cloud.analysis), sooner when a camera reports motion
# How far before the last read access changes are read again: covers the clocks of
# instances that differ and a record that became visible after a read had begun.
ACCESS_LOOKBACK_S = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


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
        self.presence = CameraPresence(self.hub.cameras, bus, self._push_presence)
        self._access_read_at = _now()
        self._tasks: list[asyncio.Task[None]] = []
        self._assign_soon = asyncio.Event()
        self._unwelcomed: dict[str, list[Message | dict[str, Any]]] = {}  # see welcome()
        self.orders = RelayOrders()  # the relay.assign each relay connection was sent
        # Presence lives presence_ttl_s unless refreshed (every quarter of it); clients are
        # asked to send an application ping every heartbeat_s.
        self.presence_ttl_s = float(settings.presence_ttl_s)
        self.heartbeat_s = max(1, settings.presence_ttl_s // 3)
        self.refresh_s = self.presence_ttl_s / 4
        self._lock = asyncio.Lock()  # the hub is one state machine: one step at a time
        self.draining = False

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.on_gap(self._bus_gap)
        await self.bus.subscribe(BROADCAST, self._handler(BROADCAST))
        self._tasks = [
            asyncio.create_task(self._every(TICK_S, self._tick), name="hub-tick"),
            asyncio.create_task(self._every(SWEEP_S, self._sweep), name="presence-sweep"),
            asyncio.create_task(
                self._every(self.refresh_s, self._refresh), name="presence-refresh"
            ),
            asyncio.create_task(self._every(ACCESS_POLL_S, self._read_access), name="access"),
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

    async def _refresh(self) -> None:
        """This instance is alive: keep the presence of its cameras from expiring.

        A camera's connection is live while it answers WebSocket pings (uvicorn closes it
        otherwise), so the instance, not the camera, refreshes presence. ``last_seen`` is
        written when presence changes only: one database write per camera per refresh
        stalled the database at a few thousand cameras (bench/signaling.py).
        """
        cameras = list(self.hub.cameras.items())
        relays = [
            (f"relay:{c.principal}", c.id)
            for c in self.hub.connections.values()
            if c.role == "relay"
        ]
        # Relays first: a relay whose lease runs out in a long round is taken for dead by
        # every instance (its relayed sessions and event threads end; soak finding 2).
        for device_id, conn in relays + cameras:
            await self.bus.set_presence(device_id, conn, self.presence_ttl_s)
        await self.presence.repair(cameras)

    async def _sweep(self) -> None:
        """Presence that expired without a clear means the camera's instance died."""
        for device_id in await self.bus.claim_expired_presence():
            log.info("presence of %s expired", device_id)
            await self._publish(Publish(BROADCAST, Gone(device_id)))
            if device_id.startswith("relay:"):  # the relay's instance died
                relay_id = device_id.removeprefix("relay:")
                await registry.expired(relay_id)
                await end_threads_of(relay_id, self.push)
            else:
                await self.presence.expired(device_id)

    async def _read_access(self) -> None:
        """Apply the access changes recorded lately, whether or not the bus brought them."""
        started = _now()
        since = self._access_read_at - timedelta(seconds=ACCESS_LOOKBACK_S)
        for change in await AccessChange.find(AccessChange.at >= since).to_list():
            if str(change.id) not in self.hub.revocations.changes:  # read again: known
                await self._apply_access(_access_envelope(change))
        self._access_read_at = started

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
        """Carry out deliveries in order; an error is logged and the next one goes on, but
        ``strict`` stops at an unavailable bus and raises :class:`BusUnavailable`."""
        for d in deliveries:
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
                        await self._camera_presence(d)
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

    async def _camera_presence(self, change: PresenceChanged) -> None:
        if change.device_id.startswith("relay:"):  # relays: presence only, for liveness
            if change.online:
                await self.bus.set_presence(change.device_id, change.conn, self.presence_ttl_s)
            else:
                relay_id = change.device_id.removeprefix("relay:")
                await self.bus.clear_presence(change.device_id, change.conn)
                await registry.unregister(relay_id, change.conn)
                await end_threads_of(relay_id, self.push)
            return
        if change.online:
            await self.bus.set_presence(change.device_id, change.conn, self.presence_ttl_s)
            await self.presence.online(change.device_id, change.conn)
            return
        try:
            await self.bus.clear_presence(change.device_id, change.conn)
        finally:  # the database's view does not wait for the bus
            await self.presence.offline(change.device_id, change.conn)

    async def _push_presence(
        self, device_id: str, online: bool, seen: datetime, users: list[PydanticObjectId]
    ) -> None:
        """Push presence to the device's owner and viewers (``users``, read by
        cloud.signaling.presence with its write), and nobody else."""
        message = DevicePresence(device_id=device_id, online=online, last_seen=seen)
        await self.push(users, message)

    async def push(self, users: list[PydanticObjectId], message: Message | EventPush) -> None:
        for user in users:
            await self._publish(Publish(user_channel(str(user)), Push(message.dump())))

    # changes of access, from the REST routes ----------------------------------------------------

    async def enforce(self, change: AccessChange) -> None:
        """Apply a recorded access change here now, and broadcast it to the other instances.

        The broadcast only makes it sooner: without it they read the record within
        ``ACCESS_POLL_S``, so an unavailable bus is no error here.
        """
        envelope = _access_envelope(change)
        await self._apply_access(envelope)
        try:
            await self.bus.publish(BROADCAST, envelopes.encode(envelope))
        except BusUnavailable:
            metrics.BUS_PUBLISH_ERRORS.inc()
            log.info(
                "bus unavailable: instances read access change %s from the database", change.id
            )

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
            try:
                with outage_unavailable():
                    deliveries = await self._request(conn, role, principal, message)
            except Unavailable as exc:
                # The database is away (issue 16): answer, so the app can say "try again",
                # rather than let the request go unanswered until the app's own timeout.
                log.warning("session.request %s not served: %s", message.id, exc.message)
                error = StatusError(code=exc.code, message=exc.message)
                deliveries = [Send(conn, Status(id=message.id, ok=False, error=error))]
        elif isinstance(message, RelayLoad) and role == "relay":
            await registry.report(principal, conn, message)
            return
        else:
            async with self._lock:
                deliveries = self.hub.receive(conn, message, time.monotonic())
        await self.execute(deliveries)

    async def _request(
        self, conn: str, role: Role, principal: str, request: SessionRequest
    ) -> list[Delivery]:
        if role == "relay":
            # A relay watches a camera while it serves a viewer of it, or analyses it.
            async with self._lock:
                grants = self.hub.relay_serves(conn, request.device_id)
            if grants is None:
                device = await assignment.assigned_to(principal, request.device_id)
                grants = None if device is None else (binding(device),)
            async with self._lock:
                if grants is not None:
                    return self.hub.request_session(conn, request, time.monotonic(), None, grants)
                return self.hub.strike(
                    conn,
                    request.id,
                    ErrorCode.FORBIDDEN,
                    "this relay neither serves a viewer of it nor analyses it",
                )
        if role != "user":
            async with self._lock:
                return self.hub.strike(
                    conn, request.id, ErrorCode.FORBIDDEN, "only viewers request sessions"
                )
        try:
            access = await authorize(
                UserPrincipal(PydanticObjectId(principal), ""), request.device_id, Action.VIEW
            )
        except CloudError as exc:
            return [
                Send(
                    conn,
                    Status(
                        id=request.id,
                        ok=False,
                        error=StatusError(code=exc.code, message=exc.message),
                    ),
                )
            ]
        relay: tuple[str, str] | None = None
        if request.mode == "relay":
            node = await registry.allocate(request.device_id)
            if node is None:
                error = StatusError(
                    code=ErrorCode.UNAVAILABLE, message="no relay node is available"
                )
                return [Send(conn, Status(id=request.id, ok=False, error=error))]
            relay = (node.relay_id, node.connection_id)
        # Mode "auto" starts peer to peer; the client asks again with "relay" when ICE fails
        # or takes too long (it alone sees its network), as device_sim.viewer and web/ do.
        async with self._lock:
            return self.hub.request_session(conn, request, time.monotonic(), relay, access.grants)


def _access_envelope(change: AccessChange) -> Access:
    return Access(str(change.id), str(change.device_id or ""), tuple(change.grants), change.reason)


def refusal(exc: Exception) -> tuple[int, str]:
    """The close code and reason for a connection refused before its welcome."""
    if isinstance(exc, Unavailable):
        return CLOSE_TRY_AGAIN, "try again later"
    return CLOSE_AUTH, "authentication failed"
