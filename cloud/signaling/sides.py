"""The two sides of the sessions one cloud instance takes part in (``cloud.signaling.hub``).

A session is known on both sides: :class:`~cloud.signaling.sessions.ViewerSide` on the
viewer's instance, :class:`~cloud.signaling.sessions.CameraSide` on the camera's (or on the
relay node's that plays the camera's part). :class:`Sides` holds both maps, turns what a
local party says into envelopes for the far side and what the far side sent into frames
for the local party, and ends sides: every way a session ends goes through
:meth:`Sides.end_viewer_side` or :meth:`Sides.end_camera_side`, which record the end and
tell whoever is still there.

The sides share the hub's connections and report a bad frame through the hub's
:meth:`~cloud.signaling.hub.Hub.strike` rather than keep their own: one state and one strike
count per connection, at the price that a :class:`Sides` makes sense only inside its
:class:`~cloud.signaling.hub.Hub`, which is what tests drive.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from cloud import metrics
from cloud.signaling.deliveries import (
    Delivery,
    Publish,
    Record,
    Send,
    StatsReport,
    conn_channel,
    device_channel,
)
from cloud.signaling.envelopes import (
    SESSION_ENVELOPES,
    Accepted,
    Answer,
    End,
    Ice,
    Offer,
    Open,
    SessionEnvelope,
)
from cloud.signaling.sessions import CameraSide, Connection, Grants, Limits, ViewerSide
from protocol.errors import ErrorCode
from protocol.messages import (
    ClientMessage,
    EndReason,
    IceServer,
    SessionAnswer,
    SessionCreated,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionRequest,
    SessionStats,
)

# A bad frame from connection, request id, code, message: the hub's answer (Hub.strike).
Strike = Callable[[str, str | None, ErrorCode, str], list[Delivery]]


@dataclass
class Sides:
    connections: dict[str, Connection]  # the hub's local connections
    ice_servers: Callable[[str], list[IceServer]]  # ICE servers for a principal, now
    limits: Limits
    strike: Strike
    viewer_sides: dict[str, ViewerSide] = field(default_factory=dict)
    camera_sides: dict[str, CameraSide] = field(default_factory=dict)

    # opening --------------------------------------------------------------------------------

    def request(
        self,
        info: Connection,
        request: SessionRequest,
        now: float,
        relay: tuple[str, str] | None,
        grants: Grants,
    ) -> list[Delivery]:
        """The viewer side of a session the hub allowed; its open goes to the far side."""
        conn = info.id
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

    def open_camera_side(
        self, camera: str, device_id: str, envelope: Open, now: float, *, limited: bool = True
    ) -> list[Delivery]:
        """The camera's side of a session the hub let through, played by local connection
        ``camera``: refused when the camera has all the viewers it may have (``limited``;
        a relay node, which plays the camera's part for each of its viewers, is not)."""
        session_id = envelope.session
        viewer_channel = conn_channel(envelope.viewer)
        if limited:
            active = sum(1 for s in self.camera_sides.values() if s.camera == camera)
            if active >= self.limits.viewers_per_camera:
                return [Publish(viewer_channel, End(session_id, "resource_exhausted"))]
        self.camera_sides[session_id] = CameraSide(
            session_id, device_id, camera, viewer_channel, envelope.user, envelope.grants, now
        )
        return [Publish(viewer_channel, Accepted(session_id))]

    def relay_serves(self, conn: str, device_id: str) -> Grants | None:
        """The camera's binding if relay connection ``conn`` serves a viewer of ``device_id``
        right now, else None: a relay watches a camera under that camera's binding only."""
        for s in self.camera_sides.values():
            if s.camera == conn and s.device_id == device_id:
                return s.grants[:1]
        return None

    # from the local parties -----------------------------------------------------------------

    def from_viewer(self, info: Connection, message: ClientMessage, now: float) -> list[Delivery]:
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
                return self.end_viewer_side(side, "peer_hangup", tell_viewer=False)
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

    def from_camera(self, info: Connection, message: ClientMessage, now: float) -> list[Delivery]:
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
                return self.end_camera_side(side, reason, tell_camera=False)
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

    # from the far side ----------------------------------------------------------------------

    def to_camera_side(self, side: CameraSide, envelope: SessionEnvelope) -> list[Delivery]:
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
                return self.end_camera_side(side, envelope.reason, tell_peer=False)
        return []

    def to_viewer_side(self, envelope: SessionEnvelope, now: float) -> list[Delivery]:
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
            return self.end_viewer_side(side, envelope.reason, tell_peer=False)
        return []

    def unrouted(self, publish: Publish) -> list[Delivery]:
        """Nobody holds the channel a publish went to: the peer is gone."""
        if not isinstance(publish.envelope, SESSION_ENVELOPES):
            return []
        session = publish.envelope.session
        viewer = self.viewer_sides.get(session)
        if viewer is not None and publish.channel == viewer.target:
            reason = "relay_failed" if viewer.relay else "device_offline"
            return self.end_viewer_side(viewer, reason, tell_peer=False)
        camera = self.camera_sides.get(session)
        if camera is not None and publish.channel == camera.viewer_channel:
            return self.end_camera_side(camera, "peer_hangup", tell_peer=False)
        return []

    # ending ---------------------------------------------------------------------------------

    def timeouts(self, now: float) -> list[Delivery]:
        """Sessions the camera does not accept or answer in time end with timeout."""
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
                out += self.end_viewer_side(side, "timeout")
        return out

    def end_resting_on(self, gone: set[str], reason: EndReason | str) -> list[Delivery]:
        """Grants ``gone`` were revoked: the sides resting on any of them end."""
        out: list[Delivery] = []
        for side in [s for s in self.viewer_sides.values() if gone.intersection(s.grants)]:
            out += self.end_viewer_side(side, reason)
        for cam in [s for s in self.camera_sides.values() if gone.intersection(s.grants)]:
            out += self.end_camera_side(cam, reason)
        return out

    def end_gone(self, device_id: str) -> list[Delivery]:
        """A camera's (or ``relay:<id>``'s) instance died: end the sessions that used it here."""
        out: list[Delivery] = []
        if device_id.startswith("relay:"):
            relay = device_id.removeprefix("relay:")
            for side in [s for s in self.viewer_sides.values() if s.relay == relay]:
                out += self.end_viewer_side(side, "relay_failed", tell_peer=False)
            return out
        for side in [s for s in self.viewer_sides.values() if s.device_id == device_id]:
            if side.relay is None:
                out += self.end_viewer_side(side, "device_offline", tell_peer=False)
        return out

    def end_viewer_side(
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

    def end_camera_side(
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

    def end_camera_sides(self, camera: str, reason: EndReason) -> list[Delivery]:
        """Local connection ``camera`` (a camera's or a relay's) is gone: its sides end."""
        out: list[Delivery] = []
        for side in [s for s in self.camera_sides.values() if s.camera == camera]:
            out += self.end_camera_side(side, reason, tell_camera=False)
        return out


_END_REASONS: frozenset[str] = frozenset(get_args(EndReason))


def _reason(value: str) -> EndReason:
    """A reason from the wire, or ``peer_hangup`` when it is not one of the contract's."""
    return cast(EndReason, value) if value in _END_REASONS else "peer_hangup"


def _ice(conn: str, session_id: str, candidate: dict[str, Any] | None) -> Send:
    """A trickled candidate (or its end) from the bus, to the local party of the session."""
    return Send(conn, SessionIce.model_validate({"session_id": session_id, "candidate": candidate}))
