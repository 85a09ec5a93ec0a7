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

Browsers trickle: their offer may leave before gathering, with every candidate in a
``session.ice`` right behind it. Those can reach an aiortc peer before it has applied the
offer, or even before it has seen it (a camera answers each offer in a task of its own, once
its video source is ready). Nothing is dropped for that: :class:`EarlyCandidates` holds the
candidates of sessions a peer has no connection for yet, :class:`RemoteCandidates` those of
a connection whose remote description is not set yet, each within bounds.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
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
EARLY_SESSIONS = 64  # sessions whose candidates are held before the peer knows them
EARLY_TTL_S = 30.0  # how long such candidates are held
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
        # Candidates added meanwhile join the queue, so that they reach aiortc in their order
        # (aioice refuses any candidate after end-of-candidates).
        while self._pending:
            await self._hand_over(pc, self._pending.pop(0))
        self._pc = pc

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


class EarlyCandidates:
    """Remote candidates of sessions the peer has no connection for yet, by session id.

    A peer calls :meth:`hold` for a ``session.ice`` candidate (browser JSON, ``None`` for
    end of candidates) of a session it does not know yet, and :meth:`take` when it makes
    that session's connection, adding what it gets, in order, to its
    :class:`RemoteCandidates` (which holds them on until the offer is applied). Bounds: up to
    ``max_per_session`` candidates for each of up to ``max_sessions`` sessions, each
    session's kept for ``ttl_s`` after its first; beyond them candidates are dropped with a
    warning (so a session whose offer never comes, or that ended before its last candidates
    arrived, is forgotten after ``ttl_s``). No timer runs: expiry happens on each call.
    """

    def __init__(
        self,
        name: str = "",
        *,
        max_sessions: int = EARLY_SESSIONS,
        max_per_session: int = MAX_PENDING_CANDIDATES,
        ttl_s: float = EARLY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_sessions = max_sessions
        self.max_per_session = max_per_session
        self.ttl_s = ttl_s
        self._clock = clock
        self._held: dict[str, tuple[float, list[CandidateJson | None]]] = {}

    def __len__(self) -> int:
        """Sessions with candidates held now."""
        self._expire()
        return len(self._held)

    def hold(self, session_id: str, candidate: CandidateJson | None) -> bool:
        """Hold ``candidate`` for ``session_id``; False when a bound dropped it. Raises
        :class:`ValueError` when it is malformed (as :meth:`RemoteCandidates.add` would)."""
        candidate_from_json(candidate)
        self._expire()
        entry = self._held.get(session_id)
        if entry is None:
            if len(self._held) >= self.max_sessions:
                logger.warning(
                    "%s: candidate of session %s dropped: %d sessions already wait for their offer",
                    self.name,
                    session_id,
                    len(self._held),
                )
                return False
            entry = self._held[session_id] = (self._clock(), [])
        if len(entry[1]) >= self.max_per_session:
            logger.warning(
                "%s: candidate of session %s dropped: too many before its offer",
                self.name,
                session_id,
            )
            return False
        entry[1].append(candidate)
        return True

    def take(self, session_id: str) -> list[CandidateJson | None]:
        """The candidates held for ``session_id``, in their order, forgetting them."""
        self._expire()
        entry = self._held.pop(session_id, None)
        return [] if entry is None else entry[1]

    def discard(self, session_id: str) -> None:
        """Forget ``session_id``'s candidates (the session ended)."""
        self._held.pop(session_id, None)

    def _expire(self) -> None:
        oldest = self._clock() - self.ttl_s
        for session_id in [s for s, (since, _) in self._held.items() if since <= oldest]:
            held = len(self._held.pop(session_id)[1])
            logger.info(
                "%s: %d candidates of session %s dropped: no offer within %g s",
                self.name,
                held,
                session_id,
                self.ttl_s,
            )
