"""The signaling hub: pure session routing for one cloud instance.

No sockets, no Redis, no database: the edges (``ws.py``) feed it what happened —
a frame from a local connection, an envelope from the bus, a disconnect, the clock — and
carry out what it returns: :class:`Send` a frame to a local connection, :class:`Publish`
an envelope on a bus channel, :class:`Close` a connection, :class:`Subscribe` to a channel.

Routing. Each camera is reachable on the channel ``dev.<device id>``, held by the instance
where its connection lives; each viewer connection on ``conn.<connection id>``. A session
is known on both sides: :class:`ViewerSide` on the viewer's instance, :class:`CameraSide` on
the camera's. The two sides talk only through envelopes (cloud.signaling.envelopes: open,
accepted, offer, answer, ice, end), so the behaviour is the same whether both connections
are on one instance or not.

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
from typing import Any, cast, get_args

from cloud import metrics
from cloud.signaling.deliveries import (
    BROADCAST,
    CLOSE_AUTH,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    CLOSE_RESYNC,
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
    conn_channel,
    device_channel,
    user_channel,
)
from cloud.signaling.envelopes import (
    SESSION_ENVELOPES,
    Accepted,
    Access,
    Answer,
    End,
    Envelope,
    Gone,
    Ice,
    Offer,
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
    SessionCreated,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionRequest,
    SessionStats,
    SnapshotRequest,
    Status,
    StatusError,
)

RESYNC_SPREAD_MS = 3000


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
            out += self._end_viewer_side(side, "peer_hangup", tell_viewer=False)
        if info.role == "relay":
            out += self._end_camera_sides(conn, "relay_failed")
            out.append(PresenceChanged(f"relay:{info.principal}", conn, False))
        if info.role == "device" and self.cameras.get(info.principal) == conn:
            out += self._release_camera(info.principal, "device_offline")
        return out

    def _release_camera(self, device_id: str, reason: EndReason) -> list[Delivery]:
        """The camera's local connection no longer holds it: its sessions end, it is offline."""
        conn = self.cameras.pop(device_id)
        return [
            *self._end_camera_sides(conn, reason),
            Subscribe(device_channel(device_id), on=False),
            PresenceChanged(device_id, conn, False),
        ]

    def _user_conns(self, user_id: str) -> list[str]:
        return sorted(self.users.get(user_id, ()))

    def _replace_camera(self, conn: str, why: str) -> list[Delivery]:
        out: list[Delivery] = [Send(conn, GoAway(reconnect_after_ms=0, reason=why))]
        out += self._end_camera_sides(conn, "device_offline")
        out.append(Close(conn, CLOSE_REPLACED, why))
        self.connections.pop(conn, None)
        return out

    def resync(self, conns: list[str]) -> list[Delivery]:
        """The bus may lose messages for ``conns`` (a gap in this instance's subscription, a
        Redis restart): each user connection among them is told to go away and closed with
        ``CLOSE_RESYNC``, so the app reconnects and reads presence and events afresh (the
        event stream resumes from its ``Last-Event-ID``) instead of missing them silently.

        Its sessions end with it (their answer or candidates may be lost too). Cameras and
        relay nodes stay: what they miss are session messages, whose viewers time out and
        ask again; reconnecting every camera on a Redis restart would be a reconnect storm.
        Reconnections are spread over ``RESYNC_SPREAD_MS`` by the ``go_away``.
        """
        out: list[Delivery] = []
        for conn in conns:
            info = self.connections.get(conn)
            if info is None or info.role != "user":
                continue
            after_ms = secrets.randbelow(RESYNC_SPREAD_MS)
            out.append(Send(conn, GoAway(reconnect_after_ms=after_ms, reason="resync")))
            out.append(Close(conn, CLOSE_RESYNC, "messages may have been missed: reconnect"))
        return out

    def orphans(self, lost_at: float) -> list[Delivery]:
        """After a gap in this instance's bus subscription (from ``lost_at``): a session here
        whose viewer is on another instance may have ended there unheard (its end crossed
        the bus meanwhile) and would keep one of the camera's viewer places for good. Each
        one opened before the gap ends (``resync``): the camera hangs up, and a viewer still
        there hears it and asks again. Call it once the bus is back, so the viewer can hear."""
        out: list[Delivery] = []
        for side in list(self.camera_sides.values()):
            if side.id not in self.viewer_sides and side.opened_at < lost_at:
                out += self._end_camera_side(side, "resync")
        return out

    def drain(self) -> list[Delivery]:
        """Graceful shutdown: every local connection is told to go away and closed."""
        out: list[Delivery] = []
        for conn in list(self.connections):
            out.append(Send(conn, GoAway(reconnect_after_ms=500, reason="server_shutdown")))
        for side in list(self.viewer_sides.values()):
            out += self._end_viewer_side(side, "server_shutdown", tell_viewer=True)
        for conn in list(self.connections):
            out += self._end_camera_sides(conn, "server_shutdown")
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
            case SessionOffer() | SessionAnswer():
                if not info.sdp.allow(now):
                    return self.strike(
                        conn,
                        message.id,
                        ErrorCode.RATE_LIMITED,
                        f"over {self.limits.sdp_per_s:g} SDP messages/s",
                    )
            case SessionIce():
                if not info.ice.allow(now):
                    return self.strike(
                        conn,
                        message.id,
                        ErrorCode.RATE_LIMITED,
                        f"over {self.limits.ice_per_s:g} ICE messages/s",
                    )
            case SessionStats():
                if not info.stats.allow(now):
                    return self.strike(
                        conn,
                        message.id,
                        ErrorCode.RATE_LIMITED,
                        f"over {self.limits.stats_per_s:g} session.stats messages/s",
                    )
            case SessionEnd():
                pass
            case DeviceMotion() if info.role == "device":
                if info.motion is None:
                    info.motion = Bucket(self.limits.motion_per_s)
                if not info.motion.allow(now):
                    return self.strike(
                        conn,
                        message.id,
                        ErrorCode.RATE_LIMITED,
                        f"over {self.limits.motion_per_s:g} device.motion messages/s",
                    )
                out: list[Delivery] = [MotionReport(info.principal, message.active)]
                if message.id:
                    out.append(Send(conn, Status(id=message.id, ok=True)))
                return out
            case _:
                return self.strike(
                    conn,
                    getattr(message, "id", None),
                    ErrorCode.INVALID_REQUEST,
                    f"{message.type} is not expected here",
                )
        served = self.camera_sides.get(getattr(message, "session_id", ""))
        if info.role == "device" or (served is not None and served.camera == info.id):
            return self._from_camera(info, message, now)
        return self._from_viewer(info, message, now)

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
        mine = sum(1 for s in self.viewer_sides.values() if s.viewer == conn)
        if mine >= self.limits.sessions_per_viewer:
            return self.strike(conn, request.id, ErrorCode.RATE_LIMITED, "too many open sessions")
        side = ViewerSide(
            id=secrets.token_urlsafe(12),
            device_id=request.device_id,
            viewer=conn,
            user_id=info.principal,
            request_id=request.id,
            ice_servers=self.ice_servers(info.principal),
            created_at=now,
            target=device_channel(request.device_id) if relay is None else conn_channel(relay[1]),
            route="p2p" if relay is None else "relay",
            relay=None if relay is None else relay[0],
            grants=grants,
        )
        self.viewer_sides[side.id] = side
        opening = Open(side.id, conn, info.principal, request.device_id, grants)
        return [Publish(side.target, opening)]

    def relay_serves(self, conn: str, device_id: str) -> Grants | None:
        """The camera's binding if relay connection ``conn`` serves a viewer of ``device_id``
        right now, else None: a relay watches a camera under that camera's binding only."""
        for s in self.camera_sides.values():
            if s.camera == conn and s.device_id == device_id:
                return s.grants[:1]
        return None

    def unrouted(self, publish: Publish) -> list[Delivery]:
        """Nobody holds the channel a publish went to: the peer is gone."""
        if not isinstance(publish.envelope, SESSION_ENVELOPES):
            return []
        session = publish.envelope.session
        viewer = self.viewer_sides.get(session)
        if viewer is not None and publish.channel == viewer.target:
            reason = "relay_failed" if viewer.relay else "device_offline"
            return self._end_viewer_side(viewer, reason, tell_peer=False)
        camera = self.camera_sides.get(session)
        if camera is not None and publish.channel == camera.viewer_channel:
            return self._end_camera_side(camera, "peer_hangup", tell_peer=False)
        return []

    def _from_viewer(self, info: Connection, message: ClientMessage, now: float) -> list[Delivery]:
        session_id = getattr(message, "session_id", "")
        side = self.viewer_sides.get(session_id)
        if side is None or side.viewer != info.id:
            return self.strike(
                info.id, getattr(message, "id", None), ErrorCode.UNKNOWN_SESSION, "no such session"
            )
        match message:
            case SessionOffer():
                if not side.accepted:
                    return self.strike(
                        info.id, message.id, ErrorCode.INVALID_REQUEST, "wait for session.created"
                    )
                side.offered_at = now
                return [Publish(side.target, Offer(side.id, message.sdp))]
            case SessionIce():
                candidate = message.candidate.dump() if message.candidate else None
                return [Publish(side.target, Ice(side.id, candidate))]
            case SessionEnd():
                return self._end_viewer_side(side, "peer_hangup", tell_viewer=False)
            case SessionStats():
                if not side.accepted:
                    return self.strike(
                        info.id, message.id, ErrorCode.INVALID_REQUEST, "wait for session.created"
                    )
                if (message.route == "relay") != (side.route == "relay"):
                    return self._wrong_route(info.id, message, side.route)
                return [StatsReport(side.id, "viewer", message)]
        return self.strike(
            info.id,
            getattr(message, "id", None),
            ErrorCode.INVALID_REQUEST,
            "viewers do not answer",
        )

    def _from_camera(self, info: Connection, message: ClientMessage, now: float) -> list[Delivery]:
        session_id = getattr(message, "session_id", "")
        side = self.camera_sides.get(session_id)
        if side is None or side.camera != info.id:
            return self.strike(
                info.id, getattr(message, "id", None), ErrorCode.UNKNOWN_SESSION, "no such session"
            )
        match message:
            case SessionAnswer():
                return [Publish(side.viewer_channel, Answer(side.id, message.sdp))]
            case SessionIce():
                candidate = message.candidate.dump() if message.candidate else None
                return [Publish(side.viewer_channel, Ice(side.id, candidate))]
            case SessionEnd():
                reason = "peer_hangup" if message.reason == "user_hangup" else message.reason
                return self._end_camera_side(side, reason, tell_camera=False)
            case SessionStats():
                # A relay node plays the camera's part of the sessions routed through it.
                route = "relay" if info.role == "relay" else "p2p"
                if (message.route == "relay") != (route == "relay"):
                    return self._wrong_route(info.id, message, route)
                if message.ttff_ms is not None:
                    return self.strike(
                        info.id,
                        message.id,
                        ErrorCode.INVALID_REQUEST,
                        "ttff_ms is the viewer's: the time to its first decoded frame",
                    )
                return [StatsReport(side.id, "camera", message)]
        return self.strike(
            info.id, getattr(message, "id", None), ErrorCode.INVALID_REQUEST, "cameras do not offer"
        )

    def _wrong_route(self, conn: str, message: SessionStats, route: str) -> list[Delivery]:
        if route == "relay":
            said = "the cloud routed this session through a relay node: route relay"
        else:
            said = "this session does not go through a relay node: route p2p or turn"
        return self.strike(conn, message.id, ErrorCode.INVALID_REQUEST, said)

    # envelopes from the bus ---------------------------------------------------------------

    def deliver(self, channel: str, envelope: Envelope, now: float) -> list[Delivery]:
        if channel == BROADCAST:
            match envelope:
                case Access():
                    return self.access_changed(
                        envelope.id, envelope.device, envelope.grants, envelope.reason, now
                    )
                case Gone():
                    return self.device_gone(envelope.device)
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
                return self._to_camera_side(served, envelope)
            if isinstance(envelope, Open):
                return self._open_on_relay(conn, envelope, now)
            return self._to_viewer(envelope, now)
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
            viewer_channel = conn_channel(envelope.viewer)
            grants = envelope.grants
            if camera is None or self.revocations.any(grants):
                reason = "device_offline" if camera is None else "access_revoked"
                return [Publish(viewer_channel, End(session_id, reason))]
            active = sum(1 for s in self.camera_sides.values() if s.camera == camera)
            if active >= self.limits.viewers_per_camera:
                return [Publish(viewer_channel, End(session_id, "resource_exhausted"))]
            self.camera_sides[session_id] = CameraSide(
                session_id, device_id, camera, viewer_channel, envelope.user, grants, now
            )
            return [Publish(viewer_channel, Accepted(session_id))]
        side = self.camera_sides.get(session_id)
        if side is None:
            return []
        return self._to_camera_side(side, envelope)

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
        self.camera_sides[session_id] = CameraSide(
            session_id, device_id, relay_conn, viewer_channel, envelope.user, envelope.grants, now
        )
        return [
            Send(relay_conn, RelaySession(session_id=session_id, device_id=device_id)),
            Publish(viewer_channel, Accepted(session_id)),
        ]

    def _to_camera_side(self, side: CameraSide, envelope: SessionEnvelope) -> list[Delivery]:
        match envelope:
            case Offer():
                principal = self.connections[side.camera].principal
                offer = SessionOffer(
                    session_id=side.id, sdp=envelope.sdp, ice_servers=self.ice_servers(principal)
                )
                return [Send(side.camera, offer)]
            case Ice():
                return [_ice(side.camera, side.id, envelope.candidate)]
            case End():
                return self._end_camera_side(side, envelope.reason, tell_peer=False)
        return []

    def _to_viewer(self, envelope: SessionEnvelope, now: float) -> list[Delivery]:
        side = self.viewer_sides.get(envelope.session)
        if side is None:
            return []
        if isinstance(envelope, Accepted):
            side.accepted = True
            metrics.SESSIONS_STARTED.labels(side.route).inc()
            viewer = self.connections.get(side.viewer)
            record = Record(
                side.id,
                "created",
                side.device_id,
                side.user_id,
                route=side.route,
                viewer_role=viewer.role if viewer is not None else "user",
            )
            created = SessionCreated(
                id=side.request_id,
                session_id=side.id,
                device_id=side.device_id,
                route=side.route,
                ice_servers=side.ice_servers,
            )
            return [Send(side.viewer, created), record]
        if isinstance(envelope, Answer):
            if not side.answered:
                metrics.SIGNALING_LATENCY.observe(max(0.0, now - side.created_at))
            side.answered = True
            answered = Record(side.id, "answered", side.device_id, side.user_id)
            return [
                Send(side.viewer, SessionAnswer(session_id=side.id, sdp=envelope.sdp)),
                answered,
            ]
        if isinstance(envelope, Ice):
            return [_ice(side.viewer, side.id, envelope.candidate)]
        if isinstance(envelope, End):
            return self._end_viewer_side(side, envelope.reason, tell_peer=False)
        return []

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
        out: list[Delivery] = []
        for side in [s for s in self.viewer_sides.values() if gone.intersection(s.grants)]:
            out += self._end_viewer_side(side, reason)
        for cam in [s for s in self.camera_sides.values() if gone.intersection(s.grants)]:
            out += self._end_camera_side(cam, reason)
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

    def device_gone(self, device_id: str) -> list[Delivery]:
        """A camera's (or ``relay:<id>``'s) instance died: end the sessions that used it here."""
        out: list[Delivery] = []
        if device_id.startswith("relay:"):
            relay = device_id.removeprefix("relay:")
            for side in [s for s in self.viewer_sides.values() if s.relay == relay]:
                out += self._end_viewer_side(side, "relay_failed", tell_peer=False)
            return out
        for side in [s for s in self.viewer_sides.values() if s.device_id == device_id]:
            if side.relay is None:
                out += self._end_viewer_side(side, "device_offline", tell_peer=False)
        return out

    def tick(self, now: float) -> list[Delivery]:
        """Time passes: sessions the camera does not accept or answer in time end with timeout."""
        self.revocations.forget(now)
        out: list[Delivery] = []
        for side in list(self.viewer_sides.values()):
            waiting_accept = (
                not side.accepted and now - side.created_at > self.limits.accept_timeout_s
            )
            waiting_answer = (
                side.offered_at is not None
                and not side.answered
                and now - side.offered_at > self.limits.answer_timeout_s
            )
            if waiting_accept or waiting_answer:
                out += self._end_viewer_side(side, "timeout")
        return out

    # ending -------------------------------------------------------------------------------

    def _end_viewer_side(
        self,
        side: ViewerSide,
        reason: EndReason | str,
        *,
        tell_viewer: bool = True,
        tell_peer: bool = True,
    ) -> list[Delivery]:
        self.viewer_sides.pop(side.id, None)
        out: list[Delivery] = []
        if side.accepted:
            metrics.SESSIONS.labels(side.route, str(reason)).inc()
            out.append(Record(side.id, "ended", side.device_id, side.user_id, str(reason)))
        if tell_viewer and side.viewer in self.connections:
            # Before session.created the viewer knows only its request id: echo it.
            request_id = None if side.accepted else side.request_id
            end = SessionEnd(id=request_id, session_id=side.id, reason=_reason(reason))
            out.append(Send(side.viewer, end))
        if tell_peer:
            out.append(Publish(side.target, End(side.id, str(reason))))
        return out

    def _end_camera_side(
        self,
        side: CameraSide,
        reason: EndReason | str,
        *,
        tell_camera: bool = True,
        tell_peer: bool = True,
    ) -> list[Delivery]:
        self.camera_sides.pop(side.id, None)
        out: list[Delivery] = []
        if tell_camera and side.camera in self.connections:
            out.append(Send(side.camera, SessionEnd(session_id=side.id, reason=_reason(reason))))
        if tell_peer:
            out.append(Publish(side.viewer_channel, End(side.id, str(reason))))
        return out

    def _end_camera_sides(self, camera: str, reason: EndReason) -> list[Delivery]:
        out: list[Delivery] = []
        for side in [s for s in self.camera_sides.values() if s.camera == camera]:
            out += self._end_camera_side(side, reason, tell_camera=False)
        return out


_END_REASONS: frozenset[str] = frozenset(get_args(EndReason))


def _reason(value: str) -> EndReason:
    """A reason from the wire, or ``peer_hangup`` when it is not one of the contract's."""
    return cast(EndReason, value) if value in _END_REASONS else "peer_hangup"


def _ice(conn: str, session_id: str, candidate: dict[str, Any] | None) -> Send:
    """A trickled candidate (or its end) from the bus, to the local party of the session."""
    return Send(conn, SessionIce.model_validate({"session_id": session_id, "candidate": candidate}))


def _error(request_id: str | None, code: ErrorCode, message: str) -> Status:
    return Status(id=request_id, ok=False, error=StatusError(code=code, message=message))
