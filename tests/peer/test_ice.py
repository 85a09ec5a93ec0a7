"""ICE glue shared by the camera agent and the relay: server lists, browser candidates,
mDNS names."""

import pytest
from aiortc import RTCIceGatherer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from peer.ice import candidate_from_json, rtc_configuration, without_mdns

NAME = "0f3e2c1a-8b7d-4f7e-9c1e-6a2b3c4d5e6f.local"  # a stock browser's host candidate


def test_an_empty_server_list_configures_no_ice_server_not_aiortcs_public_default() -> None:
    configuration = rtc_configuration([])

    assert configuration.iceServers == []
    connection = RTCIceGatherer(iceServers=configuration.iceServers)._connection
    assert connection.stun_server is None
    assert connection.turn_server is None
    defaulted = RTCIceGatherer(iceServers=None)._connection  # what rtc_configuration avoids
    assert defaulted.stun_server == ("stun.l.google.com", 19302)


def test_the_cloud_server_list_becomes_aiortc_servers_and_policy() -> None:
    configuration = rtc_configuration(
        [
            {"urls": ["stun:127.0.0.1:3478"]},
            {"urls": "turn:127.0.0.1:3478", "username": "1:user", "credential": "c2VjcmV0"},
        ],
        relay_only=True,
    )

    assert configuration.iceTransportPolicy == RTCIceTransportPolicy.RELAY
    assert configuration.iceServers is not None
    turn = configuration.iceServers[1]
    assert (turn.urls, turn.username, turn.credential) == (
        ["turn:127.0.0.1:3478"],
        "1:user",
        "c2VjcmV0",
    )
    with pytest.raises(ValueError, match="not a STUN or TURN URL"):
        rtc_configuration([{"urls": ["http://example.com"]}])
    with pytest.raises(ValueError, match="non-empty list of URLs"):
        rtc_configuration([{"urls": []}])


def test_browser_candidates_parse_and_an_empty_one_ends_candidates() -> None:
    parsed = candidate_from_json(
        {
            "candidate": "candidate:842163049 1 udp 1677729535 192.0.2.7 61665 typ srflx "
            "raddr 10.0.0.2 rport 61665 generation 0 ufrag sXk3 network-cost 999",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    )

    assert parsed is not None
    assert (parsed.type, parsed.ip, parsed.port, parsed.protocol) == (
        "srflx",
        "192.0.2.7",
        61665,
        "udp",
    )
    assert (parsed.sdpMid, parsed.sdpMLineIndex, parsed.relatedAddress) == ("0", 0, "10.0.0.2")
    assert candidate_from_json(None) is None
    assert candidate_from_json({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}) is None
    for bad, problem in (
        ({"candidate": "candidate:1 1 udp", "sdpMid": "0"}, "malformed"),
        ({"sdpMid": "0"}, "needs a 'candidate' string"),
        ({"candidate": "x " * 9, "sdpMid": "0"}, "malformed"),
        ({"candidate": "candidate:1 1 udp 1 192.0.2.7 9 typ host"}, "sdpMid or sdpMLineIndex"),
    ):
        with pytest.raises(ValueError, match=problem):
            candidate_from_json(bad)


def test_mdns_candidates_leave_the_sdp_and_take_end_of_candidates_with_them() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            f"a=candidate:1 1 udp 2122260223 {NAME} 50000 typ host",
            "a=candidate:2 1 udp 1686052607 203.0.113.7 50001 typ srflx raddr 0.0.0.0 rport 0",
            "a=end-of-candidates",
            "",
        ]
    )
    kept, hidden = without_mdns(sdp)
    assert hidden == 1
    assert ".local" not in kept
    assert "203.0.113.7" in kept
    assert "a=end-of-candidates" not in kept
    plain = sdp.replace(NAME, "192.0.2.1")
    assert without_mdns(plain) == (plain, 0)
