"""The relay's fan-out with real aiortc peers on loopback: camera -> relay -> viewers."""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from av import VideoFrame

from device_sim.camera_peer import CameraPeer
from device_sim.media import SyntheticVideo
from device_sim.viewer_peer import ViewerPeer
from peer import codecs
from peer.codecs import H264, NAL_IDR, NAL_PPS, NAL_SPS, is_vp8_keyframe, nal_units
from peer.network import use_host_addresses
from relay.media import KEYFRAME_RETRY_S, Fanout, FanoutTrack, serve_viewer
from tests.peer.test_lossy_link import LossyLink
from tests.peer.test_lossy_link import _through as through

WIDTH, HEIGHT, FPS = 320, 240, 15


@pytest.fixture(scope="module", autouse=True)
def loopback_host_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = original


class Closing:
    """Everything a test opened, closed afterwards in reverse order, whatever happened."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    async def close(self) -> None:
        for item in reversed(self.items):
            async with asyncio.timeout(10):
                await item.close()


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    opened = Closing()
    yield opened
    await opened.close()


def camera(closing: Closing, keyframe_interval: int | None = None) -> CameraPeer:
    video = SyntheticVideo(WIDTH, HEIGHT, fps=FPS, keyframe_interval=keyframe_interval)
    peer: CameraPeer = closing.add(CameraPeer("cam", video.track(), []))
    return peer


async def upstream(closing: Closing, cam: CameraPeer, codec: str | None = None) -> RTCRtpReceiver:
    """The relay's connection to the camera (the relay offers to receive, ``codec`` only if
    given); its receiver."""
    pc = closing.add(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    if codec is not None:
        codecs.prefer(pc, (codec,))
    await pc.setLocalDescription(await pc.createOffer())
    answer = await cam.answer(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await cam.add_candidate(None)
    receiver: RTCRtpReceiver = transceiver.receiver
    return receiver


async def serve(
    closing: Closing, fanout: Fanout, viewer: ViewerPeer, codec: str | None = None
) -> tuple[FanoutTrack, RTCRtpSender]:
    """The relay answers a viewer's offer with a fan-out track (in ``codec`` if given, as
    the node answers in the camera's); the track and its sender."""
    pc = closing.add(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    track = fanout.subscribe()
    sender = pc.addTransceiver(track, direction="sendonly").sender
    if codec is not None:  # before the offer: aiortc picks an answer's codecs when it is set
        codecs.prefer(pc, (codec,))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await viewer.offer(), type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    serve_viewer(sender, track)
    await viewer.accept(pc.localDescription.sdp)
    await viewer.add_candidate(None)
    return track, sender


def viewer(closing: Closing) -> ViewerPeer:
    peer: ViewerPeer = closing.add(ViewerPeer([]))
    return peer


def record(track: FanoutTrack) -> list[Any]:
    """The packets the track hands to its sender, in order."""
    seen: list[Any] = []
    original = track.recv

    async def recv() -> Any:
        packet = await original()
        seen.append(packet)
        return packet

    track.recv = recv  # type: ignore[method-assign]
    return seen


async def frames_reach(peer: ViewerPeer, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while peer.frames < count:
            await asyncio.sleep(0.02)


async def test_three_viewers_decode_the_camera_from_one_upstream_and_get_the_same_packets(
    closing: Closing,
) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    viewers = [viewer(closing) for _ in range(3)]
    recorded = []
    for peer in viewers:
        track, _ = await serve(closing, fanout, peer)
        recorded.append(record(track))

    for peer in viewers:
        await frames_reach(peer, 20)

    assert fanout.viewers == 3
    for peer in viewers:
        frame = peer.last_frame
        assert frame is not None
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    by_pts = [{packet.pts: packet for packet in packets} for packets in recorded]
    common = set(by_pts[0]) & set(by_pts[1]) & set(by_pts[2])
    # after each viewer's start from the cached GOP (copies), the very same packet objects
    shared = [pts for pts in common if by_pts[0][pts] is by_pts[1][pts] is by_pts[2][pts]]
    assert len(shared) >= 15
    # one upstream: the camera encoded each frame once, and the relay received each once
    sent = cam.frames_sent
    assert sent is not None
    assert sent - 3 <= fanout.frames_received <= sent
    assert sum(peer.frames for peer in viewers) > 2 * sent


async def test_a_late_viewer_starts_from_the_cached_gop_at_once_without_asking_the_camera(
    closing: Closing,
) -> None:
    """The camera's next keyframe is ~18 s away; the late viewer does not wait for it, and
    the camera (and so every other viewer) is not asked for one."""
    cam = camera(closing, keyframe_interval=20 * FPS)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    early = viewer(closing)
    await serve(closing, fanout, early)
    await frames_reach(early, 2 * FPS)  # the camera's next periodic keyframe is ~18 s away
    before, asked = cam.keyframes_sent, fanout.keyframe_requests
    assert before is not None

    late = viewer(closing)
    started = time.monotonic()
    track, _ = await serve(closing, fanout, late)
    await late.first_frame(timeout=3)
    waited = time.monotonic() - started

    assert waited < 1.0
    assert fanout.keyframe_requests == asked
    assert cam.keyframes_sent == before
    assert not track.waiting_for_keyframe
    early_frames = early.frames
    await frames_reach(late, 10)
    assert early.frames > early_frames


async def test_an_h264_camera_reaches_viewers_as_its_own_nal_units_each_starting_decodable(
    closing: Closing,
) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam, H264))
    early = viewer(closing)
    early_track, _ = await serve(closing, fanout, early, H264)
    early_packets = record(early_track)
    await frames_reach(early, FPS)
    asked = fanout.keyframe_requests
    late = viewer(closing)
    started = time.monotonic()
    late_track, _ = await serve(closing, fanout, late, H264)
    late_packets = record(late_track)
    await late.first_frame(timeout=3)
    assert time.monotonic() - started < 1.0
    await frames_reach(late, 10)

    frame = late.last_frame
    assert frame is not None
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    assert fanout.keyframe_requests == asked  # the late viewer started from the cached GOP
    for packets in (early_packets, late_packets):
        first = {unit[0] & 0x1F for unit in nal_units(bytes(packets[0]))}
        assert {NAL_SPS, NAL_PPS, NAL_IDR} <= first  # a decoder can start right there
    # Forwarded, not re-encoded: after the GOP, the late viewer's packets are the early one's.
    async with asyncio.timeout(5):
        while (
            len([p for p in late_packets if {q.pts: q for q in early_packets}.get(p.pts) is p]) < 5
        ):
            await asyncio.sleep(0.05)


async def test_unsubscribing_a_viewer_stops_its_delivery_and_not_the_others(
    closing: Closing,
) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    staying, leaving = viewer(closing), viewer(closing)
    await serve(closing, fanout, staying)
    track, _ = await serve(closing, fanout, leaving)
    await frames_reach(staying, 5)
    await frames_reach(leaving, 5)

    fanout.unsubscribe(track)
    fanout.unsubscribe(track)  # idempotent
    await asyncio.sleep(0.2)  # frames already in flight
    left_at, staying_at, packets = leaving.frames, staying.frames, track.packets
    await asyncio.sleep(1.0)

    assert fanout.viewers == 1
    assert track.readyState == "ended"
    assert (leaving.frames, track.packets) == (left_at, packets)
    assert staying.frames >= staying_at + FPS // 2
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_the_analytics_tap_delivers_decoded_frames_at_the_requested_rate(
    closing: Closing,
) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    got: list[tuple[float, VideoFrame]] = []

    async def tap() -> None:
        async for frame in fanout.frames(fps=5):
            got.append((time.monotonic(), frame))

    task = asyncio.create_task(tap())
    try:
        async with asyncio.timeout(10):
            while len(got) < 2:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        await asyncio.sleep(2.0)
        window = [frame for at, frame in got if started <= at < started + 2.0]
    finally:
        task.cancel()

    assert 8 <= len(window) <= 11
    assert all((frame.width, frame.height) == (WIDTH, HEIGHT) for frame in window)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
    assert min(gaps) >= 0.19


async def test_a_slow_analytics_consumer_does_not_slow_the_viewers(closing: Closing) -> None:
    cam = camera(closing)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    watcher = viewer(closing)
    await serve(closing, fanout, watcher)
    await frames_reach(watcher, 5)
    analysed = 0

    async def slow_tap() -> None:
        nonlocal analysed
        async for _ in fanout.frames(fps=15):
            analysed += 1
            await asyncio.sleep(0.5)  # an analysis that takes 7 frame times

    task = asyncio.create_task(slow_tap())
    try:
        before = watcher.frames
        await asyncio.sleep(3.0)
        delivered = watcher.frames - before
    finally:
        task.cancel()

    assert analysed <= 7
    assert delivered >= 3.0 * FPS * 0.85


async def test_a_viewers_picture_loss_report_asks_the_camera_for_a_keyframe(
    closing: Closing,
) -> None:
    cam = camera(closing, keyframe_interval=20 * FPS)
    fanout = closing.add(Fanout("cam"))
    fanout.attach(await upstream(closing, cam))
    watcher = viewer(closing)
    track, sender = await serve(closing, fanout, watcher)
    await frames_reach(watcher, FPS)
    keyframes = cam.keyframes_sent
    assert keyframes is not None
    await asyncio.sleep(KEYFRAME_RETRY_S)  # past the joiner's own request
    seen = record(track)

    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1234, media_ssrc=sender._ssrc)
    await sender._handle_rtcp_packet(pli)  # what aiortc does when the viewer's PLI arrives
    async with asyncio.timeout(2):
        while not any(is_vp8_keyframe(bytes(packet)) for packet in seen):
            await asyncio.sleep(0.02)

    after = cam.keyframes_sent
    assert after is not None
    assert after > keyframes


async def test_viewers_carry_on_when_the_camera_comes_back_on_a_new_upstream(
    closing: Closing,
) -> None:
    fanout = closing.add(Fanout("cam"))
    first = camera(closing)
    fanout.attach(await upstream(closing, first))
    watcher = viewer(closing)
    track, _ = await serve(closing, fanout, watcher)
    seen = record(track)
    await frames_reach(watcher, 10)

    await first.close()
    await asyncio.sleep(0.3)
    before = watcher.frames
    fanout.attach(await upstream(closing, camera(closing)))
    await frames_reach(watcher, before + 10)

    pts = [packet.pts for packet in seen]
    assert pts == sorted(pts)
    assert len(set(pts)) == len(pts)


async def test_closing_the_fanout_ends_every_viewer_track_and_tap(closing: Closing) -> None:
    cam = camera(closing)
    fanout = Fanout("cam")
    fanout.attach(await upstream(closing, cam))
    tracks = [fanout.subscribe(), fanout.subscribe()]
    ended = asyncio.Event()

    async def tap() -> None:
        async for _ in fanout.frames(fps=5):
            pass
        ended.set()

    task = asyncio.create_task(tap())
    await asyncio.sleep(0.5)
    await fanout.close()
    await fanout.close()

    async with asyncio.timeout(3):
        await ended.wait()
    await task
    assert fanout.viewers == 0
    for track in tracks:
        assert track.readyState == "ended"
        with pytest.raises(MediaStreamError):
            await track.recv()
    with pytest.raises(RuntimeError, match="closed"):
        fanout.subscribe()


async def test_a_receiver_serves_one_fanout_and_the_tap_rate_must_be_positive(
    closing: Closing,
) -> None:
    receiver = await upstream(closing, camera(closing))
    fanout = closing.add(Fanout("cam"))
    other = closing.add(Fanout("cam"))
    fanout.attach(receiver)

    with pytest.raises(RuntimeError, match="already attached"):
        other.attach(receiver)
    with pytest.raises(ValueError, match="positive"):
        fanout.frames(0)


async def test_a_packet_lost_on_the_camera_uplink_with_its_first_retransmissions_is_asked_again(
    closing: Closing,
) -> None:
    """The relay's upstream is an aiortc receiver too: without peer/repair.py on it, a
    packet lost with its first two retransmissions (nothing else lost) was never asked for
    again, and every later frame waited behind the hole (for 512 packets, ~30 s here), so
    every viewer of the camera froze. Through tests/peer/test_lossy_link.py's forwarder,
    150 ms round trip. The frames that waited are forwarded at once through the fan-out's
    decoder-queue hook, so the viewer does not freeze (a time: the item's 1 s)."""
    cam = camera(closing)
    link = LossyLink(rtt_s=0.150)
    await link.start()
    try:
        link.drop(index=60, copies=3)  # ~2-4 s in, after the viewer started
        pc = closing.add(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(pc, (codecs.VP8,))  # without RTX: a retransmission keeps its number
        await pc.setLocalDescription(await pc.createOffer())
        offer, link.viewer = through(pc.localDescription.sdp, link.port("camera"))
        answer, link.camera = through(await cam.answer(offer), link.port("viewer"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await cam.add_candidate(None)
        fanout = closing.add(Fanout("cam"))
        fanout.attach(transceiver.receiver)
        peer = viewer(closing)
        await serve(closing, fanout, peer)
        await peer.first_frame(timeout=10)

        longest_gap, last, count = 0.0, time.monotonic(), peer.frames
        started = last
        while (now := time.monotonic()) - started < 6.0:
            if peer.frames != count:
                count, last = peer.frames, now
            longest_gap = max(longest_gap, now - last)
            await asyncio.sleep(0.01)
    finally:
        link.close()

    assert link.dropped["target"] == 3  # the packet and two retransmissions: asked again
    repair = fanout.repair
    assert repair is not None
    assert (repair.lost, repair.repaired) == (1, 1)
    assert repair.renacked >= 2  # no other loss: only a retry could ask again
    sent = cam.frames_sent
    assert sent is not None
    assert fanout.frames_received >= sent - 3  # none left behind the hole
    assert longest_gap < 1.0, longest_gap
