"""One camera's encoded stream shared by its sessions: the GOP cache, restarts, falling behind."""

import asyncio
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError

from device_sim.redaction import redact
from device_sim.sources import describe_failure
from device_sim.state import CameraState
from device_sim.stream import TRACK_QUEUE_FRAMES, EncodedStream
from peer.codecs import H264, VP8, VideoCodec

SPS = b"\x67\x4d\x00\x28\xaa"
PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65\x88\x84\x00\x33"
SLICE = b"\x41\x9a\x02\x03"


def unit(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)


async def drain(track: object, count: int) -> list[tuple[bytes, int]]:
    got = []
    for _ in range(count):
        packet = await asyncio.wait_for(track.recv(), 2)  # type: ignore[attr-defined]
        got.append((bytes(packet), packet.pts))
    return got


async def test_the_codec_is_known_from_the_first_keyframe_with_its_profile_level_id() -> None:
    stream = EncodedStream(H264, "cam")
    assert await stream.wait_codec(0.05) is None
    stream.publish(unit(SLICE), 0)  # joined mid-GOP: nothing to start from
    assert stream.codec is None
    stream.publish(unit(SPS, PPS, IDR), 6000)
    assert await stream.wait_codec(0.05) == VideoCodec(H264, "4d0028")


async def test_a_new_session_starts_at_once_with_the_cached_gop_squeezed_before_now() -> None:
    stream = EncodedStream(H264, "cam")
    frames = [unit(SPS, PPS, IDR)] + [unit(SLICE + bytes([n])) for n in range(5)]
    for n, frame in enumerate(frames):
        stream.publish(frame, n * 6000)
    track = stream.track()
    cached = await drain(track, len(frames))
    assert [data for data, _ in cached] == frames
    stamps = [pts for _, pts in cached]
    assert stamps == list(range(stamps[-1] - len(frames) + 1, stamps[-1] + 1))  # one tick apart
    stream.publish(unit(SLICE + b"live"), 6 * 6000)
    [(live, pts)] = await drain(track, 1)
    assert live == unit(SLICE + b"live")
    assert pts == stamps[-1] + 6000  # the source's own spacing from there on


async def test_every_session_gets_the_same_packet_objects() -> None:
    stream = EncodedStream(VP8, "cam")
    receiving = [asyncio.create_task(stream.track().recv()) for _ in range(2)]
    await asyncio.sleep(0.01)  # both senders wait: nothing is cached yet
    stream.publish(b"\x00keyframe", 0)
    first, second = await asyncio.gather(*receiving)
    assert first is second


async def test_a_keyframe_request_restarts_a_passthrough_session_from_the_gop() -> None:
    stream = EncodedStream(H264, "cam")
    stream.publish(unit(SPS, PPS, IDR), 0)
    stream.publish(unit(SLICE), 6000)
    track = stream.track()
    first = await drain(track, 2)
    track.request_keyframe()
    again = await drain(track, 2)
    assert [d for d, _ in again] == [d for d, _ in first]
    assert again[0][1] > first[-1][1]  # timestamps never go back
    assert track.restarts == 1


async def test_a_keyframe_request_asks_a_source_that_can_make_one() -> None:
    asked = []
    stream = EncodedStream(VP8, "cam", make_keyframe=lambda: asked.append(1))
    stream.publish(b"\x00key", 0)
    track = stream.track()
    await drain(track, 1)
    track.request_keyframe()
    assert asked == [1]


async def test_after_a_source_restart_sessions_wait_for_its_next_keyframe() -> None:
    stream = EncodedStream(H264, "cam")
    stream.publish(unit(SPS, PPS, IDR), 0)
    track = stream.track()
    await drain(track, 1)
    stream.restart()
    stream.publish(unit(SLICE + b"stale"), 10)
    stream.publish(unit(SPS, PPS, IDR + b"new"), 20)
    [(data, _)] = await drain(track, 1)
    assert data == unit(SPS, PPS, IDR + b"new")
    late = stream.track()  # the old GOP is gone: a new session starts at the new keyframe
    [(data, _)] = await drain(late, 1)
    assert data == unit(SPS, PPS, IDR + b"new")


async def test_a_session_that_falls_behind_restarts_from_the_gop() -> None:
    stream = EncodedStream(H264, "cam")
    stream.publish(unit(SPS, PPS, IDR), 0)
    track = stream.track()
    await drain(track, 1)
    for n in range(TRACK_QUEUE_FRAMES + 2):  # its queue allows for the GOP it started with
        stream.publish(unit(SLICE + bytes([n % 256])), (n + 1) * 6000)
    assert track.restarts == 1
    [(data, _)] = await drain(track, 1)
    assert data == unit(SPS, PPS, IDR)


async def test_stopping_the_stream_ends_its_tracks() -> None:
    stream = EncodedStream(H264, "cam")
    track = stream.track()
    stream.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(MediaStreamError):
        stream.track()


def test_only_h264_and_vp8_are_streamed() -> None:
    with pytest.raises(ValueError, match=r"only H\.264 and VP8"):
        EncodedStream("video/h265", "cam")


def test_a_source_password_never_shows() -> None:
    url = "rtsp://admin:s3cr%40t@192.0.2.7:554/stream1"
    assert redact(url) == "rtsp://admin:***@192.0.2.7:554/stream1"
    assert redact("rtsp://192.0.2.7/stream1") == "rtsp://192.0.2.7/stream1"
    failure = describe_failure(OSError(f"401 Unauthorized: {url}"), redact(url), "s3cr@t")
    assert (
        failure
        == "rtsp://admin:***@192.0.2.7:554/stream1 refused the user name or password (RTSP 401)"
    )
    assert "s3cr" not in describe_failure(OSError(f"weird {url}"), redact(url), "s3cr@t")


def test_the_state_file_keeps_the_source_password_apart(tmp_path: Path) -> None:
    state = CameraState("https://c", "d", "u", "n", "m", "f", "wss://c/ws", "key")
    bridged = state.with_source("rtsp://admin:s3cr%40t@192.0.2.7/stream1")
    assert bridged.source == "rtsp://admin@192.0.2.7/stream1"
    assert bridged.source_password == "s3cr@t"
    assert bridged.source_url() == "rtsp://admin:s3cr%40t@192.0.2.7/stream1"
    bridged.save(tmp_path / "state.json")
    assert CameraState.load(tmp_path / "state.json") == bridged
    assert state.source_url() is None
    assert state.with_source("/tmp/clip.mp4").source_url() == "/tmp/clip.mp4"
