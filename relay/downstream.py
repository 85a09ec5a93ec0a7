"""A viewer's session served by the relay node: the camera's video, forwarded to the viewer.

The node (:mod:`relay.node`) opens a :class:`Downstream` when the cloud routes a viewer's
session through it (``relay.session``) and answers the viewer's offer with
:meth:`Downstream.answer`. The video is the camera's own packets from the upstream's
fan-out, never re-encoded: cheap for the node, but the viewer must take the codec the
camera sends, with its profile, so the answer names exactly that one. A viewer that cannot
take it is refused with an end reason rather than served a black picture.
"""

import logging
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from peer import codecs, reach
from peer.ice import RemoteCandidates, rtc_configuration
from protocol.messages import EndReason, SessionOffer
from relay.media import serve_viewer
from relay.upstream import Upstream

log = logging.getLogger(__name__)

UPSTREAM_ANSWER_TIMEOUT_S = 10.0


class Refused(Exception):
    """The viewer's offer cannot be served; its session ends with ``reason``."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason)
        self.reason: EndReason = reason


@dataclass
class Downstream:
    """One viewer's session served here, of the camera ``device_id``."""

    session_id: str
    device_id: str
    pc: RTCPeerConnection | None = None
    remote: RemoteCandidates = field(default_factory=lambda: RemoteCandidates("downstream"))

    async def answer(
        self, offer: SessionOffer, upstream: Upstream
    ) -> tuple[RTCPeerConnection, str]:
        """Answer the viewer's ``offer`` with the camera's video from ``upstream``: the
        viewer's connection (not connected yet: the caller watches it) and the answer SDP.

        Waits up to ``UPSTREAM_ANSWER_TIMEOUT_S`` for the camera's codec. Raises
        :class:`Refused` with ``timeout`` when it does not come, ``codec_mismatch`` when the
        offer cannot take it, ``invalid_offer`` when the offer names no codec or aiortc
        cannot answer it; the connection, if made, stays for :meth:`close`.
        """
        codec = await upstream.codec_within(UPSTREAM_ANSWER_TIMEOUT_S)
        try:
            offered = codecs.offered_codecs(offer.sdp)
        except Exception:  # untrusted SDP; aiortc's parser raises assorted errors
            offered = []
        if codec is None or not any(c.takes(codec) for c in offered):
            # A viewer that cannot decode what the camera sends would get a black picture.
            log.info("relay: session %s cannot take %s", self.session_id, codec)
            raise Refused(
                "timeout" if codec is None else "codec_mismatch" if offered else "invalid_offer"
            )
        servers = [server.dump() for server in offer.ice_servers or []]
        pc = RTCPeerConnection(rtc_configuration((await reach.reachable(servers)).servers))
        self.pc = pc
        try:
            track = upstream.fanout.subscribe()
            sender = pc.addTransceiver(track, direction="sendonly").sender
            serve_viewer(sender, track)
            # Before the offer is set: aiortc picks an answer's codecs from the preferences
            # of the transceiver the offer's video section lands on, there and then.
            codecs.prefer_exactly(pc, [codec.capability()])
            await self.remote.set_description(pc, offer.sdp, "offer")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            log.warning("relay: cannot answer session %s: %s", self.session_id, exc)
            raise Refused("invalid_offer") from exc
        return pc, codecs.with_profile_level_id(pc.localDescription.sdp, codec)  # the camera's

    async def close(self) -> None:
        """Stop the tracks sent to the viewer (out of the fan-out) and close the connection."""
        if self.pc is not None:
            for sender in self.pc.getSenders():
                if sender.track is not None:
                    sender.track.stop()
            await self.pc.close()
