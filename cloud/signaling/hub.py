"""The signaling hub: pure session routing for one cloud instance.

No sockets, no Redis, no database: the edges (``ws.py``) feed it what happened —
a frame from a local connection, an envelope from the bus, a disconnect, the clock — and
carry out what it returns: :class:`Send` a frame to a local connection, :class:`Publish`
an envelope on a bus channel, :class:`Close` a connection, :class:`Subscribe` to a channel.

Routing. Each camera is reachable on the channel ``dev.<device id>``, held by the instance
where its connection lives; each viewer connection on ``conn.<connection id>``. A session
is known on both sides (cloud.signaling.sides): :class:`ViewerSide` on the viewer's instance,
:class:`CameraSide` on the camera's. The two sides talk only through envelopes
(cloud.signaling.envelopes: open, accepted, offer, answer, ice, end), so the behaviour is the
same whether both connections are on one instance or not. The hub owns the connections, the
channels they hold and the revocations, and hands each session message to its side; after a
gap in the bus it resyncs (cloud.signaling.resync).

Lifecycle (docs/protocol.md): request -> created -> offer -> answer -> ice ... -> end, and
each side's ``session.stats`` once it is connected (kept on the record). Access is decided
by the caller (a database check) before :meth:`Hub.request_session`, which is given
the *grants* that check relied on: the camera's binding (``bind:<device>:<key>``, its
activation with one key) and, for a viewer a camera is shared with, the share
(``share:<id>``). A camera's connection carries its binding. Each instance learns of access
changes (:meth:`Hub.access_changed`: a list of revoked grants) from the database record the
REST route wrote and, sooner, from the broadcast channel; from then on every session and
camera connection resting on a revoked grant ends, and the grant is refused for
a while (:class:`~cloud.signaling.sessions.Revocations`; docs/protocol.md, "Revocation").
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.signaling import resync
from cloud.signaling.deliveries import (
    BROADCAST,
    CLOSE_AUTH,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    Close,
    Delivery,
    MotionReport,
    PresenceChanged,
    Publish,
    Role,
    Send,
    Subscribe,
    conn_channel,
    device_channel,
    user_channel,
)
from cloud.signaling.envelopes import (
    SESSION_ENVELOPES,
    Access,
    End,
    Envelope,
    Gone,
    Open,
    Push,
    SessionEnvelope,
    Snapshot,
    Takeover,
)
from cloud.signaling.sessions import (
    Bucket,
    CameraSide,
    Connection,
    Grants,
    Limits,
    Revocations,
    ViewerSide,
)
from cloud.signaling.sides import Sides
from protocol.errors import ErrorCode
from protocol.messages import (
    ClientMessage,
    DeviceMotion,
    EndReason,
    GoAway,
    IceServer,
    Ping,
    Pong,
    RelaySession,
    SessionAnswer,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionRequest,
    SessionStats,
    SnapshotRequest,
    Status,
    StatusError,
)


@dataclass
class Hub:
    instance: str
    ice_servers: Callable[[str], list[IceServer]]  # ICE servers for a principal, now
    limits: Limits = field(default_factory=Limits)
    connections: dict[str, Connection] = field(default_factory=dict)
    cameras: dict[str, str] = field(default_factory=dict)  # device id -> local connection
    users: dict[str, set[str]] = field(default_factory=dict)  # user id -> local connections
    viewer_sides: dict[str, ViewerSide] = field(default_factory=dict)
    camera_sides: dict[str, CameraSide] = field(default_factory=dict)
    revocations: Revocations = field(default_factory=Revocations)
    sides: Sides = field(init=False, repr=False)  # holds viewer_sides and camera_sides

    def __post_init__(self) -> None:
        self.sides = Sides(
            self.connections,
            self.ice_servers,
            self.limits,
            self.strike,
            self.viewer_sides,
            self.camera_sides,
        )

    # connections ------------------------------------------------------------------------

    def new_connection_id(self) -> str:
        return f"{self.instance}.{secrets.token_urlsafe(9)}"

    def connect(
        self, conn: str, role: Role, principal: str, grant: str | None = None
    ) -> list[Delivery]:
        """A connection authenticated; ``grant`` is what it rests on (a camera's binding, a
        user's sign-in): revoked, the connection is closed."""
        if grant is not None and self.revocations.any((grant,)):
            if role == "device":
                return [Close(conn, CLOSE_REMOVED, "device removed")]
            return [Close(conn, CLOSE_AUTH, "signed out")]
        self.connections[conn] = Connection(
            conn,
            role,
            principal,
            Bucket(self.limits.sdp_per_s),
            Bucket(self.limits.ice_per_s),
            grant,
            stats=Bucket(self.limits.stats_per_s),
        )
        # Only viewers are addressed by connection; a camera is addressed by its device.
        out: list[Delivery] = [] if role == "device" else [Subscribe(conn_channel(conn))]
        if role == "user":
            # Every connection of the user asks for the channel (held already: a no-op), and
            # is welcomed only once it is held: when the subscription a first connection made
            # fails (the bus is down), the bus drops the channel, and a second connection
            # that relied on it would never hear a push.
            self.users.setdefault(principal, set()).add(conn)
            out.append(Subscribe(user_channel(principal)))
        if role == "relay":
            out.append(PresenceChanged(f"relay:{principal}", conn, True))
        if role == "device":
            previous = self.cameras.get(principal)
            if previous is not None:
                out += self._replace_camera(previous, "replaced by a newer connection")
            self.cameras[principal] = conn
            # The camera's earlier connection may live on another instance: it leaves on this.
            out += [
                Publish(device_channel(principal), Takeover(conn)),
                Subscribe(device_channel(principal)),
                PresenceChanged(principal, conn, True),
            ]
        return out

    def disconnect(self, conn: str) -> list[Delivery]:
        info = self.connections.pop(conn, None)
        if info is None:
            return []
        out: list[Delivery] = []
        if info.role != "device":
            out.append(Subscribe(conn_channel(conn), on=False))
        if info.role == "user":
            conns = self.users.get(info.principal, set())
            conns.discard(conn)
            if not conns:
                self.users.pop(info.principal, None)
                out.append(Subscribe(user_channel(info.principal), on=False))
        for side in [s for s in self.viewer_sides.values() if s.viewer == conn]:
            out += self.sides.end_viewer_side(side, "peer_hangup", tell_viewer=False)
        if info.role == "relay":
            out += self.sides.end_camera_sides(conn, "relay_failed")
            out.append(PresenceChanged(f"relay:{info.principal}", conn, False))
        if info.role == "device" and self.cameras.get(info.principal) == conn:
            out += self._release_camera(info.principal, "device_offline")
        return out

    def _release_camera(self, device_id: str, reason: EndReason) -> list[Delivery]:
        """The camera's local connection no longer holds it: its sessions end, it is offline."""
        conn = self.cameras.pop(device_id)
        return [
            *self.sides.end_camera_sides(conn, reason),
            Subscribe(device_channel(device_id), on=False),
            PresenceChanged(device_id, conn, False),
        ]

    def _user_conns(self, user_id: str) -> list[str]:
        return sorted(self.users.get(user_id, ()))

    def _replace_camera(self, conn: str, why: str) -> list[Delivery]:
        out: list[Delivery] = [Send(conn, GoAway(reconnect_after_ms=0, reason=why))]
        out += self.sides.end_camera_sides(conn, "device_offline")
        out.append(Close(conn, CLOSE_REPLACED, why))
        self.connections.pop(conn, None)
        return out

    def resync(self, conns: list[str]) -> list[Delivery]:
        """The bus may have lost messages for ``conns``: their user connections are told
        to reconnect (:func:`cloud.signaling.resync.users`)."""
        return resync.users(self.connections, conns)

    def orphans(self, lost_at: float) -> list[Delivery]:
        """Once the bus is back after a gap from ``lost_at``: sessions here whose viewer is
        elsewhere end (:func:`cloud.signaling.resync.orphans`)."""
        return resync.orphans(self.sides, lost_at)

    def drain(self) -> list[Delivery]:
        """Graceful shutdown: every local connection is told to go away and closed."""
        out: list[Delivery] = []
        for conn in list(self.connections):
            out.append(Send(conn, GoAway(reconnect_after_ms=500, reason="server_shutdown")))
        for side in list(self.viewer_sides.values()):
            out += self.sides.end_viewer_side(side, "server_shutdown", tell_viewer=True)
        for conn in list(self.connections):
            out += self.sides.end_camera_sides(conn, "server_shutdown")
            out.append(Close(conn, 1001, "server shutting down"))
        return out

    # frames from local connections -------------------------------------------------------

    def strike(
        self, conn: str, request_id: str | None, code: ErrorCode, message: str
    ) -> list[Delivery]:
        """A bad frame: answer with a status error; close with 1008 when they keep coming."""
        info = self.connections.get(conn)
        if info is None:
            return []
        info.strikes += 1
        if info.strikes > self.limits.strikes_before_close:
            return [Close(conn, CLOSE_POLICY, "too many invalid messages")]
        return [Send(conn, _error(request_id, code, message))]

    def receive(self, conn: str, message: ClientMessage, now: float) -> list[Delivery]:
        """A decoded frame from a local, authenticated connection (not ``session.request``)."""
        info = self.connections.get(conn)
        if info is None:
            return []
        match message:
            case Ping():
                return [Send(conn, Pong(id=message.id))]
            case Pong():
                return []
            case DeviceMotion() if info.role == "device":
                if (over := info.over_rate(message.type, self.limits, now)) is not None:
                    return self.strike(conn, message.id, ErrorCode.RATE_LIMITED, over)
                out: list[Delivery] = [MotionReport(info.principal, message.active)]
                if message.id:
                    out.append(Send(conn, Status(id=message.id, ok=True)))
                return out
            case SessionOffer() | SessionAnswer() | SessionIce() | SessionStats():
                if (over := info.over_rate(message.type, self.limits, now)) is not None:
                    return self.strike(conn, message.id, ErrorCode.RATE_LIMITED, over)
            case SessionEnd():
                pass
            case _:
                return self.strike(
                    conn,
                    getattr(message, "id", None),
                    ErrorCode.INVALID_REQUEST,
                    f"{message.type} is not expected here",
                )
        served = self.camera_sides.get(getattr(message, "session_id", ""))
        if info.role == "device" or (served is not None and served.camera == info.id):
            return self.sides.from_camera(info, message, now)
        return self.sides.from_viewer(info, message, now)

    def request_session(
        self,
        conn: str,
        request: SessionRequest,
        now: float,
        relay: tuple[str, str] | None = None,
        grants: Grants = (),
    ) -> list[Delivery]:
        """A viewer asks to watch a device it has been authorised to see under ``grants``.

        ``relay`` is (relay id, relay connection id) when the session goes through a relay
        node, which then plays the camera's part towards the viewer.
        """
        info = self.connections.get(conn)
        if info is None:
            return []
        if self.revocations.any(grants):  # revoked after the caller's check read the database
            return [Send(conn, _error(request.id, ErrorCode.DEVICE_NOT_FOUND, "no such device"))]
        return self.sides.request(info, request, now, relay, grants)

    def relay_serves(self, conn: str, device_id: str) -> Grants | None:
        """The camera's binding if relay connection ``conn`` serves a viewer of ``device_id``
        right now, else None (:meth:`Sides.relay_serves`)."""
        return self.sides.relay_serves(conn, device_id)

    def unrouted(self, publish: Publish) -> list[Delivery]:
        """Nobody holds the channel a publish went to: the peer is gone."""
        return self.sides.unrouted(publish)

    # envelopes from the bus ---------------------------------------------------------------

    def deliver(self, channel: str, envelope: Envelope, now: float) -> list[Delivery]:
        if channel == BROADCAST:
            match envelope:
                case Access():
                    return self.access_changed(
                        envelope.id, envelope.device, envelope.grants, envelope.reason, now
                    )
                case Gone():
                    return self.sides.end_gone(envelope.device)
            return []
        match envelope:
            case Snapshot():  # to a camera (its device channel) or a relay node (its conn)
                return self._snapshot(channel, envelope)
            case Push() if channel.startswith("user."):
                # Pushes (presence, activation, events) are addressed by the edge to the
                # users the database says may see them; here they fan out to their
                # connections.
                conns = self._user_conns(channel.removeprefix("user."))
                return [Send(c, envelope.message) for c in conns]
            case Takeover() if channel.startswith("dev."):
                return self._takeover(channel.removeprefix("dev."), envelope)
        if not isinstance(envelope, SESSION_ENVELOPES):
            return []
        if channel.startswith("dev."):
            return self._to_camera(channel.removeprefix("dev."), envelope, now)
        if channel.startswith("conn."):
            # A connection channel reaches a viewer, or a relay playing the camera's part.
            conn = channel.removeprefix("conn.")
            served = self.camera_sides.get(envelope.session)
            if served is not None and served.camera == conn:
                return self.sides.to_camera_side(served, envelope)
            if isinstance(envelope, Open):
                return self._open_on_relay(conn, envelope, now)
            return self.sides.to_viewer_side(envelope, now)
        return []

    def _snapshot(self, channel: str, envelope: Snapshot) -> list[Delivery]:
        """Ask the camera, or the relay node watching it, for a JPEG (a snapshot request)."""
        device_id = envelope.device
        if channel.startswith("dev."):
            conn = self.cameras.get(device_id)
        else:
            conn = channel.removeprefix("conn.")
            info = self.connections.get(conn)
            conn = conn if info is not None and info.role == "relay" else None
        if conn is None:
            return []  # gone meanwhile: the one waiting gives up after its deadline
        return [Send(conn, SnapshotRequest(id=envelope.request, device_id=device_id))]

    def _takeover(self, device_id: str, envelope: Takeover) -> list[Delivery]:
        """The camera connected on another instance: its connection here is replaced."""
        camera = self.cameras.get(device_id)
        if camera is not None and camera != envelope.conn:
            del self.cameras[device_id]
            return [
                *self._replace_camera(camera, "replaced by a newer connection"),
                Subscribe(device_channel(device_id), on=False),
            ]
        return []

    def _to_camera(self, device_id: str, envelope: SessionEnvelope, now: float) -> list[Delivery]:
        session_id = envelope.session
        camera = self.cameras.get(device_id)
        if isinstance(envelope, Open):
            if camera is None or self.revocations.any(envelope.grants):
                reason = "device_offline" if camera is None else "access_revoked"
                return [Publish(conn_channel(envelope.viewer), End(session_id, reason))]
            return self.sides.open_camera_side(camera, device_id, envelope, now)
        side = self.camera_sides.get(session_id)
        if side is None:
            return []
        return self.sides.to_camera_side(side, envelope)

    def _open_on_relay(self, relay_conn: str, envelope: Open, now: float) -> list[Delivery]:
        """A relayed session arrives at the relay chosen for it: the relay plays the camera."""
        session_id = envelope.session
        viewer_channel = conn_channel(envelope.viewer)
        info = self.connections.get(relay_conn)
        revoked = self.revocations.any(envelope.grants)
        if revoked or info is None or info.role != "relay":
            reason = "access_revoked" if revoked else "relay_failed"
            return [Publish(viewer_channel, End(session_id, reason))]
        device_id = envelope.device
        opened = self.sides.open_camera_side(relay_conn, device_id, envelope, now, limited=False)
        return [Send(relay_conn, RelaySession(session_id=session_id, device_id=device_id)), *opened]

    # changes of access and liveness ---------------------------------------------------------

    def access_changed(
        self, change_id: str, device_id: str, grants: Grants, reason: EndReason | str, now: float
    ) -> list[Delivery]:
        """``grants`` no longer hold: what rests on them ends now, and they are refused.

        Idempotent per ``change_id``: an instance hears of a change from the route, the
        broadcast and the database, in any order.
        """
        if not self.revocations.add(change_id, grants, now):
            return []
        gone = set(grants)
        out = self.sides.end_resting_on(gone, reason)
        for conn, user in self.connections.items():  # opened with an ended sign-in
            if user.role == "user" and user.grant in gone:
                out.append(Close(conn, CLOSE_AUTH, "signed out"))
        camera = self.cameras.get(device_id)
        info = None if camera is None else self.connections.get(camera)
        if camera is not None and info is not None and info.grant in gone:
            out += self._release_camera(device_id, "device_removed")
            out.append(Close(camera, CLOSE_REMOVED, "device removed"))
            self.connections.pop(camera, None)
        return out

    def tick(self, now: float) -> list[Delivery]:
        """Time passes: sessions the camera does not accept or answer in time end with timeout."""
        self.revocations.forget(now)
        return self.sides.timeouts(now)


def _error(request_id: str | None, code: ErrorCode, message: str) -> Status:
    return Status(id=request_id, ok=False, error=StatusError(code=code, message=message))
