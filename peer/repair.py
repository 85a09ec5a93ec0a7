"""Loss repair for an aiortc video receiver: the Python viewer's (:mod:`device_sim.viewer_peer`)
and the relay node's upstream from a camera (:meth:`relay.media.Fanout.attach`).

aiortc's video receiver (1.16) asks for a lost packet again only when a *later* packet goes
missing (``NackGenerator.add`` reports new gaps only; nothing re-sends a NACK on a timer), and
its jitter buffer hands out frames strictly in order, at most one per packet received
(``JitterBuffer.add``). On a lossy link both show: when a NACK or the retransmission it asks
for is lost (about one repair in ten at 5 % loss each way), every later frame waits until some
other packet is lost, ~1.3 s later on average on a 320x240 stream of ~15 packets/s, and once
the hole is filled the frames that waited leave one per arriving packet, so on a stream of one
packet per frame the receiver stays behind by every such stall for good. Measured in-process
(``tests/peer/test_lossy_link.py``'s forwarder, 5 % loss each way): freezes of 1.2-4.0 s in
half of the 10 s sessions, the decoded rate down to 10.5 fps. The NAT lab saw the same
(docs/benchmarks.md, "Connectivity"). Browsers do neither: they re-send a NACK about every
round trip, up to ten times, and decode every complete frame. A relay node's upstream is such
a receiver too: a stall there freezes every viewer of the camera.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

logger = logging.getLogger(__name__)

NACK_RETRY_FIRST_S = 0.1  # before a repair was timed (libwebrtc's default round trip, too)
NACK_RETRY_MIN_S = 0.02
NACK_RETRY_MAX_S = 1.0
NACK_RETRY_FACTOR = 1.25  # times the smoothed time a repair takes
NACK_MAX_TRIES = 10  # per lost packet, as libwebrtc's receiver

_PRIVATE = {  # what ReceiverRepair reaches into (aiortc 1.16.0, pinned in pyproject.toml for it)
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
    :class:`ReceiverRepair` what it saw, and tracking a missing packet as long as the jitter
    buffer waits for it (``window`` sequence numbers) rather than aiortc's 128: a GOP
    catch-up (peer/gop.py) brings more than 128 packets within one round trip, and a packet
    lost early in it left aiortc's tracking before its retransmission came."""

    def __init__(self, repair: "ReceiverRepair", base: NackGenerator, window: int) -> None:
        super().__init__()
        self.max_seq = base.max_seq
        self.missing = set(base.missing)
        self._repair = repair
        self._window = window

    def truncate(self) -> None:
        if self.max_seq is not None:
            oldest = uint16_add(self.max_seq, -self._window)
            self.missing = {seq for seq in self.missing if not uint16_gt(oldest, seq)}

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
      (an RTCP NACK), up to :data:`NACK_MAX_TRIES` times while the jitter buffer waits for it
      (its capacity, 512 sequence numbers: aiortc's generator tracks only 128);
      :attr:`retry_s` is 1.25 times the smoothed time from a first NACK to its retransmission
      (0.1 s until one was timed), doubled at each retry until the next such time (as TCP's
      retransmission timer: Karn's rule times no packet asked for twice);
    - after aiortc took a frame out of its jitter buffer, every further complete frame is
      handed to the decoder too, so the frames that waited behind a hole are decoded at once.

    Built on the receiver (``ViewerPeer`` does it in its ``track`` event, before media flows;
    ``Fanout.attach`` on the relay's upstream, whose decoder-queue hook also sees the frames
    drained here: they go through the same ``put``), then :meth:`run` as a task. It reaches
    into aiortc's privates: the receiver's NACK generator (replaced by a subclass of
    aiortc's), jitter buffer, decoder queue and thread,
    timestamp mapper and codecs (``_RTCRtpReceiver__*``), its ``_handle_rtp_packet`` and
    ``_send_rtcp_pli`` (wrapped on the instance, signatures kept), ``_send_rtcp_nack``, and
    ``JitterBuffer._remove_frame`` and ``_origin``. Raises :class:`RuntimeError` when one is
    gone (aiortc changed; ``ViewerPeer`` and ``Fanout`` then log an error and carry on
    without it, and tests/peer/test_lossy_link.py fails), or when the receiver already has
    one. Counters: :attr:`lost` (packets found missing),
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
        if isinstance(found["nack generator"], _RetryingNackGenerator):
            raise RuntimeError("this receiver already has a ReceiverRepair")
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
        window: int = found["jitter buffer"].capacity  # type: ignore[union-attr]
        self._nacks = _RetryingNackGenerator(self, base, window)
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
