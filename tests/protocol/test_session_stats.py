"""``session.stats`` (docs/protocol.md, "Session statistics"): what passes and what does not."""

import json
from typing import Any

import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (
    CLIENT_TYPES,
    MAX_ICE_MS,
    MAX_TTFF_MS,
    SERVER_TYPES,
    SessionStats,
    decode,
    turn_protocol,
)

DIRECT: dict[str, Any] = {
    "type": "session.stats",
    "session_id": "s-1",
    "route": "p2p",
    "local_candidate_type": "host",
    "remote_candidate_type": "srflx",
    "protocol": "udp",
    "ice_ms": 120,
    "ttff_ms": 450,
}


def refused(fields: dict[str, Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as error:
        decode(json.dumps(fields))
    assert error.value.code == ErrorCode.INVALID_REQUEST
    return error.value


def test_a_report_decodes_and_goes_back_on_the_wire_as_it_came() -> None:
    stats = decode(json.dumps(DIRECT))
    assert isinstance(stats, SessionStats)
    assert json.loads(stats.text()) == DIRECT
    camera = {k: v for k, v in DIRECT.items() if k != "ttff_ms"}  # the camera has no ttff
    assert json.loads(decode(json.dumps(camera)).text()) == camera
    assert "session.stats" in CLIENT_TYPES
    assert "session.stats" not in SERVER_TYPES  # the cloud keeps it


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("route", "direct"),
        ("route", "TURN"),
        ("local_candidate_type", "mdns"),
        ("remote_candidate_type", ""),
        ("protocol", "tls"),
        ("protocol", "UDP"),
        ("ice_ms", -1),
        ("ice_ms", MAX_ICE_MS + 1),
        ("ice_ms", 12.5),
        ("ice_ms", 12.0),  # ints only
        ("ice_ms", "12"),
        ("ice_ms", True),
        ("ice_ms", None),
        ("ttff_ms", -5),
        ("ttff_ms", MAX_TTFF_MS + 1),
        ("ttff_ms", "450"),
        ("session_id", "not/an id"),
    ],
)
def test_each_field_is_checked(field: str, value: object) -> None:
    error = refused({**DIRECT, field: value})
    assert field in error.message


@pytest.mark.parametrize("missing", ["session_id", "route", "local_candidate_type", "ice_ms"])
def test_required_fields(missing: str) -> None:
    refused({k: v for k, v in DIRECT.items() if k != missing})


def test_unknown_fields_are_refused() -> None:
    refused({**DIRECT, "rtt_ms": 3})


def test_the_route_must_agree_with_the_candidate_types() -> None:
    through_turn = {**DIRECT, "local_candidate_type": "relay"}
    error = refused(through_turn)  # route p2p, yet a relay candidate
    assert "route turn" in error.message
    assert decode(json.dumps({**through_turn, "route": "turn"})).route == "turn"  # type: ignore[union-attr]
    remote_relay = {**DIRECT, "remote_candidate_type": "relay", "route": "turn"}
    assert decode(json.dumps(remote_relay)).route == "turn"  # type: ignore[union-attr]
    error = refused({**DIRECT, "route": "turn"})  # no relay candidate
    assert "relay candidate" in error.message
    # through a relay node, the viewer's leg to it may itself go through TURN, or not
    for local in ("host", "relay"):
        relayed = decode(json.dumps({**DIRECT, "route": "relay", "local_candidate_type": local}))
        assert relayed.route == "relay"  # type: ignore[union-attr]


def test_of_pair_builds_the_report_from_a_selected_pair() -> None:
    pair = {
        "local": {"type": "relay", "address": "127.0.0.1", "port": 50000, "protocol": "udp"},
        "remote": {"type": "host", "address": "127.0.0.1", "port": 40000, "protocol": "udp"},
    }
    stats = SessionStats.of_pair("s-1", pair, ice_ms=80.6, ttff_ms=300.2, turn="tcp")
    assert stats.dump() == {
        "type": "session.stats",
        "session_id": "s-1",
        "route": "turn",
        "local_candidate_type": "relay",
        "remote_candidate_type": "host",
        "protocol": "tcp",  # the hop to the TURN server, not the relayed address's
        "ice_ms": 81,
        "ttff_ms": 300,
    }
    host = {**pair, "local": {**pair["local"], "type": "host"}}
    direct = SessionStats.of_pair("s-1", host, ice_ms=-3, turn="tcp")
    assert (direct.route, direct.protocol, direct.ice_ms, direct.ttff_ms) == ("p2p", "udp", 0, None)
    relayed = SessionStats.of_pair("s-1", pair, ice_ms=10**9, relay_node=True)
    assert (relayed.route, relayed.protocol, relayed.ice_ms) == ("relay", "udp", MAX_ICE_MS)
    with pytest.raises(ValueError, match="candidate types"):
        SessionStats.of_pair("s-1", {**pair, "remote": {"type": "bogus"}}, ice_ms=1)


@pytest.mark.parametrize(
    ("urls", "protocol"),
    [
        (["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"], "udp"),
        (["turn:turn.example.com"], "udp"),
        (["turn:turn.example.com:3478?transport=tcp", "turn:x?transport=udp"], "tcp"),
        (["turns:turn.example.com:5349?transport=tcp"], "tcp"),
        (["turns:turn.example.com"], "tcp"),
        (["stun:stun.example.com"], None),
        ([], None),
    ],
)
def test_turn_protocol_is_the_first_turn_urls(urls: list[str], protocol: str | None) -> None:
    assert turn_protocol(urls) == protocol
