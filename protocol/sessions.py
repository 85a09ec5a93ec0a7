"""Session messages (docs/protocol.md, "WebSocket signaling" and "Session statistics"):
a viewer's request for a camera's picture, the SDP offer and answer, trickled ICE
candidates, the end of a session and each side's report of how it connected.

The offer, answer, candidates and end go both ways through the cloud with the same shape
(the cloud relays them between viewer, camera and relay node), so one model serves each
direction; :mod:`protocol.messages` puts them in both unions.
"""

import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, model_validator

from protocol.wire import DeviceId, Message, RequestId, SessionId

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


class IceServer(Message):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceCandidate(Message):
    candidate: str = Field(max_length=1024)
    sdpMid: str | None = Field(default=None, max_length=64)  # the browser's field names
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=64)


class SessionRequest(Message):
    type: Literal["session.request"] = "session.request"
    id: RequestId | None = None
    device_id: DeviceId
    mode: Literal["auto", "p2p", "relay"] = "auto"


class SessionCreated(Message):
    type: Literal["session.created"] = "session.created"
    id: RequestId | None = None
    session_id: SessionId
    device_id: DeviceId
    route: Literal["p2p", "relay"]
    ice_servers: list[IceServer]


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
