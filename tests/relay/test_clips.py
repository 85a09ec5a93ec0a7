"""Event clips (relay/clips.py): the pre-roll, the remuxed files and the recorder's uploads,
fed packets from real encoders shaped as the fan-out forwards them."""

import asyncio
import fractions
import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from av.bitstream import BitStreamFilterContext

from peer.codecs import H264, START_CODE, ParameterSets, is_h264_keyframe, is_vp8_keyframe
from peer.codecs import nal_units as units
from peer.network import use_host_addresses
from relay.clips import ClipRecorder, ClipSettings, PreRoll
from relay.media import Fanout
from relay.remux import ClipMuxer, Entry, remux, vp8_size
from tests.relay.test_media import Closing, camera, upstream

CLOCK = 90000
WIDTH, HEIGHT, FPS, GOP_S = 640, 360, 15, 2
TICKS = CLOCK // FPS


def encode(codec: str, seconds: float, width: int = WIDTH, height: int = HEIGHT) -> list[Entry]:
    """``seconds`` of a moving picture encoded as the agent does (libx264 Constrained
    Baseline or libvpx, realtime, a keyframe every 2 s), each frame as the fan-out forwards
    it: H.264 in Annex B with every NAL unit behind a 4-byte start code (aiortc's
    depacketizer) and SPS/PPS ahead of each keyframe, ``pts`` in 1/90000 s."""
    if codec == "h264":
        context = av.CodecContext.create("libx264", "w")
        context.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        context = av.CodecContext.create("libvpx", "w")
        context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = fractions.Fraction(1, CLOCK)
    context.bit_rate = 1_000_000
    context.gop_size = GOP_S * FPS
    context.max_b_frames = 0
    context.framerate = fractions.Fraction(FPS)  # x264's rate control reads it
    rng = np.random.default_rng(12)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    texture = blocks.repeat(8, axis=0).repeat(8, axis=1)[:height]
    parameter_sets = ParameterSets()
    entries: list[Entry] = []

    def take(packets: list[Any]) -> None:
        for packet in packets:
            data = bytes(packet)
            if codec == "h264":
                data = b"".join(START_CODE + unit for unit in units(data))
                data = parameter_sets.complete(data)
                keyframe = is_h264_keyframe(data)
            else:
                keyframe = is_vp8_keyframe(data)
            forwarded = av.Packet(data)
            forwarded.pts = packet.pts
            forwarded.time_base = fractions.Fraction(1, CLOCK)
            entries.append((forwarded, keyframe))

    for n in range(round(seconds * FPS)):
        shift = (n * 9) % width
        picture = np.ascontiguousarray(texture[:, shift : shift + width])
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = n * TICKS
        frame.time_base = fractions.Fraction(1, CLOCK)
        take(context.encode(frame))
    take(context.encode(None))
    return entries


@pytest.fixture(scope="module")
def h264() -> list[Entry]:
    return encode("h264", 20)


@pytest.fixture(scope="module")
def vp8() -> list[Entry]:
    return encode("vp8", 12)


def at(packet: Any) -> int:
    """A packet's ``pts`` (every packet here has one)."""
    assert packet.pts is not None
    return int(packet.pts)


def demuxed(data: bytes) -> tuple[list[Any], Any]:
    """The clip's video packets (H.264 back in Annex B) with their pts in 1/90000 s, and the
    stream's codec context."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        time_base = stream.time_base
        assert time_base is not None
        packets: list[Any] = []
        annex_b = (
            BitStreamFilterContext("h264_mp4toannexb", stream) if context.name == "h264" else None
        )
        for packet in container.demux(stream):
            if not packet.size:
                continue
            pts = round(at(packet) * time_base * CLOCK)
            for out in annex_b.filter(packet) if annex_b else [packet]:
                packets.append((bytes(out), pts, out.is_keyframe))
        return packets, context


def decoded(data: bytes) -> list[Any]:
    with av.open(io.BytesIO(data), "r") as container:
        return [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]


def container_duration(data: bytes) -> float:
    with av.open(io.BytesIO(data), "r") as container:
        return float((container.duration or 0) / av.time_base)


def same_frames(clip: bytes, entries: list[Entry], codec: str) -> None:
    """The clip's packets are ``entries``' own bytes, in order, timed from 0."""
    packets, _ = demuxed(clip)
    assert len(packets) == len(entries)
    first = at(entries[0][0])
    for (data, pts, keyframe), (packet, was_keyframe) in zip(packets, entries, strict=True):
        if codec == "h264":
            assert pts == at(packet) - first
        else:  # WebM counts in milliseconds
            assert abs(pts - (at(packet) - first)) <= CLOCK // 2000
        assert keyframe == was_keyframe
        if codec == "h264":
            # h264_mp4toannexb writes 3-byte start codes after an access unit's first NAL
            # unit (aiortc's depacketizer writes 4-byte ones): the NAL units are the same.
            assert list(units(data)) == list(units(bytes(packet)))
        else:
            assert data == bytes(packet)


# the pre-roll


def test_the_preroll_starts_at_a_keyframe_and_covers_at_least_its_seconds(
    h264: list[Entry],
) -> None:
    preroll = PreRoll(5.0)
    for packet, keyframe in h264:
        preroll.add(packet, keyframe)
        held = preroll.since(-1)
        assert held[0][1]  # a keyframe
        assert len(held) == len(preroll)
        assert preroll.size == sum(p.size for p, _ in held)
        span = at(packet) - at(held[0][0])
        if at(packet) >= 5 * CLOCK:
            assert span >= 5 * CLOCK
            assert span < (5 + GOP_S) * CLOCK  # whole GOPs dropped once no longer needed
    newest = at(h264[-1][0])
    assert preroll.newest_pts == newest
    # from the last keyframe at or before the time asked, to the newest packet
    asked = newest - 3 * CLOCK - TICKS
    since = preroll.since(asked)
    assert since[0][1]
    assert at(since[0][0]) <= asked
    assert asked - at(since[0][0]) < GOP_S * CLOCK
    assert at(since[-1][0]) == newest
    assert [at(p) for p, _ in since] == sorted(at(p) for p, _ in since)
    assert at(preroll.since(0)[0][0]) == preroll.oldest_pts


def test_the_preroll_keeps_nothing_before_a_keyframe_and_stays_bounded_without_keyframes(
    h264: list[Entry],
) -> None:
    keyframe = h264[0]
    deltas = [entry for entry in h264 if not entry[1]]
    preroll = PreRoll(5.0, max_frames=100, max_bytes=10**9)
    for packet, _ in deltas[:10]:
        preroll.add(packet, False)
    assert len(preroll) == 0
    assert preroll.since(10**9) == []
    preroll.add(*keyframe)
    for packet, _ in deltas[:99]:
        preroll.add(packet, False)
    assert len(preroll) == 100
    preroll.add(deltas[99][0], False)  # the only GOP is too long: nothing to start from
    assert len(preroll) == 0
    assert preroll.size == 0
    for packet, _ in deltas[100:120]:
        preroll.add(packet, False)
    assert len(preroll) == 0

    by_bytes = PreRoll(5.0, max_bytes=keyframe[0].size + 1000)
    by_bytes.add(*keyframe)
    for packet, _ in deltas:
        by_bytes.add(packet, False)
        assert by_bytes.size <= by_bytes.max_bytes


# the files


def test_an_h264_clip_is_an_mp4_of_the_cameras_nal_units_in_order_with_its_duration(
    h264: list[Entry],
) -> None:
    entries = h264[2 * FPS : 12 * FPS]  # 10 s from a keyframe
    assert entries[0][1]
    clip = remux("h264", entries)
    assert clip is not None
    same_frames(clip, entries, "h264")
    assert clip.find(b"moov") < clip.find(b"mdat")  # the duration comes first
    assert container_duration(clip) == pytest.approx(len(entries) / FPS, abs=0.01)
    # the samples are the NAL units, length-prefixed, exactly; the avcC is the camera's
    with av.open(io.BytesIO(clip), "r") as container:
        stream = container.streams.video[0]
        samples = [bytes(p) for p in container.demux(stream) if p.size]
        avcc = stream.codec_context.extradata
    assert avcc is not None
    for sample, (packet, _) in zip(samples, entries, strict=True):
        assert sample == b"".join(len(u).to_bytes(4, "big") + u for u in units(bytes(packet)))
    sps = next(u for u in units(bytes(entries[0][0])) if u[0] & 0x1F == 7)
    assert avcc[0] == 1
    assert avcc[1:4] == sps[1:4]
    assert sps in avcc
    pictures = decoded(clip)
    assert len(pictures) == len(entries)
    assert pictures[0].shape == (HEIGHT, WIDTH)


def test_a_vp8_clip_is_a_webm_of_the_cameras_frames_in_order_with_its_duration(
    vp8: list[Entry],
) -> None:
    entries = vp8[GOP_S * FPS :]
    assert entries[0][1]
    assert vp8_size(bytes(entries[0][0])) == (WIDTH, HEIGHT)
    clip = remux("vp8", entries)
    assert clip is not None
    same_frames(clip, entries, "vp8")
    assert container_duration(clip) == pytest.approx(len(entries) / FPS, abs=0.01)
    pictures = decoded(clip)
    assert len(pictures) == len(entries)
    assert pictures[0].shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_a_growing_clip_is_a_playable_file_at_every_moment(
    codec: str, h264: list[Entry], vp8: list[Entry]
) -> None:
    entries = h264[: 8 * FPS] if codec == "h264" else vp8[: 8 * FPS]
    muxer = ClipMuxer("h264" if codec == "h264" else "vp8")
    snapshots: list[bytes | None] = []
    for n, (packet, keyframe) in enumerate(entries, 1):
        muxer.add(packet, keyframe)
        if n % FPS == 0:  # an upload a second
            snapshots.append(muxer.snapshot())
    assert muxer.duration_s == pytest.approx(8.0)
    assert snapshots[0] is None or len(demuxed(snapshots[0])[0]) > 0  # None: no frame yet
    previous = b""
    for n, snapshot in enumerate(snapshots[1:], 2):
        assert snapshot is not None
        packets, _ = demuxed(snapshot)
        # at most a fragment (1 s) and the held-back frame behind what was added
        assert (n - 1) * FPS - 1 <= len(packets) <= n * FPS - 1
        same_frames(snapshot, entries[: len(packets)], codec)
        assert len(decoded(snapshot)) == len(packets)
        assert snapshot.startswith(previous)  # one buffer, appended to
        previous = snapshot
    final = muxer.finish()
    assert final is not None
    same_frames(final, entries, codec)


def test_a_clip_must_start_at_a_keyframe_with_its_parameter_sets(h264: list[Entry]) -> None:
    from relay.remux import ClipError

    muxer = ClipMuxer("h264")
    with pytest.raises(ClipError):
        muxer.add(*h264[1])
    idr_only = b"".join(START_CODE + u for u in units(bytes(h264[0][0])) if u[0] & 0x1F == 5)
    with pytest.raises(ClipError):
        muxer.add(av.Packet(idr_only), True)
    assert muxer.snapshot() is None
    assert muxer.finish() is None


# the recorder


class Uploads:
    """A cloud that stores the clip: records each upload, holds one while ``gate`` is shut,
    fails the ones asked to, and counts how many run at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bool, str]] = []
        self.running = 0
        self.most_at_once = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures: list[bool] = []  # the next calls fail while this says True
        self.started = asyncio.Event()
        self.gate_finals = True  # False: only non-final uploads wait for the gate

    async def __call__(self, data: bytes, final: bool, content_type: str) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            if self.gate_finals or not final:
                await self.gate.wait()
            if self.failures and self.failures.pop(0):
                raise ConnectionError("the cloud is down")
            self.calls.append((data, final, content_type))
        finally:
            self.running -= 1


def fed(preroll: PreRoll, entries: list[Entry]) -> None:
    for packet, keyframe in entries:
        preroll.add(packet, keyframe)


async def test_a_threads_clip_runs_from_its_pre_roll_to_its_end_plus_the_post_roll(
    h264: list[Entry],
) -> None:
    preroll = PreRoll(5.0)
    fed(preroll, h264[: 9 * FPS])  # the thread starts 9 s into the stream
    start = preroll.newest_pts
    assert start is not None
    uploads = Uploads()
    recorder = ClipRecorder("h264", preroll, uploads, start_pts=start, name="t1")
    live = h264[9 * FPS :]
    for n, (packet, keyframe) in enumerate(live):
        preroll.add(packet, keyframe)
        recorder.add(packet, keyframe)
        if n == 3 * FPS:  # the thread lasts 3 s
            end = at(packet)
            recorder.end()
    await recorder.wait()
    assert recorder.reason == "ended"
    data, final, content_type = uploads.calls[-1]
    assert final
    assert content_type == "video/mp4"
    # from the keyframe at or before 5 s before the start, to 5 s after the end
    first = max(at(p) for p, keyframe in h264 if keyframe and at(p) <= start - 5 * CLOCK)
    expected = [e for e in h264 if first <= at(e[0]) <= end + 5 * CLOCK]
    assert expected[0][1]
    assert at(expected[-1][0]) - end == 5 * CLOCK
    same_frames(data, expected, "h264")
    assert container_duration(data) == pytest.approx(len(expected) / FPS, abs=0.01)


async def test_the_length_cap_finishes_a_long_thread(h264: list[Entry]) -> None:
    preroll = PreRoll(5.0)
    uploads = Uploads()
    settings = ClipSettings(pre_roll_s=0, max_clip_s=6.0)
    recorder = ClipRecorder("h264", preroll, uploads, settings=settings, name="long")
    for packet, keyframe in h264:  # 20 s, and the thread never ends
        recorder.add(packet, keyframe)
    await recorder.wait()
    assert recorder.reason == "cap"
    assert [final for _, final, _ in uploads.calls] == [True]
    packets, _ = demuxed(uploads.calls[-1][0])
    assert len(packets) == 6 * FPS + 1  # the frame reaching the cap is the last
    assert container_duration(uploads.calls[-1][0]) == pytest.approx(6 + 1 / FPS, abs=0.01)


async def test_uploads_run_one_at_a_time_without_holding_up_packets_and_the_last_is_final(
    vp8: list[Entry],
) -> None:
    uploads = Uploads()
    uploads.gate.clear()
    settings = ClipSettings(pre_roll_s=0, post_roll_s=1.0, upload_every_s=0.01)
    recorder = ClipRecorder("vp8", PreRoll(), uploads, settings=settings, name="serial")
    entries = vp8[: 6 * FPS]
    for packet, keyframe in entries[: 2 * FPS]:
        recorder.add(packet, keyframe)
    async with asyncio.timeout(10):
        await uploads.started.wait()  # the first upload is in flight and held
    held_at = recorder.muxer.frames
    for packet, keyframe in entries[2 * FPS :]:
        recorder.add(packet, keyframe)  # taken at once while the upload hangs
        await asyncio.sleep(0.001)
    assert recorder.muxer.frames == len(entries) - 1 > held_at
    assert not recorder.finished
    recorder.end()
    uploads.gate.set()
    async with asyncio.timeout(10):
        while len(uploads.calls) < 2:
            await asyncio.sleep(0.005)
    await recorder.close()  # finishes the clip, waits for the final upload
    assert recorder.done
    assert recorder.reason == "closed"
    assert uploads.most_at_once == 1
    finals = [final for _, final, _ in uploads.calls]
    assert finals[-1]
    assert finals.count(True) == 1
    assert all(content_type == "video/webm" for _, _, content_type in uploads.calls)
    # the upload after the held one took the newest clip, not one per missed interval
    assert len(uploads.calls) == 3
    growing = [demuxed(data)[0] for data, final, _ in uploads.calls if not final]
    assert len(growing) == 2
    assert len(growing[1]) > held_at
    same_frames(uploads.calls[-1][0], entries, "vp8")


async def test_the_final_upload_replaces_a_non_final_one_in_flight(vp8: list[Entry]) -> None:
    uploads = Uploads()
    uploads.gate.clear()  # the cloud never answers a non-final upload
    uploads.gate_finals = False
    settings = ClipSettings(pre_roll_s=0, post_roll_s=0, upload_every_s=0.01)
    recorder = ClipRecorder("vp8", PreRoll(), uploads, settings=settings, name="tail")
    entries = vp8[: 2 * FPS]
    for packet, keyframe in entries:
        recorder.add(packet, keyframe)
    async with asyncio.timeout(10):
        await uploads.started.wait()
    recorder.end()  # no post-roll: the clip is finished
    assert recorder.finished
    async with asyncio.timeout(10):
        await recorder.wait()  # not behind the held upload
    assert [final for _, final, _ in uploads.calls] == [True]
    assert uploads.running == 0  # the held upload was cancelled, not left running
    assert uploads.most_at_once == 1
    same_frames(uploads.calls[-1][0], entries, "vp8")


async def test_a_failed_upload_is_logged_and_the_final_is_retried(
    vp8: list[Entry], caplog: pytest.LogCaptureFixture
) -> None:
    uploads = Uploads()
    uploads.failures = [True, True]  # the first two calls fail
    settings = ClipSettings(pre_roll_s=0, upload_every_s=0.01)
    with caplog.at_level(logging.WARNING, logger="relay.clips"):
        recorder = ClipRecorder("vp8", PreRoll(), uploads, settings=settings, name="flaky")
        for packet, keyframe in vp8[: 3 * FPS]:
            recorder.add(packet, keyframe)
        async with asyncio.timeout(10):
            while recorder.failed_uploads < 1:
                await asyncio.sleep(0.005)
        await recorder.close()
    assert sum("the cloud is down" in r.message for r in caplog.records) == 2
    assert recorder.failed_uploads == 2
    assert uploads.calls[-1][1]
    same_frames(uploads.calls[-1][0], vp8[: 3 * FPS], "vp8")


async def test_a_clip_without_a_keyframe_uploads_nothing(h264: list[Entry]) -> None:
    uploads = Uploads()
    settings = ClipSettings(upload_every_s=0.01)
    recorder = ClipRecorder("h264", PreRoll(), uploads, settings=settings, name="blind")
    for packet, keyframe in h264[1 : FPS + 1]:
        assert not keyframe
        recorder.add(packet, keyframe)
    await asyncio.sleep(0.05)
    await recorder.close()
    assert uploads.calls == []
    assert recorder.muxer.frames == 0


# the fan-out's listener


@pytest.fixture(scope="module")
def loopback_host_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = original


@pytest.fixture
async def closing(loopback_host_candidates: None) -> AsyncIterator[Closing]:
    opened = Closing()
    yield opened
    await opened.close()


async def test_a_fanout_hands_every_forwarded_packet_to_its_listeners_whatever_one_raises(
    closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    fanout = closing.add(Fanout("cam"))
    assert fanout.codec is None
    heard: list[Entry] = []
    preroll = PreRoll(5.0)

    def broken(packet: Any, keyframe: bool) -> None:
        raise RuntimeError("a listener's bug")

    with caplog.at_level(logging.ERROR, logger="relay.media"):
        remove_broken = fanout.add_listener(broken)
        fanout.add_listener(lambda packet, keyframe: heard.append((packet, keyframe)))
        fanout.add_listener(preroll.add)
        fanout.attach(await upstream(closing, camera(closing), H264))
        async with asyncio.timeout(20):
            while fanout.keyframes_received < 1 or len(preroll) < 2 * FPS:
                await asyncio.sleep(0.05)
        remove_broken()
        remove_broken()  # idempotent
    assert fanout.codec == "h264"
    assert len(heard) == fanout.frames_received  # every frame, though a listener raised
    assert any("packet listener failed" in r.message for r in caplog.records)
    assert sum(keyframe for _, keyframe in heard) == fanout.keyframes_received
    # what the listener heard makes a clip of the camera's own frames
    entries = preroll.since(-1)
    clip = remux("h264", entries)
    assert clip is not None
    same_frames(clip, entries, "h264")
    assert decoded(clip)[0].shape == (240, 320)
