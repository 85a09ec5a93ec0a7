"""The server-to-client codec: every message the cloud really sends decodes to what it was.

The hub's messages come from driving the real hub (``cloud.signaling.hub``) through a
session's life; the welcome and the pushes are built the way ``cloud.signaling.ws``,
``cloud.events.routes`` and ``cloud.onboarding.routes`` build them. Each is put on the wire
the way the edge does (``Signaling._send``) and decoded with :func:`decode_server`.
"""

import json
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from cloud.signaling.deliveries import BROADCAST, Delivery, Publish, Send, Subscribe
from cloud.signaling.hub import Hub
from protocol.errors import ErrorCode, ProtocolError
from protocol.events import Event
from protocol.messages import (
    CLIENT_TYPES,
    MAX_FRAME_BYTES,
    SERVER_TYPES,
    AssignedCamera,
    DeviceActivated,
    DevicePresence,
    EventPush,
    GoAway,
    IceServer,
    Message,
    Ping,
    Pong,
    RelayAssign,
    ServerMessage,
    SessionRequest,
    SnapshotRequest,
    UploadOrder,
    Welcome,
    decode,
    decode_server,
)

ICE = [
    IceServer(urls=["stun:127.0.0.1:3478"]),
    IceServer(urls=["turn:127.0.0.1:3478?transport=udp"], username="1700000000:u1", credential="c"),
]
CANDIDATE = {
    "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def wire(message: Message | dict[str, Any]) -> str:
    """The frame text, exactly as the cloud's edge writes it (cloud.signaling.ws)."""
    return message.text() if isinstance(message, Message) else json.dumps(message)


class OneInstance:
    """The real hub, its publishes routed back to it; collects what it sends to sockets."""

    def __init__(self) -> None:
        self.hub = Hub(instance="i1", ice_servers=lambda principal: ICE)
        self.channels: set[str] = set()
        self.sent: list[tuple[str, Message | dict[str, Any]]] = []
        self.now = 1000.0

    def run(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            match d:
                case Send():
                    self.sent.append((d.conn, d.message))
                case Subscribe():
                    (self.channels.add if d.on else self.channels.discard)(d.channel)
                case Publish() if d.channel == BROADCAST or d.channel in self.channels:
                    self.run(self.hub.deliver(d.channel, d.envelope, self.now))
                case Publish():
                    self.run(self.hub.unrouted(d))

    def say(self, conn: str, frame: dict[str, Any], relay: tuple[str, str] | None = None) -> None:
        message = decode(json.dumps(frame))
        if isinstance(message, SessionRequest):
            self.run(self.hub.request_session(conn, message, self.now, relay, ("bind:d1:k",)))
        else:
            self.run(self.hub.receive(conn, message, self.now))

    def last(self, conn: str) -> Message | dict[str, Any]:
        return next(m for c, m in reversed(self.sent) if c == conn)


def messages_the_hub_sends() -> list[Message | dict[str, Any]]:
    c = OneInstance()
    c.run(c.hub.connect("cam", "device", "d1", "bind:d1:k"))
    c.run(c.hub.connect("v1", "user", "u1"))
    c.run(c.hub.connect("relay1", "relay", "relay-a"))
    c.say("v1", {"type": "ping", "id": "p1"})
    c.say("v1", {"type": "session.request", "id": "r1", "device_id": "d1"})
    sid = str(c.last("v1").session_id)  # type: ignore[union-attr]
    c.say("v1", {"type": "session.offer", "session_id": sid, "sdp": "v=0 offer"})
    c.say("cam", {"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"})
    c.say("v1", {"type": "session.ice", "session_id": sid, "candidate": CANDIDATE})
    c.say("cam", {"type": "session.ice", "session_id": sid, "candidate": None})
    c.say("v1", {"type": "session.end", "id": "e1", "session_id": "nope"})  # status error
    c.say("v1", {"type": "session.end", "session_id": sid})  # to the camera: peer_hangup
    c.say("v1", {"type": "session.request", "id": "r2", "device_id": "d2"})  # offline: end
    c.say("v1", {"type": "session.request", "id": "r3", "device_id": "d1"}, ("relay-a", "relay1"))
    c.run(c.hub.connect("cam2", "device", "d1", "bind:d1:k"))  # replaces cam: go_away
    c.run(c.hub.drain())  # go_away to everyone, session.end server_shutdown
    return [m for _, m in c.sent]


def pushes_and_welcome() -> list[Message | dict[str, Any]]:
    seen = datetime(2025, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)
    event = Event(
        id="e1",
        device_id="d1",
        kind="person",
        state="update",
        thread_id="t-1",
        score=0.91,
        box=[0.1, 0.2, 0.3, 0.4],
        started_at=seen,
        ended_at=seen,
        snapshot_url="/api/v1/events/e1/snapshot",
        acknowledged=True,
    )
    return [
        Welcome(role="device", principal_id="d1", connection_id="i1.abc", heartbeat_s=20),
        Welcome(role="relay", principal_id="relay-a", connection_id="i1.def", heartbeat_s=1),
        RelayAssign(
            cameras=[
                AssignedCamera(device_id="d1", mode="continuous"),
                AssignedCamera(device_id="d2", mode="on_motion", motion=True),
            ]
        ),
        RelayAssign(cameras=[], uploads=[UploadOrder(id="u1", device_id="d2")]),
        SnapshotRequest(id="snap-1", device_id="d1"),
        # Pushes travel in wire form (a dict), as Signaling.push publishes them.
        DevicePresence(device_id="d1", online=True, last_seen=seen).dump(),
        DevicePresence(device_id="d1", online=False, last_seen=None).dump(),
        DeviceActivated(ticket_id="tk1", device_id="d1").dump(),
        EventPush(**event.model_dump()).dump(),
        EventPush(
            **Event(**{**event.model_dump(), "box": None, "ended_at": None}).model_dump()
        ).dump(),
    ]


def test_server_types_name_the_members_of_the_union() -> None:
    members = get_args(get_args(ServerMessage)[0])
    assert {get_args(m.model_fields["type"].annotation)[0] for m in members} == SERVER_TYPES


def test_every_message_the_cloud_sends_round_trips() -> None:
    sent = messages_the_hub_sends() + pushes_and_welcome()
    for message in sent:
        decoded = decode_server(wire(message))
        if isinstance(message, Message):
            assert decoded == message, message
        else:
            assert decoded.dump() == message, message
    types = {json.loads(wire(m))["type"] for m in sent}
    assert types == SERVER_TYPES - {"ping"}  # the cloud answers pings but sends none


def test_the_hub_sends_the_fields_the_contract_names() -> None:
    sent = [json.loads(wire(m)) for m in messages_the_hub_sends()]
    by_type = {m["type"]: m for m in sent}
    offer = by_type["session.offer"]
    assert offer["ice_servers"][1] == ICE[1].dump()  # TURN credentials reach the camera
    created = next(m for m in sent if m["type"] == "session.created" and m["id"] == "r3")
    assert created["route"] == "relay"
    assert created["device_id"] == "d1"
    early_end = next(m for m in sent if m["type"] == "session.end" and m.get("id") == "r2")
    assert early_end["reason"] == "device_offline"
    assert by_type["relay.session"]["device_id"] == "d1"
    assert {m["reconnect_after_ms"] for m in sent if m["type"] == "go_away"} == {0, 500}
    assert by_type["pong"] == {"type": "pong", "id": "p1"}
    status = by_type["status"]
    assert (status["id"], status["ok"], status["error"]["code"]) == ("e1", False, "unknown_session")
    candidates = [m["candidate"] for m in sent if m["type"] == "session.ice"]
    assert candidates == [CANDIDATE, None]  # null, never a missing key, ends candidates


def test_a_ping_from_the_server_decodes() -> None:
    assert decode_server('{"type":"ping","id":"x"}') == Ping(id="x")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.MALFORMED_REQUEST),
        ("[1, 2]", ErrorCode.MALFORMED_REQUEST),
        ('{"session_id": "s"}', ErrorCode.MALFORMED_REQUEST),
        ('{"type": 7}', ErrorCode.MALFORMED_REQUEST),
        ('{"type": "snapshot.request", "id": "1"}', ErrorCode.INVALID_REQUEST),
        ('{"type": "hello", "token": "t"}', ErrorCode.UNKNOWN_TYPE),  # client -> server only
        ('{"type": "relay.load", "load": 0, "sessions": 0}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "session.end", "reason": "timeout"}', ErrorCode.INVALID_REQUEST),
        (
            '{"type": "session.end", "session_id": "s", "reason": "bored"}',
            ErrorCode.INVALID_REQUEST,
        ),
        ('{"type": "go_away", "reconnect_after_ms": -1}', ErrorCode.INVALID_REQUEST),
        ('{"type": "welcome", "role": "user"}', ErrorCode.INVALID_REQUEST),
    ],
)
def test_what_does_not_follow_the_contract_raises(text: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_server(text)
    assert raised.value.code == code


def test_fields_a_newer_server_adds_are_dropped_not_refused() -> None:
    assert decode_server('{"type": "pong", "rtt_ms": 3}') == Pong()
    away = decode_server('{"type": "go_away", "reconnect_after_ms": 0, "region": "eu"}')
    assert away == GoAway(reconnect_after_ms=0)
    with pytest.raises(ProtocolError):  # what the server receives stays strict
        decode('{"type": "ping", "rtt_ms": 3}')


def test_a_frame_over_64_kib_is_too_large() -> None:
    text = json.dumps({"type": "session.answer", "session_id": "s", "sdp": "x" * MAX_FRAME_BYTES})
    with pytest.raises(ProtocolError) as raised:
        decode_server(text)
    assert raised.value.code == ErrorCode.TOO_LARGE


def test_each_direction_has_its_own_types() -> None:
    with pytest.raises(ProtocolError) as raised:
        decode(
            '{"type":"welcome","role":"user","principal_id":"u","connection_id":"c",'
            '"heartbeat_s":1}'
        )
    assert raised.value.code == ErrorCode.UNKNOWN_TYPE
    both = CLIENT_TYPES & SERVER_TYPES
    assert both == {"session.offer", "session.answer", "session.ice", "session.end", "ping", "pong"}
