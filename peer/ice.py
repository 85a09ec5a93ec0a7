"""ICE for aiortc peers as the cloud and browsers speak it: the ICE server list, remote
candidates in the browser's JSON form, and candidates hidden behind mDNS names.

Stock browsers hide their host addresses behind mDNS names (``<uuid>.local``,
draft-ietf-mmusic-mdns-ice-candidates). aioice resolves them by multicast, which does not
reach across most networks (network namespaces, guest Wi-Fi, clouds: "Could not join the
mDNS group"); at end-of-candidates it then drops the component that has no candidate pair
and fails ICE at once — before the browser's first connectivity check arrives, although
that check comes from the very address the name hides. ICE-lite servers connect to such
browsers by learning that address as a peer-reflexive candidate (RFC 8445 section 7.3.1.3),
which aioice does too, as long as its ICE is still running. :class:`RemoteCandidates`
therefore keeps mDNS candidates from aioice and, once it has kept any, holds end-of-
candidates back: the session's own connect timeout bounds the wait instead.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

logger = logging.getLogger(__name__)

MAX_PENDING_CANDIDATES = 100  # held before the remote description; more are dropped
ICE_URL_SCHEMES = ("stun", "stuns", "turn", "turns")
CandidateJson = Mapping[str, Any]
IceServerJson = Mapping[str, Any]


def rtc_configuration(
    ice_servers: Sequence[IceServerJson], relay_only: bool = False
) -> RTCConfiguration:
    """aiortc's configuration for the cloud's ``ice_servers`` list.

    ``ice_servers`` entries are ``{"urls": [...] | "...", "username"?, "credential"?}``.
    The list is always passed explicitly: aiortc replaces ``iceServers=None`` (never ``[]``)
    by a public Google STUN server, so an empty list here means no server at all. aiortc
    uses only the first STUN and the first TURN URL (``turn:`` over UDP or TCP, ``turns:``
    over TCP). ``relay_only`` sets the ``relay`` transport policy (relay candidates only).
    Raises :class:`ValueError` for an entry without URLs or a URL that is not STUN/TURN.
    """
    servers: list[RTCIceServer] = []
    for entry in ice_servers:
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError("an ICE server needs a non-empty list of URLs")
        for url in urls:
            if url.split(":", 1)[0] not in ICE_URL_SCHEMES:
                raise ValueError(f"not a STUN or TURN URL: {url!r}")
        servers.append(
            RTCIceServer(
                urls=list(urls), username=entry.get("username"), credential=entry.get("credential")
            )
        )
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def candidate_from_json(candidate: CandidateJson | None) -> RTCIceCandidate | None:
    """aiortc's candidate for the browser's JSON form; ``None`` means end of candidates.

    An empty ``candidate`` string (what browsers send at the end of a generation) is also
    end of candidates. Raises :class:`ValueError` for anything else that does not parse.
    """
    if candidate is None:
        return None
    text = candidate.get("candidate")
    if not isinstance(text, str):
        raise ValueError("a candidate needs a 'candidate' string")
    text = text.strip()
    if not text:
        return None
    text = text.removeprefix("a=").removeprefix("candidate:")
    bits = text.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise ValueError(f"malformed candidate: {text[:100]!r}")
    try:
        parsed = candidate_from_sdp(text)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"malformed candidate: {text[:100]!r}") from exc
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    if mid is None and index is None:
        raise ValueError("a candidate needs sdpMid or sdpMLineIndex")
    parsed.sdpMid = None if mid is None else str(mid)
    parsed.sdpMLineIndex = None if index is None else int(index)
    return parsed


def is_mdns(candidate: RTCIceCandidate) -> bool:
    """Whether the candidate's address is an mDNS name (aiortc keeps it in ``ip``)."""
    return candidate.ip.lower().endswith(".local")


def without_mdns(sdp: str) -> tuple[str, int]:
    """``sdp`` without its mDNS candidate lines, and how many there were; when there were
    any, also without ``a=end-of-candidates`` (see :class:`RemoteCandidates`)."""
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    newline = "\r\n" if "\r\n" in sdp else "\n"
    kept, hidden = [], 0
    for line in lines:
        bits = line.split()
        if line.startswith("a=candidate:") and len(bits) > 4 and bits[4].lower().endswith(".local"):
            hidden += 1
            continue
        kept.append(line)
    if hidden:
        kept = [line for line in kept if line.strip() != "a=end-of-candidates"]
    return newline.join(kept), hidden


class RemoteCandidates:
    """The remote peer's candidates for one ``RTCPeerConnection``.

    :meth:`add` takes them in the browser's JSON form at any time: they are held until
    :meth:`set_description` has set the remote description (up to
    :data:`MAX_PENDING_CANDIDATES`), then handed to aiortc, except those hidden behind mDNS
    names (counted in :attr:`hidden`). Once any was hidden, end-of-candidates is not passed
    on, so that aioice keeps ICE running until the remote peer's checks reveal its
    addresses (module docstring).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.hidden = 0
        self._pc: RTCPeerConnection | None = None
        self._pending: list[RTCIceCandidate | None] = []

    async def set_description(self, pc: RTCPeerConnection, sdp: str, kind: str) -> None:
        """Set ``pc``'s remote description (``kind`` "offer" or "answer"), then the
        candidates held so far. aiortc's errors for a bad description propagate."""
        sdp, hidden = without_mdns(sdp)
        self.hidden += hidden
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self._pc = pc
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._hand_over(pc, candidate)

    async def add(self, candidate: CandidateJson | None) -> None:
        """Add one remote candidate; ``None``: end of candidates. Raises
        :class:`ValueError` when it is malformed."""
        parsed = candidate_from_json(candidate)
        if self._pc is not None:
            await self._hand_over(self._pc, parsed)
        elif parsed is None or len(self._pending) < MAX_PENDING_CANDIDATES:
            self._pending.append(parsed)
        else:
            logger.warning("%s: candidate dropped: too many before the description", self.name)

    async def _hand_over(self, pc: RTCPeerConnection, candidate: RTCIceCandidate | None) -> None:
        if candidate is not None and is_mdns(candidate):
            self.hidden += 1
            return
        if candidate is None and self.hidden:
            logger.info(
                "%s: %d candidates behind mDNS names: ICE waits for the peer's checks",
                self.name,
                self.hidden,
            )
            return
        await pc.addIceCandidate(candidate)
