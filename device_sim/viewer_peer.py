"""The receive-only viewer peer: the Python viewer client's, the tests' and the benches'.

It offers, the camera (or a relay node) answers; see :mod:`device_sim.rtc` for what every
peer shares (candidates, watchdog, the ways it ends).

Loss repair (:class:`ReceiverRepair`). aiortc's video receiver (1.16) asks for a lost packet
again only when a *later* packet goes missing (``NackGenerator.add`` reports new gaps only;
nothing re-sends a NACK on a timer), and its jitter buffer hands out frames strictly in order,
at most one per packet received (``JitterBuffer.add``). On a lossy link both show: when a NACK
or the retransmission it asks for is lost (about one repair in ten at 5 % loss each way), every
later frame waits until some other packet is lost, ~1.3 s later on average on a 320x240 stream
of ~15 packets/s, and once the hole is filled the frames that waited leave one per arriving
packet, so on a stream of one packet per frame the viewer stays behind by every such stall
for good. Measured in-process (``tests/peer/test_lossy_link.py``'s forwarder, 5 % loss each
way): freezes of 1.2-4.0 s in half of the 10 s sessions, the decoded rate down to 10.5 fps.
The NAT lab saw the same (docs/benchmarks.md, "Connectivity"). Browsers do neither: they
re-send a NACK about every round trip, up to ten times, and decode every complete frame.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket
from av import VideoFrame

from device_sim.rtc import InvalidDescription, Peer, PeerEnd, PeerEndedError
from peer.ice import IceServerJson
from protocol.messages import EndReason

logger = logging.getLogger(__name__)

NACK_RETRY_FIRST_S = 0.1  # before a repair was timed (libwebrtc's default round trip, too)
NACK_RETRY_MIN_S = 0.02
NACK_RETRY_MAX_S = 1.0
NACK_RETRY_FACTOR = 1.25  # times the smoothed time a repair takes
NACK_MAX_TRIES = 10  # per lost packet, as libwebrtc's receiver

_PRIVATE = {  # what ReceiverRepair reaches into (aiortc 1.16; pyproject.toml allows >=1.16,<2)
    "nack generator": "_RTCRtpReceiver__nack_generator",
    "jitter buffer": "_RTCRtpReceiver__jitter_buffer",
    "decoder queue": "_RTCRtpReceiver__decoder_queue",
    "timestamp mapper": "_RTCRtpReceiver__timestamp_mapper",
    "codecs": "_RTCRtpReceiver__codecs",
}


_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"  # None once the receiver stopped


@dataclass
class _Asked:
    first: float  # when the packet was first asked for
    last: float  # and last
    tries: int = 1


class _RetryingNackGenerator(NackGenerator):
    """aiortc's generator (it still NACKs every missing packet at each new gap) telling
    :class:`ReceiverRepair` what it saw."""

    def __init__(self, repair: "ReceiverRepair", base: NackGenerator) -> None:
        super().__init__()
        self.max_seq = base.max_seq
        self.missing = set(base.missing)
        self._repair = repair

    def add(self, packet: RtpPacket) -> bool:
        filled = packet.sequence_number in self.missing
        missed = super().add(packet)
        try:
            self._repair._saw(packet, filled, missed)
        except Exception:  # never break aiortc's receive path
            logger.exception("ReceiverRepair failed on packet %d", packet.sequence_number)
        return missed


class ReceiverRepair:
    """What aiortc's video receiver lacks on a lossy link (the module docstring says why):

    - a packet still missing :attr:`retry_s` after it was last asked for is asked for again
      (an RTCP NACK), up to :data:`NACK_MAX_TRIES` times while aiortc tracks it (the last 128
      sequence numbers); :attr:`retry_s` is 1.25 times the smoothed time from a first NACK to
      its retransmission (0.1 s until one was timed), doubled at each retry until the next
      such time (as TCP's retransmission timer: Karn's rule times no packet asked for twice);
    - after aiortc took a frame out of its jitter buffer, every further complete frame is
      handed to the decoder too, so the frames that waited behind a hole are decoded at once.

    Built on the receiver before media flows (``ViewerPeer`` does it in its ``track`` event),
    then :meth:`run` as a task. It reaches into aiortc's privates: the receiver's NACK
    generator (replaced by a subclass of aiortc's), jitter buffer, decoder queue and thread,
    timestamp mapper and codecs (``_RTCRtpReceiver__*``), its ``_handle_rtp_packet`` and
    ``_send_rtcp_pli`` (wrapped on the instance, signatures kept), ``_send_rtcp_nack``, and
    ``JitterBuffer._remove_frame`` and ``_origin``. Raises :class:`RuntimeError` when one is
    gone (aiortc changed; ``ViewerPeer`` then logs an error and watches without it, and
    tests/peer/test_lossy_link.py fails). Counters: :attr:`lost` (packets found missing),
    :attr:`repaired` (of them, received later), :attr:`renacked` (packets asked for again by
    this class), :attr:`drained` (frames decoded that aiortc would have kept waiting),
    :attr:`keyframe_requests` (PLIs aiortc sent).
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        found = {what: getattr(receiver, name, None) for what, name in _PRIVATE.items()}
        missing = [what for what, value in found.items() if value is None]
        for method in ("_handle_rtp_packet", "_send_rtcp_nack", "_send_rtcp_pli"):
            if not callable(getattr(receiver, method, None)):
                missing.append(method)
        if not isinstance(found["nack generator"], NackGenerator):
            missing.append("a NackGenerator")
        if not isinstance(found["jitter buffer"], JitterBuffer) or not callable(
            getattr(JitterBuffer, "_remove_frame", None)
        ):
            missing.append("a JitterBuffer with _remove_frame")
        if missing:
            raise RuntimeError(f"aiortc's RTCRtpReceiver changed: no {', '.join(missing)}")
        self.lost = 0
        self.repaired = 0
        self.renacked = 0
        self.drained = 0
        self.keyframe_requests = 0
        self._receiver = receiver
        self._jitter: Any = found["jitter buffer"]
        self._decoder: Any = found["decoder queue"]
        self._timestamps: Any = found["timestamp mapper"]
        self._codecs: Any = found["codecs"]
        self._asked: dict[int, _Asked] = {}
        self._repair_s: float | None = None
        self._backoff = 1.0
        self._ssrc: int | None = None
        self._wake = asyncio.Event()
        base: Any = found["nack generator"]
        self._nacks = _RetryingNackGenerator(self, base)
        setattr(receiver, _PRIVATE["nack generator"], self._nacks)
        handle, send_pli = receiver._handle_rtp_packet, receiver._send_rtcp_pli

        async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
            await handle(packet, arrival_time_ms)
            try:
                self._drain(packet)
            except Exception:  # never break aiortc's receive path
                logger.exception("ReceiverRepair failed to drain the jitter buffer")

        async def send_rtcp_pli(media_ssrc: int) -> None:
            self.keyframe_requests += 1
            await send_pli(media_ssrc)

        setattr(receiver, "_handle_rtp_packet", handle_rtp_packet)  # noqa: B010
        setattr(receiver, "_send_rtcp_pli", send_rtcp_pli)  # noqa: B010

    @property
    def retry_s(self) -> float:
        """How long a NACK goes unanswered before the packet is asked for again."""
        if self._repair_s is None:
            base = NACK_RETRY_FIRST_S
        else:
            base = max(NACK_RETRY_MIN_S, NACK_RETRY_FACTOR * self._repair_s)
        return min(NACK_RETRY_MAX_S, base * self._backoff)

    async def run(self) -> None:
        """Ask again for packets whose NACK went unanswered, for as long as the peer lives."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                now = time.monotonic()
                retry_s = self.retry_s
                pending = [a for a in self._asked.values() if a.tries < NACK_MAX_TRIES]
                if not pending:
                    break
                due = sorted(
                    seq
                    for seq, a in self._asked.items()
                    if a.tries < NACK_MAX_TRIES and now - a.last >= retry_s
                )
                if due and self._ssrc is not None:
                    for seq in due:
                        self._asked[seq].last = now
                        self._asked[seq].tries += 1
                    self.renacked += len(due)
                    # As TCP's timer: doubled until a first NACK's answer is timed again (it may
                    # have fired too early, and Karn's rule times no packet asked for twice).
                    self._backoff = min(self._backoff * 2, NACK_RETRY_MAX_S / NACK_RETRY_MIN_S)
                    try:
                        await self._receiver._send_rtcp_nack(self._ssrc, due)
                    except Exception:  # aiortc's own send drops ConnectionError
                        logger.exception("ReceiverRepair could not send a NACK")
                    continue
                wait = min(a.last for a in pending) + retry_s - now
                await asyncio.sleep(max(wait, 0.005))

    def _saw(self, packet: RtpPacket, filled: bool, missed: bool) -> None:
        """The NACK generator took ``packet``: ``filled`` a hole, or revealed new ones."""
        now = time.monotonic()
        self._ssrc = packet.ssrc
        if filled:
            self.repaired += 1
            asked = self._asked.pop(packet.sequence_number, None)
            if asked is not None and asked.tries == 1:
                sample = now - asked.first
                smoothed = self._repair_s
                self._repair_s = sample if smoothed is None else 0.875 * smoothed + 0.125 * sample
                self._backoff = 1.0
        if missed:  # aiortc NACKs every missing packet now
            for seq in self._nacks.missing:
                asked = self._asked.get(seq)
                if asked is None:
                    self.lost += 1
                    self._asked[seq] = _Asked(now, now)
                else:
                    asked.last = now
                    asked.tries += 1
            self._wake.set()
        if len(self._asked) > len(self._nacks.missing):  # aiortc gave up on the oldest
            for seq in [s for s in self._asked if s not in self._nacks.missing]:
                del self._asked[seq]

    def _drain(self, packet: RtpPacket) -> None:
        """Hand the decoder every complete frame aiortc's jitter buffer still holds."""
        if self._jitter._origin is None or not getattr(self._receiver, _DECODER_THREAD, None):
            return
        codec = self._codecs.get(packet.payload_type)
        if codec is not None and is_rtx(codec):
            codec = self._codecs.get(codec.parameters.get("apt"))
        if codec is None:
            return
        while (frame := self._jitter._remove_frame(packet.sequence_number)) is not None:
            frame.timestamp = self._timestamps.map(frame.timestamp)
            self._decoder.put((codec, frame))
            self.drained += 1


class ViewerPeer(Peer):
    """A receive-only video viewer (the Python client, tests and benchmarks).

    Decoded frames are consumed as they arrive by a task the peer owns (aiortc queues them
    without bound otherwise); :attr:`frames` counts them and :attr:`last_frame` keeps the
    latest. Lost packets are asked for again and frames that waited behind them decoded at
    once (:attr:`repair`, a :class:`ReceiverRepair`, whose counters say how much it did).
    ``relay_only`` restricts ICE to relay candidates. ``session_id`` only names the peer in
    logs (a random one when omitted). ``on_end`` as for :class:`CameraPeer`.
    """

    _name = "ViewerPeer"

    def __init__(
        self,
        ice_servers: Sequence[IceServerJson],
        *,
        relay_only: bool = False,
        connect_timeout_s: float = 10.0,
        session_id: str | None = None,
        on_end: Callable[[PeerEnd], None] | None = None,
        codecs: Sequence[str] = (),
    ) -> None:
        super().__init__(
            session_id or secrets.token_hex(4),
            ice_servers,
            relay_only=relay_only,
            connect_timeout_s=connect_timeout_s,
            on_end=on_end,
        )
        self.codecs = codecs
        self._frames = 0
        self._first: VideoFrame | None = None
        self._last: VideoFrame | None = None
        self._first_or_end = asyncio.Event()
        self._offered = False
        self.repair: ReceiverRepair | None = None  # the video receiver's, once it exists

    @property
    def frames(self) -> int:
        """Decoded frames received so far."""
        return self._frames

    @property
    def receiver(self) -> RTCRtpReceiver | None:
        """aiortc's video receiver, once :meth:`offer` made it."""
        return next((t.receiver for t in self._pc.getTransceivers() if t.kind == "video"), None)

    @property
    def last_frame(self) -> VideoFrame | None:
        """The latest decoded frame, or ``None`` before the first."""
        return self._last

    async def offer(self) -> str:
        """Create the offer (one receive-only video section); returns its SDP with candidates.

        The connect timeout starts when this returns: the answer and ICE must both complete
        within it. Raises :class:`PeerEndedError` when the peer is closed meanwhile and
        :class:`RuntimeError` when called twice.
        """
        if self._offered:
            raise RuntimeError("offer() was already called")
        self._offered = True
        self._raise_if_closed()
        await self._use_reachable_servers()
        transceiver = self._pc.addTransceiver("video", direction="recvonly")
        if self.codecs:
            available = RTCRtpSender.getCapabilities("video").codecs
            wanted = [m.lower() for m in self.codecs]
            transceiver.setCodecPreferences(
                sorted(
                    (c for c in available if c.mimeType.lower() in wanted),
                    key=lambda c: wanted.index(c.mimeType.lower()),
                )
            )
        try:
            await self._pc.setLocalDescription(await self._pc.createOffer())
        except Exception as exc:
            self._raise_if_closed(exc)
            raise
        self._start_watch()
        return self._pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        """Apply the camera's (or relay's) answer; ignored once the peer is closed.

        Raises :class:`InvalidDescription` when the answer is rejected and
        :class:`RuntimeError` unless called once after :meth:`offer`.
        """
        if not self._offered or self._remote_set:
            raise RuntimeError("accept() needs a single call after offer()")
        if self._closed:
            return
        try:
            await self._set_remote(answer_sdp, "answer")
        except Exception as exc:  # untrusted SDP: aiortc raises assorted errors
            if self._closed:
                return
            raise InvalidDescription(f"the answer was rejected: {exc!r}") from exc

    async def first_frame(self, timeout: float) -> VideoFrame:  # noqa: ASYNC109 (the contract)
        """The first decoded frame, waiting up to ``timeout`` seconds for it.

        Raises :class:`TimeoutError`, or :class:`PeerEndedError` as soon as the peer ends or
        is closed without one.
        """
        if self._first is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._first_or_end.wait()
            except TimeoutError:
                raise TimeoutError(f"no video frame within {timeout:g} s") from None
        if self._first is None:
            raise PeerEndedError(self._end)
        return self._first

    def _connection(self, configuration: RTCConfiguration) -> RTCPeerConnection:
        pc = super()._connection(configuration)
        pc.on("track", self._on_track)
        return pc

    def _finish(self, reason: EndReason, message: str) -> None:
        super()._finish(reason, message)
        self._first_or_end.set()

    async def close(self) -> None:
        self._first_or_end.set()
        await super().close()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            return
        receiver = self.receiver
        if self.repair is None and receiver is not None and receiver.track is track:
            try:
                self.repair = ReceiverRepair(receiver)  # before media flows (aiortc's receive())
            except RuntimeError as exc:  # aiortc changed: watch as aiortc alone would
                self._log(logging.ERROR, "no loss repair: %s", exc)
            else:
                self._spawn(self.repair.run(), "loss repair")
        self._spawn(self._consume(track), "frames")

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._log(logging.INFO, "the video track ended after %d frames", self._frames)
                return
            if not isinstance(frame, VideoFrame):
                continue
            self._frames += 1
            self._last = frame
            if self._first is None:
                self._first = frame
                self._first_or_end.set()
                self._log(logging.INFO, "first frame %dx%d", frame.width, frame.height)
