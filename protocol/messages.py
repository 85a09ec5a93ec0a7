"""WebSocket signaling messages (docs/protocol.md, "WebSocket signaling") and their codec.

One JSON object per text frame, dispatched on ``type``. :func:`decode` turns a frame sent
to the server into a typed message or raises :class:`~protocol.errors.ProtocolError` with a
code that the server sends back in a ``status`` reply; it never lets a malformed frame
through. :func:`decode_server` is its mirror for clients (cameras, relays, viewers): every
frame the cloud sends, with the same errors.
"""

import json
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from protocol.errors import ErrorCode, ProtocolError
from protocol.events import Event

MAX_FRAME_BYTES = 64 * 1024
MAX_SDP_CHARS = 32 * 1024

EndReason = Literal[
    "user_hangup",
    "peer_hangup",
    "ice_failed",
    "timeout",
    "device_offline",
    "access_revoked",
    "device_removed",
    "resource_exhausted",
    "invalid_offer",
    "relay_failed",
    "server_shutdown",
    "codec_mismatch",
    "video_unavailable",
    "resync",
]
RequestId = Annotated[str, Field(min_length=1, max_length=64)]
SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
DeviceId = Annotated[str, Field(min_length=1, max_length=64)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    def text(self) -> str:
        return json.dumps(self.dump(), separators=(",", ":"))


class IceServer(Message):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceCandidate(Message):
    candidate: str = Field(max_length=1024)
    sdpMid: str | None = Field(default=None, max_length=64)  # the browser's field names
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=64)


# client -> server ---------------------------------------------------------------------


class Hello(Message):
    type: Literal["hello"] = "hello"
    token: str = Field(min_length=1, max_length=4096)


class SessionRequest(Message):
    type: Literal["session.request"] = "session.request"
    id: RequestId | None = None
    device_id: DeviceId
    mode: Literal["auto", "p2p", "relay"] = "auto"


class SessionOffer(Message):
    type: Literal["session.offer"] = "session.offer"
    id: RequestId | None = None
    session_id: SessionId
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    ice_servers: list[IceServer] | None = None  # added by the cloud for the camera


class SessionAnswer(Message):
    type: Literal["session.answer"] = "session.answer"
    id: RequestId | None = None
    session_id: SessionId
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)


class SessionIce(Message):
    type: Literal["session.ice"] = "session.ice"
    id: RequestId | None = None
    session_id: SessionId
    candidate: IceCandidate | None  # None: end of candidates

    def dump(self) -> dict[str, Any]:
        """The end of candidates is ``"candidate": null`` on the wire, never a missing key."""
        return {**super().dump(), "candidate": self.candidate and self.candidate.dump()}


class SessionEnd(Message):
    type: Literal["session.end"] = "session.end"
    id: RequestId | None = None
    session_id: SessionId
    reason: EndReason = "user_hangup"


class Ping(Message):
    type: Literal["ping"] = "ping"
    id: RequestId | None = None


class Pong(Message):
    type: Literal["pong"] = "pong"
    id: RequestId | None = None


CandidateType = Literal["host", "srflx", "prflx", "relay"]
TransportProtocol = Literal["udp", "tcp"]
StatsRoute = Literal["p2p", "turn", "relay"]
CANDIDATE_TYPES: frozenset[str] = frozenset(typing.get_args(CandidateType))
MAX_ICE_MS = 120_000  # an ICE duration above 2 minutes is no measurement
MAX_TTFF_MS = 300_000  # nor is a first frame after 5 minutes


class SessionStats(Message):
    """viewer or camera -> cloud: how this side's session connected (docs/protocol.md,
    "Session statistics"). Sent once the side is connected (the viewer: once its first frame
    is decoded); a later report of the same side replaces the earlier one.

    The candidate types are those of the selected candidate pair *as this side sees it*
    (``local``: its own). ``protocol`` is the transport of this side's first hop: for a local
    ``relay`` candidate the one to the TURN server (TLS counts as ``tcp``), otherwise the
    local candidate's. ``route``: ``relay`` when the cloud routed the session through a relay
    node (``session.created`` said so); otherwise ``turn`` when either candidate is ``relay``
    (the packets go through a TURN server) and ``p2p`` when neither is. ``ice_ms``: from this
    side's offer (sent by the viewer, received by the camera) to ICE (and DTLS) connected.
    ``ttff_ms``: viewers only, from their ``session.request`` to the first decoded frame.
    """

    type: Literal["session.stats"] = "session.stats"
    id: RequestId | None = None
    session_id: SessionId
    route: StatsRoute
    local_candidate_type: CandidateType
    remote_candidate_type: CandidateType
    protocol: TransportProtocol
    ice_ms: int = Field(strict=True, ge=0, le=MAX_ICE_MS)
    ttff_ms: int | None = Field(default=None, strict=True, ge=0, le=MAX_TTFF_MS)

    @model_validator(mode="after")
    def _route_agrees_with_the_pair(self) -> Self:
        through_turn = "relay" in (self.local_candidate_type, self.remote_candidate_type)
        if self.route == "turn" and not through_turn:
            raise ValueError("route turn needs a relay candidate in the pair")
        if self.route == "p2p" and through_turn:
            raise ValueError("a pair with a relay candidate goes through TURN: route turn")
        return self

    @classmethod
    def of_pair(
        cls,
        session_id: str,
        pair: Mapping[str, Mapping[str, object]],
        *,
        ice_ms: float,
        ttff_ms: float | None = None,
        relay_node: bool = False,
        turn: TransportProtocol = "udp",
    ) -> "SessionStats":
        """The report for a selected pair ``{"local": {"type", "protocol"}, "remote":
        {"type"}}`` (``device_sim.rtc.Peer.selected_pair()``'s form). ``turn``: the transport
        to the TURN server, used when the local candidate is ``relay``; ``relay_node``: the
        cloud routed the session through a relay node. Durations are rounded and capped at
        the message's bounds. Raises ValueError for candidate types the contract lacks."""
        local, remote = pair["local"]["type"], pair["remote"]["type"]
        if local not in CANDIDATE_TYPES or remote not in CANDIDATE_TYPES:
            raise ValueError(f"unknown candidate types {local!r}, {remote!r}")
        protocol = turn if local == "relay" else pair["local"].get("protocol")
        route = "relay" if relay_node else "turn" if "relay" in (local, remote) else "p2p"
        return cls.model_validate(
            {
                "session_id": session_id,
                "route": route,
                "local_candidate_type": local,
                "remote_candidate_type": remote,
                "protocol": "tcp" if protocol == "tcp" else "udp",
                "ice_ms": min(MAX_ICE_MS, max(0, round(ice_ms))),
                "ttff_ms": None if ttff_ms is None else min(MAX_TTFF_MS, max(0, round(ttff_ms))),
            }
        )


def turn_protocol(urls: Iterable[str]) -> TransportProtocol | None:
    """The transport to the TURN server of the first TURN URL among ``urls`` (aiortc uses
    that one only), or None without one: ``turns:`` (TLS) and ``?transport=tcp`` are ``tcp``,
    plain ``turn:`` is ``udp`` (RFC 7065)."""
    for url in urls:
        scheme = url.split(":", 1)[0].lower()
        if scheme == "turns":
            return "tcp"
        if scheme == "turn":
            query = parse_qs(urlsplit(url).query)
            return "tcp" if [t.lower() for t in query.get("transport", [])] == ["tcp"] else "udp"
    return None


class RelayLoad(Message):
    """relay -> cloud: how busy the relay is (0 idle .. 1 full); sent with each heartbeat.

    ``capacity``: how many cameras the node can analyse at once (the cloud assigns armed
    cameras by the room left); a node that does not say takes none.
    """

    type: Literal["relay.load"] = "relay.load"
    load: float = Field(ge=0.0, le=1.0)
    sessions: int = Field(ge=0)
    cameras: int = Field(default=0, ge=0)
    capacity: int = Field(default=0, ge=0, le=10_000)


class DeviceMotion(Message):
    """camera -> cloud: motion the camera detected itself started (``active``) or stopped.

    Cameras in ``on_motion`` analysis mode are watched by a relay node only while it lasts.
    """

    type: Literal["device.motion"] = "device.motion"
    id: RequestId | None = None
    active: bool
    score: float | None = Field(default=None, ge=0.0, le=1.0)


# server -> client ---------------------------------------------------------------------


class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    role: Literal["user", "device", "relay"]
    principal_id: str
    connection_id: str
    heartbeat_s: int


class SessionCreated(Message):
    type: Literal["session.created"] = "session.created"
    id: RequestId | None = None
    session_id: SessionId
    device_id: DeviceId
    route: Literal["p2p", "relay"]
    ice_servers: list[IceServer]


class RelaySession(Message):
    """cloud -> relay: a viewer's session of ``device_id`` is routed through this relay.

    The relay watches the camera itself (its own ``session.request``, allowed while it
    serves a relayed session of that device) and answers the viewer's ``session.offer``.
    """

    type: Literal["relay.session"] = "relay.session"
    session_id: SessionId
    device_id: DeviceId


class RecordingOrder(Message):
    """A recording the owner asked for: the node records the camera until ``until``
    (with its pre-roll when it was already watching) and uploads it as media ``id``."""

    id: str = Field(min_length=1, max_length=64)
    until: datetime


class AssignedCamera(Message):
    device_id: DeviceId
    mode: Literal["continuous", "on_motion"]
    motion: bool = False  # on_motion: the camera reports motion now
    armed: bool = True  # False: watched only for ``recordings``, no events
    recordings: list[RecordingOrder] = Field(default_factory=list)


class UploadOrder(Message):
    """A video file an owner uploaded, for the node to analyse like the camera's stream."""

    id: str = Field(min_length=1, max_length=64)
    device_id: DeviceId


class RelayAssign(Message):
    """cloud -> relay: every camera this node analyses or records, sent whenever the set
    changes (it replaces the previous one). The node keeps an upstream to each armed
    ``continuous`` camera, to each ``on_motion`` camera while its ``motion`` lasts, and to
    each camera with ``recordings`` until they end; it may request sessions of these cameras
    whether or not a viewer is routed through it. ``uploads``: the uploaded videos the node
    analyses (``GET /relays/uploads/{id}/content``; progress and events as it goes)."""

    type: Literal["relay.assign"] = "relay.assign"
    cameras: list[AssignedCamera]
    uploads: list[UploadOrder] = Field(default_factory=list)


class SnapshotRequest(Message):
    """cloud -> camera or relay node: upload a JPEG of the camera's current picture now
    (``PUT /devices/snapshots/{id}`` with the camera's assertion, or
    ``PUT /relays/snapshots/{id}`` with the relay's credential); someone waits for it."""

    type: Literal["snapshot.request"] = "snapshot.request"
    id: str = Field(min_length=1, max_length=64)
    device_id: DeviceId


class DevicePresence(Message):
    type: Literal["device.presence"] = "device.presence"
    device_id: DeviceId
    online: bool
    last_seen: datetime | None = None  # dump() leaves out None: never seen


class DeviceActivated(Message):
    type: Literal["device.activated"] = "device.activated"
    ticket_id: str
    device_id: DeviceId


class EventPush(Event):
    """cloud -> viewer: an event thread changed (sent to the device's owner and viewers only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["event"] = "event"

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class GoAway(Message):
    type: Literal["go_away"] = "go_away"
    reconnect_after_ms: int = Field(ge=0)
    reason: str | None = None


class StatusError(Message):
    code: ErrorCode
    message: str


class Status(Message):
    type: Literal["status"] = "status"
    id: RequestId | None = None
    ok: bool
    error: StatusError | None = None


ClientMessage = Annotated[
    Hello
    | SessionRequest
    | SessionOffer
    | SessionAnswer
    | SessionIce
    | SessionEnd
    | SessionStats
    | Ping
    | Pong
    | RelayLoad
    | DeviceMotion,
    Field(discriminator="type"),
]
_client = TypeAdapter[ClientMessage](ClientMessage)
CLIENT_TYPES = frozenset(
    {
        "hello",
        "session.request",
        "session.offer",
        "session.answer",
        "session.ice",
        "session.end",
        "session.stats",
        "ping",
        "pong",
        "relay.load",
        "device.motion",
    }
)


ServerMessage = Annotated[
    Welcome
    | SessionCreated
    | RelaySession
    | RelayAssign
    | SnapshotRequest
    | SessionOffer
    | SessionAnswer
    | SessionIce
    | SessionEnd
    | DevicePresence
    | DeviceActivated
    | EventPush
    | GoAway
    | Status
    | Ping
    | Pong,
    Field(discriminator="type"),
]
_server = TypeAdapter[ServerMessage](ServerMessage)
SERVER_TYPES = frozenset(
    {
        "welcome",
        "session.created",
        "relay.session",
        "relay.assign",
        "snapshot.request",
        "session.offer",
        "session.answer",
        "session.ice",
        "session.end",
        "device.presence",
        "device.activated",
        "event",
        "go_away",
        "status",
        "ping",
        "pong",
    }
)

_Decoded = TypeVar("_Decoded")


def decode(text: str) -> ClientMessage:
    """Parse one frame sent to the server. Raises ProtocolError (malformed / invalid)."""
    return _decode(text, CLIENT_TYPES, _client)


def decode_server(text: str) -> ServerMessage:
    """Parse one frame the server sent. Raises ProtocolError like :func:`decode` for a type
    the contract does not list and a missing or invalid field. Fields this version does not
    know are dropped, not refused: the server may add fields (docs/protocol.md), and a
    camera in the field must keep working when it does."""
    return _decode(text, SERVER_TYPES, _server, known=_SERVER_FIELDS)


def _fields_by_type(union: Any) -> dict[str, frozenset[str]]:
    models = typing.get_args(typing.get_args(union)[0])
    return {
        model.model_fields["type"].default: frozenset(
            field.alias or name for name, field in model.model_fields.items()
        )
        for model in models
    }


_SERVER_FIELDS = _fields_by_type(ServerMessage)


def _decode(
    text: str,
    types: frozenset[str],
    adapter: TypeAdapter[_Decoded],
    known: dict[str, frozenset[str]] | None = None,
) -> _Decoded:
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, "message larger than 64 KiB")
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise ProtocolError(ErrorCode.MALFORMED_REQUEST, "the message is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(ErrorCode.MALFORMED_REQUEST, "a message is a JSON object with a type")
    if data["type"] not in types:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {data['type'][:40]!r}")
    if known is not None:
        named = known[data["type"]]
        data = {key: value for key, value in data.items() if key in named}
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        fields = ", ".join(
            ".".join(str(p) for p in e["loc"][1:]) or e["msg"].removeprefix("Value error, ")
            for e in exc.errors()[:5]
        )
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"invalid {data['type']}: {fields}"
        ) from None


def request_id(text: str) -> str | None:
    """Best-effort ``id`` of a frame that failed to decode, to echo in the status reply."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
