"""Real aiortc peers in-process on loopback: a viewer and a camera, with and without coturn."""

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from cloud.ice import turn_credential
from device_sim.camera_peer import CameraPeer
from device_sim.media import SyntheticVideo
from device_sim.rtc import InvalidDescription, PeerEndedError
from device_sim.viewer_peer import ViewerPeer
from peer import reach
from peer.ice import rtc_configuration
from peer.network import use_host_addresses
from tests.servers import coturn_server

TURN_SECRET = "device-sim-turn-secret-0123456789"
WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module", autouse=True)
def loopback_host_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = original


@pytest.fixture(scope="module")
def turn_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with coturn_server(TURN_SECRET, tmp_path_factory.mktemp("coturn") / "coturn.log") as port:
        yield port


@pytest.fixture
def video() -> SyntheticVideo:
    return SyntheticVideo(WIDTH, HEIGHT, fps=15)


@pytest.fixture
async def closing() -> AsyncIterator[list[CameraPeer | ViewerPeer]]:
    """Peers to close after the test, whatever happened (bounded: close() has a timeout)."""
    peers: list[CameraPeer | ViewerPeer] = []
    yield peers
    for peer in peers:
        await peer.close()


def turn_servers(port: int, principal: str, secret: str = TURN_SECRET) -> list[dict[str, Any]]:
    username, credential = turn_credential(secret, principal, 600, time.time())
    return [{"urls": [f"turn:127.0.0.1:{port}"], "username": username, "credential": credential}]


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without its candidates, and those candidates as a browser would trickle them."""
    kept: list[str] = []
    found: list[tuple[int, str]] = []
    mids: dict[int, str] = {}
    section = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:"):
            mids[section] = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            found.append((section, line.removeprefix("a=")))
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    trickled = [{"candidate": c, "sdpMid": mids[i], "sdpMLineIndex": i} for i, c in found]
    return "\r\n".join(kept) + "\r\n", trickled


async def wait_for_frames(viewer: ViewerPeer, count: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while viewer.frames < count:
            await asyncio.sleep(0.05)


async def connect(viewer: ViewerPeer, camera: CameraPeer) -> None:
    offer = await viewer.offer()
    answer = await camera.answer(offer)
    await viewer.accept(answer)
    await viewer.add_candidate(None)
    await camera.add_candidate(None)


async def test_viewer_decodes_camera_frames_over_loopback_host_candidates(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([], session_id="s-host")
    camera = CameraPeer("s-host", video.track(), [])
    closing += [camera, viewer]

    await connect(viewer, camera)
    frame = await viewer.first_frame(timeout=10)

    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    await wait_for_frames(viewer, 10)
    for peer in (viewer, camera):
        pair = peer.selected_pair()
        assert pair is not None
        assert pair["local"]["type"] == pair["remote"]["type"] == "host"
        assert pair["local"]["address"] == pair["remote"]["address"] == "127.0.0.1"
        assert pair["local"]["protocol"] == "udp"
    camera_pair, viewer_pair = camera.selected_pair(), viewer.selected_pair()
    assert camera_pair is not None
    assert viewer_pair is not None
    assert camera_pair["local"]["port"] == viewer_pair["remote"]["port"]
    assert viewer.ended is None
    assert camera.ended is None


def hide_behind_mdns(sdp: str) -> str:
    """The SDP as a stock browser writes it: host addresses replaced by mDNS names."""
    lines = []
    for line in sdp.split("\r\n"):
        bits = line.split(" ")
        if line.startswith("a=candidate:") and len(bits) > 7 and bits[7] == "host":
            bits[4] = f"{uuid.uuid4()}.local"
        lines.append(" ".join(bits))
    return "\r\n".join(lines)


async def test_a_camera_connects_to_a_stock_browser_whose_candidates_are_all_mdns_names(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [])
    closing += [camera, viewer]
    offer = hide_behind_mdns(await viewer.offer())
    assert ".local" in offer
    assert "127.0.0.1" not in offer.split("a=candidate", 1)[1]
    answer = await camera.answer(offer)
    await camera.add_candidate(None)  # what the browser sends: the end, nothing usable
    await viewer.accept(answer)

    await viewer.first_frame(timeout=10)
    pair = camera.selected_pair()
    assert pair is not None
    assert pair["remote"]["type"] == "prflx"  # learned from the viewer's checks
    assert camera.ended is None


async def test_with_mdns_candidates_only_and_no_check_the_camera_fails_at_its_timeout(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [], connect_timeout_s=1.5)
    closing += [camera, viewer]
    await camera.answer(hide_behind_mdns(await viewer.offer()))
    await camera.add_candidate(None)  # and the viewer never gets the answer: no check comes
    end = await asyncio.wait_for(camera.wait_failed(), 5)
    assert end is not None
    assert end.reason == "ice_failed"
    assert "behind mDNS names" in end.message


async def test_camera_accepts_candidates_trickled_in_the_browser_format(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [])
    closing += [camera, viewer]
    offer, trickled = split_candidates(await viewer.offer())
    assert trickled
    assert "a=candidate" not in offer

    await camera.add_candidate(trickled[0])  # before the offer: held until it is set
    answer = await camera.answer(offer)
    for candidate in trickled[1:]:
        await camera.add_candidate(candidate)
    await camera.add_candidate(None)
    await viewer.accept(answer)

    await viewer.first_frame(timeout=10)


async def test_relay_only_viewer_receives_frames_through_coturn(
    video: SyntheticVideo, turn_port: int, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer(turn_servers(turn_port, "user:viewer"), relay_only=True)
    camera = CameraPeer(viewer.session_id, video.track(), turn_servers(turn_port, "device:cam"))
    closing += [camera, viewer]

    offer = await viewer.offer()
    assert " typ relay" in offer
    assert " typ host" not in offer
    await viewer.accept(await camera.answer(offer))
    frame = await viewer.first_frame(timeout=10)

    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    pair = viewer.selected_pair()
    assert pair is not None
    assert pair["local"]["type"] == "relay"
    await wait_for_frames(viewer, 5)


async def test_where_udp_is_dropped_both_peers_relay_through_turn_over_tcp_without_waiting(
    video: SyntheticVideo, turn_port: int, closing: list[CameraPeer | ViewerPeer]
) -> None:
    """The cloud lists TURN over UDP first; here nothing answers UDP (a port that drops it),
    so each peer gives aiortc the TCP URL, and no gathering waits out a silent server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dropping:
        dropping.bind(("127.0.0.1", 0))
        dead = dropping.getsockname()[1]

        def servers(principal: str) -> list[dict[str, Any]]:
            username, credential = turn_credential(TURN_SECRET, principal, 600, time.time())
            urls = [
                f"turn:127.0.0.1:{dead}?transport=udp",
                f"turn:127.0.0.1:{turn_port}?transport=tcp",
            ]
            stun = {"urls": [f"stun:127.0.0.1:{dead}"]}
            return [stun, {"urls": urls, "username": username, "credential": credential}]

        reach.forget()
        viewer = ViewerPeer(servers("user:viewer"), relay_only=True)
        camera = CameraPeer(viewer.session_id, video.track(), servers("device:cam"))
        closing += [camera, viewer]
        started = time.monotonic()
        await connect(viewer, camera)
        await viewer.first_frame(timeout=10)
        assert time.monotonic() - started < 3  # not aioice's 5 s gathering timeout
        for peer in (viewer, camera):
            pair = peer.selected_pair()
            assert pair is not None
            assert pair["local"]["type"] == "relay"
            assert pair["local"]["relay_protocol"] == "tcp"


async def test_a_wrong_turn_secret_ends_both_peers_with_ice_failed_quickly(
    video: SyntheticVideo, turn_port: int, closing: list[CameraPeer | ViewerPeer]
) -> None:
    wrong = "not-the-coturn-secret"
    viewer = ViewerPeer(
        turn_servers(turn_port, "user:viewer", wrong), relay_only=True, connect_timeout_s=5
    )
    camera = CameraPeer(
        viewer.session_id,
        video.track(),
        turn_servers(turn_port, "device:cam", wrong),
        connect_timeout_s=5,
    )
    closing += [camera, viewer]
    started = time.monotonic()

    await connect(viewer, camera)
    async with asyncio.timeout(6):
        viewer_end, camera_end = await asyncio.gather(viewer.wait_failed(), camera.wait_failed())

    assert time.monotonic() - started < 6
    for end in (viewer_end, camera_end):
        assert end is not None
        assert end.reason == "ice_failed"
        assert "no relay candidate" in end.message
        assert "answered but allocated nothing: credentials refused?" in end.message
        assert wrong not in end.message
    with pytest.raises(PeerEndedError):
        await viewer.first_frame(timeout=1)
    async with asyncio.timeout(6):
        await asyncio.gather(viewer.close(), camera.close())


async def test_an_unanswered_viewer_times_out_and_the_camera_reports_ice_failed(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    ends: list[str] = []
    viewer = ViewerPeer([], connect_timeout_s=1.5, on_end=lambda end: ends.append(end.reason))
    camera = CameraPeer(viewer.session_id, video.track(), [], connect_timeout_s=1.5)
    closing += [camera, viewer]

    await camera.answer(await viewer.offer())  # the answer never reaches the viewer
    async with asyncio.timeout(4):
        viewer_end, camera_end = await asyncio.gather(viewer.wait_failed(), camera.wait_failed())

    assert viewer_end is not None
    assert viewer_end.reason == "timeout"
    assert camera_end is not None
    assert camera_end.reason == "ice_failed"
    assert "not connected within 1.5 s" in camera_end.message
    assert ends == ["timeout"]


async def test_the_viewer_learns_that_the_camera_hung_up(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [])
    closing += [camera, viewer]
    await connect(viewer, camera)
    await viewer.first_frame(timeout=10)

    await camera.close()
    async with asyncio.timeout(5):
        end = await viewer.wait_failed()

    assert end is not None
    assert end.reason == "peer_hangup"
    assert await camera.wait_failed() is None  # closed by its owner: no end to report


async def test_the_camera_sends_a_keyframe_first_and_then_every_keyframe_interval(
    closing: list[CameraPeer | ViewerPeer],
) -> None:
    source = SyntheticVideo(WIDTH, HEIGHT, fps=30, keyframe_interval=10)
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, source.track(), [])
    closing += [camera, viewer]
    await connect(viewer, camera)
    await viewer.first_frame(timeout=10)
    await wait_for_frames(viewer, 45)

    frames, keyframes = camera.frames_sent, camera.keyframes_sent
    assert frames is not None
    assert keyframes is not None
    expected = 1 + (frames - 1) // 10
    assert expected <= keyframes <= expected + 2  # a PLI from the receiver may add one


async def test_an_explicit_keyframe_interval_overrides_the_sources(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [], keyframe_interval=250)
    closing += [camera, viewer]
    await connect(viewer, camera)
    await wait_for_frames(viewer, 5)

    assert camera.keyframe_interval == 250
    assert camera.keyframes_sent == 1


async def test_the_camera_rejects_offers_it_cannot_answer(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    audio_only = RTCPeerConnection(rtc_configuration([]))
    audio_only.addTransceiver("audio", direction="recvonly")
    await audio_only.setLocalDescription(await audio_only.createOffer())
    try:
        for offer in (audio_only.localDescription.sdp, "v=0\r\nnot an offer\r\n"):
            camera = CameraPeer("s-bad", video.track(), [])
            closing.append(camera)
            with pytest.raises(InvalidDescription):
                await camera.answer(offer)
    finally:
        await audio_only.close()


async def test_a_closed_viewer_ignores_late_signaling_and_reports_no_end(
    video: SyntheticVideo, closing: list[CameraPeer | ViewerPeer]
) -> None:
    viewer = ViewerPeer([])
    camera = CameraPeer(viewer.session_id, video.track(), [])
    closing += [camera, viewer]
    answer = await camera.answer(await viewer.offer())
    _, trickled = split_candidates(answer)

    await viewer.close()
    await viewer.accept(answer)
    await viewer.add_candidate(trickled[0])
    await viewer.close()

    assert await viewer.wait_failed() is None
    assert viewer.selected_pair() is None
    with pytest.raises(PeerEndedError):
        await viewer.first_frame(timeout=1)
