"""The relay's own send loop for viewer senders (relay/sender.py) over real aiortc peers."""

import asyncio
import time
from collections.abc import AsyncIterator

import aiortc.rtcrtpsender
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.h264 import H264Encoder
from av import Packet

from peer import codecs
from peer.codecs import H264, VP8
from relay import sender as sender_loop
from relay.media import VIDEO_TIME_BASE, Fanout, FanoutTrack, serve_viewer
from tests.peer.test_lossy_link import LossyLink
from tests.peer.test_lossy_link import _through as through
from tests.relay.test_media import (
    FPS,
    Closing,
    camera,
    frames_reach,
    loopback_host_candidates,  # noqa: F401 (a fixture)
    serve,
    upstream,
    viewer,
)


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    opened = Closing()
    yield opened
    await opened.close()


def a_sender() -> tuple[RTCPeerConnection, RTCRtpSender]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    fanout = Fanout("guard")
    return pc, pc.addTransceiver(fanout.subscribe(), direction="sendonly").sender


async def test_aiortc_still_has_every_internal_the_send_loop_uses() -> None:
    """Fails loudly when aiortc (pinned ==1.16.0) changes what relay/sender.py reaches into:
    the relay would otherwise fall back to aiortc's slower loop with only a log line."""
    pc, sender = a_sender()
    try:
        sender_loop.check(sender)  # raises RuntimeError naming what is missing
        fast = sender_loop.install(sender)
        assert sender_loop.install(sender) is fast  # idempotent
        assert sender._run_rtp == fast.run  # type: ignore[comparison-overlap]
        assert sender._retransmit == fast.retransmit  # type: ignore[comparison-overlap]
        assert type(vars(aiortc.rtcrtpsender)["RTP_HISTORY_SIZE"]) is int
    finally:
        await pc.close()


async def test_a_sender_without_an_internal_is_refused_by_name() -> None:
    pc, sender = a_sender()
    try:
        del sender._RTCRtpSender__mid  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="_RTCRtpSender__mid"):
            sender_loop.install(sender)
    finally:
        await pc.close()


def test_an_h264_frame_is_packetized_once_for_every_viewer() -> None:
    data = b"\x00\x00\x00\x01\x67" + b"\x11" * 20 + b"\x00\x00\x00\x01\x65" + b"\x22" * 5000
    packet = Packet(data)
    packet.pts = 9000
    packet.time_base = VIDEO_TIME_BASE
    payloads, timestamp = sender_loop.shared_payloads(packet)
    again, _ = sender_loop.shared_payloads(packet)
    assert again is payloads  # the second viewer reuses the first one's packets
    assert (payloads, timestamp) == H264Encoder().pack(packet)  # exactly aiortc's


@pytest.mark.parametrize("codec", [H264, VP8])
async def test_viewers_decode_through_the_send_loop_and_the_reports_count_what_it_sent(
    closing: Closing, codec: str
) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam, codec))
    peers = [viewer(closing) for _ in range(2)]
    senders = [(await serve(closing, fanout, peer, codec))[1] for peer in peers]
    for peer in peers:
        await frames_reach(peer, FPS)
    for sender in senders:
        fast = vars(sender)["_visionconnect_fast_send"]
        assert isinstance(fast, sender_loop.FastSend)
        assert fast.frames >= FPS
        assert fast.direct_frames == fast.frames  # a host pair: straight to its socket
        stats = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        assert stats[0].packetsSent >= fast.packets - 200  # what the loop sent, per frame
        assert stats[0].packetsSent > 0
        transport = [s for s in (await sender.getStats()).values() if s.type == "transport"]
        assert transport[0].packetsSent >= stats[0].packetsSent  # the transport counts them too


async def test_a_packet_lost_on_the_way_to_a_viewer_is_sent_again_and_the_picture_goes_on(
    closing: Closing,
) -> None:
    """Through tests/peer/test_lossy_link.py's forwarder between the relay and the viewer:
    one H.264 packet dropped, the viewer NACKs it, the send loop answers from its history
    (the same packet: this answer has no RTX), and the viewer never freezes."""
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam, H264))
    link = LossyLink(rtt_s=0.05)
    await link.start()
    try:
        link.drop(index=40, copies=1)
        peer = viewer(closing)
        pc = closing.add(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        track: FanoutTrack = fanout.subscribe()
        sender = pc.addTransceiver(track, direction="sendonly").sender
        serve_viewer(sender, track)
        codecs.prefer(pc, (H264,))
        offer, link.viewer = through(await peer.offer(), link.port("camera"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer, link.camera = through(pc.localDescription.sdp, link.port("viewer"))
        assert "H264/90000" in answer
        assert "rtx/90000" not in answer  # so the link drops the original only, by number
        await peer.accept(answer)
        await peer.add_candidate(None)
        await peer.first_frame(timeout=10)
        fast = vars(sender)["_visionconnect_fast_send"]
        longest_gap, last, count = 0.0, time.monotonic(), peer.frames
        started = last
        while (now := time.monotonic()) - started < 5.0:
            if peer.frames != count:
                count, last = peer.frames, now
            longest_gap = max(longest_gap, now - last)
            await asyncio.sleep(0.01)
    finally:
        link.close()
    assert link.dropped["target"] == 1
    assert fast.retransmissions >= 1
    assert track.restarts == 0  # repaired by the retransmission, not by a new GOP
    assert longest_gap < 1.0, longest_gap
