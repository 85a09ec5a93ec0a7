"""A camera and a viewer in-process on loopback, through a link that loses and delays packets.

The camera is the agent's (its own H.264 encoder, one stream, 320x240 at 15 fps, a keyframe
every 2 s: ``device_sim.sources.OwnEncoder``, ``CameraPeer``), the viewer the Python one
(``ViewerPeer``, decoding). :class:`LossyLink` sits between them: each side's host candidate
is rewritten to one of its two sockets, so every datagram of the session (ICE, DTLS, RTP,
RTCP) crosses it, is dropped as the test says and delayed by half the round trip.

Item 7 of issue 13: "with 5 % loss and 150 ms round trip on the viewer's side, video keeps
playing". aiortc's receiver alone froze whenever a NACK or its retransmission was lost, until
another packet happened to be lost (device_sim/viewer_peer.py, ``ReceiverRepair``).
"""

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aioice.ice
import pytest
from aiortc.mediastreams import VIDEO_CLOCK_RATE

from device_sim.camera_peer import CameraPeer
from device_sim.media import SyntheticVideo
from device_sim.sources import OwnEncoder, open_source
from device_sim.viewer_peer import ReceiverRepair, ViewerPeer
from peer.network import use_host_addresses

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
    ``copies - 1`` retransmissions of it (same sequence number: the answer has no RTX)."""

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


def test_the_repair_refuses_a_receiver_without_the_aiortc_internals_it_uses() -> None:
    """If aiortc changes, the repair says what is missing instead of failing later."""

    class NotAReceiver:
        pass

    with pytest.raises(RuntimeError, match="nack generator"):
        ReceiverRepair(NotAReceiver())  # type: ignore[arg-type]
