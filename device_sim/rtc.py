"""What the WebRTC peers of a viewing session share: the camera's sender
(:mod:`device_sim.camera_peer`) and the receive-only viewer (:mod:`device_sim.viewer_peer`).

Both take and return SDP strings and trickled candidates in the browser's JSON form
(``{"candidate": "candidate:…", "sdpMid": "0", "sdpMLineIndex": 0}``, ``None`` for end of
candidates); signaling carries them. aiortc gathers every local candidate before
:meth:`CameraPeer.answer` / :meth:`ViewerPeer.offer` return, so the SDP they return holds
all of them and nothing is trickled out; remote candidates may arrive at any time, even
before the remote description (they are held until it is set).

Every peer watches its own connection and ends by itself (:class:`PeerEnd`, reported once
through ``on_end``, ``ended`` and ``wait_failed()``) when:

- ICE has not connected within ``connect_timeout_s`` (reason ``ice_failed``). This also
  catches the silent aiortc case of a refused TURN credential under a relay-only policy:
  no relay candidate is gathered, aiortc never starts its ICE transport and the state stays
  ``"new"`` forever. With no local candidate at all (that case, or an end-of-candidates
  from the remote peer without any candidate, after which aioice gathers nothing) the peer
  ends at once rather than after the timeout. The message says what is missing, e.g.
  ``no relay candidate from turn:…: TURN credentials refused …?``; it never contains
  credentials.
- aiortc reports the connection ``failed`` (``ice_failed``), or the remote peer closed it
  (``peer_hangup``);
- a viewer got no answer within ``connect_timeout_s`` (``timeout``).

The owner still calls :meth:`close` (idempotent; it never reports an end).
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aioice import Candidate
from aiortc import RTCConfiguration, RTCIceTransport, RTCPeerConnection

from peer import (
    codecs,  # noqa: F401 (importing it makes aiortc offer H.264 Main and High)
    reach,
)
from peer.ice import CandidateJson, IceServerJson, RemoteCandidates, rtc_configuration
from peer.reach import Reachability
from protocol.messages import EndReason

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PeerEnd:
    """Why a peer ended by itself: a docs/protocol.md end reason and a message for people."""

    reason: EndReason
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidDescription(ValueError):
    """The remote SDP was rejected (the session ends with ``invalid_offer``)."""


class PeerEndedError(ConnectionError):
    """The peer ended or was closed while the caller was waiting for media."""

    def __init__(self, end: PeerEnd | None) -> None:
        super().__init__(str(end) if end else "the peer was closed")
        self.end = end


def _describe(candidate: Candidate, address: str, port: int) -> dict[str, str | int]:
    return {
        "type": candidate.type,
        "address": address,
        "port": port,
        "protocol": candidate.transport.lower(),
    }


def _turn_transport(url: str) -> str:
    """How a peer reaches its TURN server: ``udp``, ``tcp`` or ``tls`` (``turns:``)."""
    if url.startswith("turns:"):
        return "tls"
    return "tcp" if url.endswith("transport=tcp") else "udp"


class Peer:
    """What camera and viewer peers share: configuration, candidates, watchdog, close."""

    _name = "Peer"

    def __init__(
        self,
        session_id: str,
        ice_servers: Sequence[IceServerJson],
        *,
        relay_only: bool,
        connect_timeout_s: float,
        on_end: Callable[[PeerEnd], None] | None,
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        self.session_id = session_id
        self.relay_only = relay_only
        self.connect_timeout_s = connect_timeout_s
        self._on_end = on_end
        self._ice_servers = list(ice_servers)
        self._reachability: Reachability | None = None
        self._pc = self._connection(rtc_configuration(ice_servers, relay_only))  # checks them
        self._connected = asyncio.Event()
        self.connected_at: float | None = None  # time.monotonic() when ICE and DTLS connected
        self._settled = asyncio.Event()  # connected, ended or closed
        self._ended = asyncio.Event()  # ended or closed
        self._end: PeerEnd | None = None
        self._closed = False
        self._remote_set = False
        self._remote = RemoteCandidates(f"{self._name}({session_id})")
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ended(self) -> PeerEnd | None:
        """How the peer ended by itself, or ``None`` while it has not."""
        return self._end

    @property
    def connection_state(self) -> str:
        """aiortc's connection state: new, connecting, connected, failed or closed."""
        return self._pc.connectionState

    async def wait_connected(self) -> bool:
        """Wait until the peer connects (True), or ends or is closed before it does (False)."""
        await self._settled.wait()
        return self._connected.is_set()

    async def wait_failed(self) -> PeerEnd | None:
        """Wait until the peer ends by itself (its :class:`PeerEnd`) or is closed (``None``).

        Within ``connect_timeout_s`` of the local description, a peer is either connected or
        ended; a connected one may run for hours, so bound this wait (or cancel it) when the
        session's lifetime is not.
        """
        await self._ended.wait()
        return self._end

    async def add_candidate(self, candidate: CandidateJson | None) -> None:
        """Add a remote candidate in the browser's JSON form; ``None``: end of candidates.

        Candidates that arrive before the remote description are applied once it is set;
        those behind mDNS names wait for the peer's checks (:mod:`peer.ice`); after
        :meth:`close` they are ignored. Raises :class:`ValueError` when malformed.
        """
        if not self._closed:
            await self._remote.add(candidate)

    def selected_pair(self) -> dict[str, dict[str, str | int]] | None:
        """The candidate pair carrying media, or ``None`` before ICE nominated one.

        ``{"local": {"type", "address", "port", "protocol"}, "remote": {...}}``, types being
        ``host``, ``srflx``, ``prflx`` or ``relay``; a relay local candidate's address is the
        one the TURN server allocated, and its ``relay_protocol`` says how this peer reaches
        the TURN server (``udp``, ``tcp`` or ``tls``). aiortc has no
        ``getSelectedCandidatePair()`` and no candidate-pair statistics, so this reads
        aioice's ``Connection._nominated[1]`` (the pair nominated for RTP component 1)
        through ``RTCIceTransport._connection``.
        """
        for ice in self._ice_transports():
            pair = ice._connection._nominated.get(1)
            if pair is not None:
                local = pair.local_candidate
                remote_address, remote_port = pair.remote_addr
                described = {
                    "local": _describe(local, local.host, local.port),
                    "remote": _describe(pair.remote_candidate, remote_address, remote_port),
                }
                if local.type == "relay" and self._turn_url is not None:
                    described["local"]["relay_protocol"] = _turn_transport(self._turn_url)
                return described
        return None

    async def close(self) -> None:
        """Stop media and ICE and release sockets and tasks; idempotent, bounded in time."""
        if self._closed:
            return
        self._closed = True
        self._settled.set()
        self._ended.set()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._pc.close()
        except TimeoutError:
            self._log(logging.WARNING, "close did not finish within %s s", CLOSE_TIMEOUT_S)
        self._tasks.clear()
        self._log(logging.INFO, "closed")

    # for subclasses

    def _connection(self, configuration: RTCConfiguration) -> RTCPeerConnection:
        """A new aiortc connection with this peer's handlers (subclasses add theirs)."""
        self._turn_url = next(
            (
                url
                for server in configuration.iceServers or []
                for url in ([server.urls] if isinstance(server.urls, str) else server.urls)
                if url.startswith("turn")
            ),
            None,
        )
        pc = RTCPeerConnection(configuration)
        pc.on("connectionstatechange", self._on_connection_state)
        return pc

    async def _use_reachable_servers(self) -> None:
        """Before gathering: give aiortc only the STUN/TURN URLs that answer from here, the
        best TURN URL first (:mod:`peer.reach`), in a new connection if that changes them."""
        found = await reach.reachable(self._ice_servers)
        self._raise_if_closed()
        self._reachability = found
        if found.servers != self._ice_servers:
            unused, self._pc = (
                self._pc,
                self._connection(rtc_configuration(found.servers, self.relay_only)),
            )
            await unused.close()
            self._raise_if_closed()

    def _log(self, level: int, message: str, *args: object) -> None:
        logger.log(level, f"%s(%s) {message}", self._name, self.session_id, *args)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        if self._closed:
            coroutine.close()
            return
        task: asyncio.Task[None] = asyncio.create_task(
            coroutine, name=f"{self._name}({self.session_id}) {name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _raise_if_closed(self, cause: BaseException | None = None) -> None:
        if self._closed:
            raise PeerEndedError(self._end) from cause

    async def _set_remote(self, sdp: str, kind: str) -> None:
        await self._remote.set_description(self._pc, sdp, kind)
        self._remote_set = True

    def _ice_transports(self) -> list[RTCIceTransport]:
        return [t.receiver.transport.transport for t in self._pc.getTransceivers()]

    def _local_candidate_types(self) -> list[str]:
        return [
            candidate.type
            for ice in self._ice_transports()
            for candidate in ice.iceGatherer.getLocalCandidates()
        ]

    def _remote_candidate_count(self) -> int:
        return sum(len(ice.getRemoteCandidates()) for ice in self._ice_transports())

    def _start_watch(self) -> None:
        local = Counter(self._local_candidate_types())
        self._log(logging.INFO, "local candidates: %s", dict(local) or "none")
        if self._turn_url and not local["relay"]:
            self._log(logging.WARNING, "no relay candidate from %s", self._turn_url)
        self._spawn(self._watch(), "watch")

    async def _watch(self) -> None:
        if not self._local_candidate_types():
            self._finish("ice_failed", self._diagnose("ICE cannot start"))
            return
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._settled.wait()
        except TimeoutError:
            if not self._remote_set:
                self._finish("timeout", f"no answer within {self.connect_timeout_s:g} s")
            else:
                headline = (
                    f"not connected within {self.connect_timeout_s:g} s "
                    f"(state {self._pc.connectionState})"
                )
                self._finish("ice_failed", self._diagnose(headline))

    def _diagnose(self, headline: str) -> str:
        local = Counter(self._local_candidate_types())
        remote = self._remote_candidate_count()
        hints = []
        if self.relay_only and not self._turn_url:
            hints.append("relay-only policy without a TURN server")
        elif self._turn_url and not local["relay"]:
            observed = self._reachability.explain() if self._reachability else ""
            hints.append(
                f"no relay candidate from {self._turn_url}: "
                + (observed or "TURN credentials refused or TURN server unreachable?")
            )
        if not remote and self._remote.hidden:
            hints.append(
                f"the remote peer's {self._remote.hidden} candidates are behind mDNS names "
                "and none of its checks arrived"
            )
        elif not remote:
            hints.append("the remote peer sent no candidate")
        if not local:
            # aioice also drops a component that end-of-candidates left without remote ones,
            # and then gathers nothing for it
            hints.append("no local candidate, so aiortc never starts ICE")
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(local.items())) or "none"
        counts = f"local candidates: {found}; remote candidates: {remote}"
        return f"{headline}: {'; '.join(hints)} ({counts})" if hints else f"{headline} ({counts})"

    def _finish(self, reason: EndReason, message: str) -> None:
        if self._end is not None or self._closed:
            return
        self._end = PeerEnd(reason, message)
        self._log(logging.WARNING, "ended: %s", self._end)
        self._settled.set()
        self._ended.set()
        if self._on_end is not None:
            try:
                self._on_end(self._end)
            except Exception:
                logger.exception("%s(%s) on_end callback failed", self._name, self.session_id)

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        self._log(logging.DEBUG, "connection state %s", state)
        if self._closed:
            return
        if state == "connected" and not self._connected.is_set():
            self.connected_at = time.monotonic()
            self._connected.set()
            self._settled.set()
            self._log(logging.INFO, "connected via %s", self.selected_pair())
        elif state == "failed":
            if self._connected.is_set():
                self._finish("ice_failed", "connection lost (ICE consent expired or DTLS failed)")
            else:
                self._finish("ice_failed", self._diagnose("ICE or DTLS failed"))
        elif state == "closed":
            self._finish("peer_hangup", "the remote peer closed the connection")
