"""A camera and a viewer in-process on loopback, through a link that loses and delays packets.

The camera is the agent's (its own H.264 encoder, one stream, 320x240 at 15 fps, a keyframe
every 2 s: ``device_sim.sources.OwnEncoder``, ``CameraPeer``), the viewer the Python one
(``ViewerPeer``, decoding). :class:`LossyLink` sits between them: each side's host candidate
is rewritten to one of its two sockets, so every datagram of the session (ICE, DTLS, RTP,
RTCP) crosses it, is dropped as the test says and delayed by half the round trip.

Item 7 of issue 13: "with 5 % loss and 150 ms round trip on the viewer's side, video keeps
playing". aiortc's receiver alone froze whenever a NACK or its retransmission was lost, until
another packet happened to be lost (peer/repair.py, ``ReceiverRepair``). And a viewer that
joins a cached GOP (peer/gop.py's catch-up: the whole GOP within 250 ms) lost a packet early
in that burst for good when more than aiortc's 128 packets of sender history left within a
round trip (peer/retransmission.py).
"""

import asyncio
import fractions
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aioice.ice
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc.mediastreams import VIDEO_CLOCK_RATE

from device_sim.camera_peer import CameraPeer
from device_sim.media import SyntheticVideo
from device_sim.sources import OwnEncoder, open_source
from device_sim.stream import EncodedStream
from device_sim.viewer_peer import ViewerPeer
from peer.codecs import H264
from peer.network import use_host_addresses
from peer.retransmission import RTP_HISTORY_PACKETS, history_packets

FPS = 15
RTT_S = 0.150
MAX_GAP_S = 1.0  # the item's "no freeze over 1 s"
# How much later than at its first frame the viewer shows the picture, at best over the last
# second of a hold (see Hold.behind_s): about a frame interval, the time the jitter buffer
# keeps a frame until the next one's first packet shows it complete. A viewer that stays
# behind a repaired loss keeps all the time the frames waited (0.4 s in the test that forces
# one, 1-3 s in the natlab's freezes).
MAX_BEHIND_S = 0.25


@pytest.fixture(scope="module", autouse=True)
def loopback_host_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = original


class _Side(asyncio.DatagramProtocol):
    def __init__(self, link: "LossyLink", side: str) -> None:
        self.link = link
        self.side = side

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        self.link.received(self.side, data)


def rtp_sequence(data: bytes) -> int | None:
    """The sequence number of an (S)RTP packet (its header is not encrypted), else None."""
    if len(data) < 12 or not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
        return None  # not RTP: STUN, DTLS, or RTCP (payload types 192-223 with the marker)
    return int.from_bytes(data[2:4], "big")


class LossyLink:
    """A UDP forwarder between one viewer and one camera: ``loss`` of the datagrams dropped
    each way (a seeded random choice), ``rtt_s`` / 2 added each way, and ``drop(n, copies)``:
    the ``n``-th RTP packet of the session from the camera dropped along with the first
    ``copies - 1`` retransmissions of it (same sequence number: the answer has no RTX);
    :attr:`target_sent` counts the times the camera sent that packet (dropped or not)."""

    def __init__(self, loss: float = 0.0, rtt_s: float = 0.0, seed: int = 7) -> None:
        self.loss = loss
        self.rtt_s = rtt_s
        self.random = random.Random(seed)
        self.viewer: tuple[str, int] | None = None
        self.camera: tuple[str, int] | None = None
        self.dropped: Counter[str] = Counter()
        self._transports: dict[str, asyncio.DatagramTransport] = {}
        self._first_sequence: int | None = None
        self._target: tuple[int, int] | None = None  # (packet index, copies to drop)
        self._copies_dropped = 0
        self.target_sent = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for side in ("viewer", "camera"):  # the socket each side talks to
            transport, _ = await loop.create_datagram_endpoint(
                lambda side=side: _Side(self, side),  # type: ignore[misc]
                local_addr=("127.0.0.1", 0),
            )
            self._transports[side] = transport

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()

    def drop(self, index: int, copies: int) -> None:
        self._target = (index, copies)

    def port(self, side: str) -> int:
        port: int = self._transports[side].get_extra_info("sockname")[1]
        return port

    def received(self, side: str, data: bytes) -> None:
        """A datagram to the socket ``side`` talks to: forward it to the other end."""
        to, out = (self.camera, "camera") if side == "viewer" else (self.viewer, "viewer")
        if to is None:
            return
        if side == "camera" and self._dropped_on_purpose(data):
            self.dropped["target"] += 1
            return
        if self.loss and self.random.random() < self.loss:
            self.dropped[side] += 1
            return
        if self.rtt_s:
            asyncio.get_running_loop().call_later(self.rtt_s / 2, self._send, out, data, to)
        else:
            self._send(out, data, to)

    def _send(self, out: str, data: bytes, to: tuple[str, int]) -> None:
        transport = self._transports[out]
        if not transport.is_closing():  # a delayed datagram may outlive the link
            transport.sendto(data, to)

    def _dropped_on_purpose(self, data: bytes) -> bool:
        sequence = rtp_sequence(data)
        if self._target is None or sequence is None:
            return False
        if self._first_sequence is None:
            self._first_sequence = sequence
        index, copies = self._target
        if (sequence - self._first_sequence) % 65536 != index:
            return False
        self.target_sent += 1
        self._copies_dropped += 1
        return self._copies_dropped <= copies

    async def connect(self, viewer: ViewerPeer, camera: CameraPeer) -> None:
        """Offer and answer with each side's host candidate rewritten to this link."""
        offer, self.viewer = _through(await viewer.offer(), self.port("camera"))
        answer, self.camera = _through(await camera.answer(offer), self.port("viewer"))
        await viewer.accept(answer)
        await viewer.add_candidate(None)
        await camera.add_candidate(None)


def _through(sdp: str, port: int) -> tuple[str, tuple[str, int]]:
    """``sdp`` whose loopback host candidate is ``127.0.0.1:port``; the one it had."""
    pattern = re.compile(r"(a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 )(\d+)( typ host)")
    found = pattern.search(sdp)
    assert found is not None, sdp
    return pattern.sub(rf"\g<1>{port}\g<3>", sdp), ("127.0.0.1", int(found.group(2)))


@dataclass
class Hold:
    frames: int  # decoded during the hold
    longest_gap_s: float  # without a decoded frame
    # The time since the first frame less the media time the decoded frames advanced
    # since (their pts: the camera's capture clock), the least over the hold's last second.
    behind_s: float


@dataclass
class Session:
    link: LossyLink
    viewer: ViewerPeer
    camera: CameraPeer

    async def watch(self, seconds: float, timeout: float) -> Hold:
        """Wait for the first frame, then watch for ``seconds``."""
        first = await self.viewer.first_frame(timeout)
        shown_at = time.monotonic()
        start = last = time.monotonic()
        count = begin = self.viewer.frames
        gap = 0.0
        behind_s = float("inf")
        while (now := time.monotonic()) - start < seconds:
            if self.viewer.frames != count:
                count, last = self.viewer.frames, now
            gap = max(gap, now - last)
            latest = self.viewer.last_frame
            if now - start > seconds - 1 and latest is not None:
                media_s = float((latest.pts or 0) - (first.pts or 0)) / VIDEO_CLOCK_RATE
                behind_s = min(behind_s, now - shown_at - media_s)
            await asyncio.sleep(0.01)
        return Hold(count - begin, gap, behind_s)


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    """Camera and viewer wired through a LossyLink (started, not yet connected)."""
    source = open_source(
        "synthetic", synthetic=lambda: SyntheticVideo(320, 240, fps=FPS), keyframe_interval=2 * FPS
    )
    assert isinstance(source, OwnEncoder)
    link = LossyLink()
    await link.start()
    track = source.track()
    assert await track.stream.wait_codec(10) is not None
    viewer = ViewerPeer([], session_id="lossy", connect_timeout_s=20)
    camera = CameraPeer("lossy", track, [], connect_timeout_s=20)
    try:
        yield Session(link, viewer, camera)
    finally:
        await viewer.close()
        await camera.close()
        await source.close()
        link.close()


async def test_a_packet_lost_with_its_first_retransmissions_is_asked_for_again(
    session: Session,
) -> None:
    """One packet and its first two retransmissions lost, nothing else: aiortc's receiver
    NACKs only when it sees a new gap, so it never asked again and every later frame waited
    behind the hole (its jitter buffer gives up only 512 packets later: 30 s here)."""
    link = session.link
    link.rtt_s = RTT_S
    link.drop(index=60, copies=3)  # ~2.5 s in: past the start's catch-up, before the hold ends
    await link.connect(session.viewer, session.camera)

    held = await session.watch(6.0, timeout=10)

    assert held.longest_gap_s < MAX_GAP_S, held
    # the frames that waited behind the hole were decoded, not left as lasting delay
    assert held.behind_s <= MAX_BEHIND_S, held
    assert link.dropped["target"] == 3  # the packet and two retransmissions: it was asked for
    repair = session.viewer.repair
    assert repair is not None
    assert (repair.lost, repair.repaired) == (1, 1)
    assert repair.renacked >= 2  # no other loss: only a retry could ask again


async def test_five_percent_loss_each_way_and_150_ms_round_trip_keep_the_video_playing(
    session: Session,
) -> None:
    """The item's link from the first datagram (ICE and DTLS too): over a 10 s hold no gap
    between decoded frames reaches 1 s, the rate stays near the camera's 15 fps (the item
    asks >= 10), and the viewer does not fall behind. Before ReceiverRepair, about half of
    such sessions froze for 1.2-4 s (its docstring). The loss is random with a fixed seed,
    but which datagrams it hits depends on timing, so this is a statistical check: with
    retries, a 1 s freeze needs about four repairs in a row to fail (10 % each)."""
    link = session.link
    link.loss, link.rtt_s = 0.05, RTT_S
    await link.connect(session.viewer, session.camera)

    held = await session.watch(10.0, timeout=20)

    assert held.longest_gap_s < MAX_GAP_S, held
    assert held.frames >= 10 * 10, held
    assert held.behind_s <= MAX_BEHIND_S, held
    repair = session.viewer.repair
    assert repair is not None
    assert repair.lost > 0  # the link did lose media


GOP_FRAMES = 30  # a 2 s GOP at 15 fps
GOP_QP = 40  # noise at this quantizer: ~20 KB a frame, ~515 RTP packets in all
LOST_INDEX = 3  # the RTP packet lost: in the keyframe, the first frame of the catch-up


def noise_gop() -> list[bytes]:
    """A GOP of H.264 frames (Constrained Baseline, one keyframe first) of random pixels,
    each several packets long: a cached GOP as a fast camera's is, in RTP packets."""
    rng = np.random.default_rng(1)
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast"}
    encoder.options |= {"qp": str(GOP_QP), "g": str(10 * GOP_FRAMES)}
    frames = []
    for n in range(GOP_FRAMES):
        image = av.VideoFrame.from_ndarray(
            rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), format="rgb24"
        )
        image.pts = n
        frames += [bytes(packet) for packet in encoder.encode(image)]
    frames += [bytes(packet) for packet in encoder.encode(None)]
    return frames


@pytest.fixture
async def late_joiner() -> AsyncIterator[Session]:
    """A viewer joining a passthrough stream (an RTSP camera's, or the relay's fan-out) whose
    whole GOP is cached and nothing else comes: its session is the GOP catch-up alone."""
    stream = EncodedStream(H264, "cached")
    gop = noise_gop()
    for n, data in enumerate(gop):
        stream.publish(data, pts=n * VIDEO_CLOCK_RATE // FPS)
    assert stream.codec is not None
    assert stream.frames == GOP_FRAMES
    link = LossyLink()
    await link.start()
    viewer = ViewerPeer([], session_id="late", connect_timeout_s=20)
    camera = CameraPeer("late", stream.track(), [], connect_timeout_s=20)
    try:
        yield Session(link, viewer, camera)
    finally:
        await viewer.close()
        await camera.close()
        stream.stop()
        link.close()


async def join_losing_one_packet(session: Session) -> None:
    """150 ms round trip, no random loss: the catch-up's packet ``LOST_INDEX`` is dropped
    once (its retransmissions pass)."""
    link = session.link
    link.rtt_s = RTT_S
    link.drop(index=LOST_INDEX, copies=1)
    await link.connect(session.viewer, session.camera)


async def test_a_packet_lost_early_in_a_gop_catch_up_is_retransmitted_to_a_late_joiner(
    late_joiner: Session,
) -> None:
    """The relay node's slow first frame (docs/benchmarks.md, "Connectivity"): the packet's
    NACK reaches the sender a round trip after it, when ~300 more packets of the catch-up
    have left. With the history raised (peer/retransmission.py, imported by peer/gop.py) the
    sender still has it, and the viewer decodes the whole GOP."""
    assert history_packets() >= RTP_HISTORY_PACKETS
    await join_losing_one_packet(late_joiner)

    # no timing asserted: without the retransmission no frame would ever come (nothing
    # follows the GOP to push the hole out of the jitter buffer); 10 s only bounds the wait
    await late_joiner.viewer.first_frame(timeout=10)
    async with asyncio.timeout(10):
        while late_joiner.viewer.frames < GOP_FRAMES - 1:  # the last waits for a next frame
            await asyncio.sleep(0.02)

    link, repair = late_joiner.link, late_joiner.viewer.repair
    assert repair is not None
    # sent, lost, and sent again when asked (twice when the viewer's retry, 0.1 s before it
    # timed a repair, fires before the round trip's answer came)
    assert link.target_sent >= 2
    assert (repair.lost, repair.repaired) == (1, 1)


async def test_aiortcs_own_history_leaves_that_packet_unanswered(
    late_joiner: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cause, and what makes the test above able to fail: with aiortc's 128 packets the
    same NACK finds the packet gone, so it is never sent again and the viewer shows
    nothing (until, on a live stream, its jitter buffer gives up 512 packets later)."""
    monkeypatch.setattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", 128)
    await join_losing_one_packet(late_joiner)
    viewer = late_joiner.viewer
    async with asyncio.timeout(10):  # the viewer saw the hole (and so NACKed it)
        while viewer.repair is None or viewer.repair.lost == 0:
            await asyncio.sleep(0.02)

    await asyncio.sleep(2.0)  # > 10 round trips after the NACK: any answer would be here

    assert late_joiner.link.target_sent == 1
    assert viewer.repair is not None
    assert viewer.repair.renacked > 0  # asked for again and again, in vain
    assert viewer.repair.repaired == 0
    assert viewer.frames == 0
