"""WebSocket signaling messages (docs/protocol.md, "WebSocket signaling") and their codec.

One JSON object per text frame, dispatched on ``type``. :func:`decode` turns a frame sent
to the server into a typed message or raises :class:`~protocol.errors.ProtocolError` with a
code that the server sends back in a ``status`` reply; it never lets a malformed frame
through. :func:`decode_server` is its mirror for clients (cameras, relays, viewers): every
frame the cloud sends, with the same errors.

This module owns the connection's own messages (hello, welcome, ping, pong, status,
go_away), the event push, the two unions and their decoding. The messages of sessions,
relay nodes and cameras live in :mod:`protocol.sessions`, :mod:`protocol.relays` and
:mod:`protocol.devices`, on the base in :mod:`protocol.wire`; every name stays importable
from here, so a peer needs one import for the whole contract.
"""

import json
import typing
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from protocol.devices import DeviceActivated, DeviceMotion, DevicePresence, SnapshotRequest
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import Event
from protocol.relays import (
    AssignedCamera,
    RecordingOrder,
    RelayAssign,
    RelayLoad,
    RelaySession,
    UploadOrder,
)
from protocol.sessions import (
    CANDIDATE_TYPES,
    MAX_ICE_MS,
    MAX_SDP_CHARS,
    MAX_TTFF_MS,
    CandidateType,
    EndReason,
    IceCandidate,
    IceServer,
    SessionAnswer,
    SessionCreated,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionRequest,
    SessionStats,
    StatsRoute,
    TransportProtocol,
    turn_protocol,
)
from protocol.wire import DeviceId, Message, RequestId, SessionId

__all__ = [
    "CANDIDATE_TYPES",
    "CLIENT_TYPES",
    "MAX_FRAME_BYTES",
    "MAX_ICE_MS",
    "MAX_SDP_CHARS",
    "MAX_TTFF_MS",
    "SERVER_TYPES",
    "AssignedCamera",
    "CandidateType",
    "ClientMessage",
    "DeviceActivated",
    "DeviceId",
    "DeviceMotion",
    "DevicePresence",
    "EndReason",
    "EventPush",
    "GoAway",
    "Hello",
    "IceCandidate",
    "IceServer",
    "Message",
    "Ping",
    "Pong",
    "RecordingOrder",
    "RelayAssign",
    "RelayLoad",
    "RelaySession",
    "RequestId",
    "ServerMessage",
    "SessionAnswer",
    "SessionCreated",
    "SessionEnd",
    "SessionIce",
    "SessionId",
    "SessionOffer",
    "SessionRequest",
    "SessionStats",
    "SnapshotRequest",
    "StatsRoute",
    "Status",
    "StatusError",
    "TransportProtocol",
    "UploadOrder",
    "Welcome",
    "decode",
    "decode_server",
    "request_id",
    "turn_protocol",
]

MAX_FRAME_BYTES = 64 * 1024


# client -> server ---------------------------------------------------------------------


class Hello(Message):
    type: Literal["hello"] = "hello"
    token: str = Field(min_length=1, max_length=4096)


class Ping(Message):
    type: Literal["ping"] = "ping"
    id: RequestId | None = None


class Pong(Message):
    type: Literal["pong"] = "pong"
    id: RequestId | None = None


# server -> client ---------------------------------------------------------------------


class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    role: Literal["user", "device", "relay"]
    principal_id: str
    connection_id: str
    heartbeat_s: int


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
