"""CPU cost of relaying one camera to many viewers, several ways side by side in one run.

    .venv/bin/python bench/relay.py [--codec vp8|h264|both] [--seconds 15] [--warmup 3]
        [--viewers 1,4,8] [--h264-viewers 1,4,8,16,32] [--h264-mediarelay-viewers 1,4,8]
        [--h264-source rtsp|synthetic] [--profile FILE]

Three processes per scenario, so that the relay's CPU is measured alone: a camera
(``device_sim`` ``CameraPeer``), the relay (one upstream aiortc peer receiving the camera, one
aiortc peer per viewer) and the viewers. The parent only routes SDP between them. Host
candidates are loopback only. Two codecs, each a table of its own:

VP8 (``--codec vp8``, as in session 2, so its figures stay comparable): the camera sends
``SyntheticVideo`` 640x480 at 15 fps, encoded by aiortc per session; the viewers are ``N``
``ViewerPeer``s that decode. The relay serves its viewers in one of three ways:

- ``fanout``: :class:`relay.media.Fanout` (the camera's encoded frames forwarded as the same
  ``av.Packet`` objects to every viewer; no encoder);
- ``mediarelay``: aiortc's ``MediaRelay``, one ``relay.subscribe(track)`` per viewer, so each
  viewer's sender re-encodes the decoded frames;
- ``encode-once``: a prototype of the alternative design: decode once (aiortc) and encode once
  per camera with one VP8 encoder (aiortc's settings), fanning out its packets.

H.264 (``--codec h264``): a camera substream, 1280x720 at 15 fps at ~2 Mbit/s. By default the
camera process is the agent bridging an IP camera: the RTSP stand-in (``tests/rtsp.py``,
GStreamer, Main profile, a keyframe every 2 s; a process of its own, started fresh for each
scenario, whose CPU is printed apart) pulled by ``PassthroughSource``, one ``EncodedTrack``
per session given to ``CameraPeer``. ``--h264-source synthetic`` uses the agent's own encoder
instead, ``OwnEncoder(SyntheticVideo(1280, 720, 15), H264, bitrate_kbps=2000,
keyframe_interval=30)``; its static room encodes to ~0.02 Mbit/s whatever the target, which
is why it is not the default (the per-viewer cost is per packet). Modes: ``fanout`` (as above,
answering with the camera's profile and handing viewers' keyframe requests to the fan-out,
like ``relay/node.py``; each scenario's line counts the PLIs it sent the camera and the
viewer tracks' restarts) and ``mediarelay`` (``subscribe(track, buffered=False)``: each
viewer's sender encodes the newest decoded frame with aiortc's ``H264Encoder``, libx264 at
its default preset; frames it has no time for are dropped, not queued without bound).
``mediarelay`` runs only at ``--h264-mediarelay-viewers``: it cannot keep up beyond a few
viewers.

**The H.264 viewers do not decode**: 32 viewers cannot each decode 720p H.264 on the 2-core
machine, and the viewers share it with the relay. Each is a receive-only aiortc peer
(:class:`CountingViewer`) whose receiver's private ``_RTCRtpReceiver__decoder_queue.put`` (the
hand-off of a complete, depacketized frame from the jitter buffer to the decoder thread, the
same hook as ``Fanout.attach``) is replaced by a counter that does not forward: it counts
complete encoded frames from the first keyframe on, and their bytes. It raises if aiortc no
longer has that queue, and a viewer fails if the queue is handed anything but
``(codec, JitterFrame)``. A frame counted is one the viewer received whole, not one proven
decodable.

Scenarios are interleaved (for each viewer count, each mode), each with fresh processes.
After every viewer received its first frame and ``--warmup`` seconds, the relay's process
CPU time (``time.process_time``: all its threads, including aiortc's decoder and encoder
threads) and every viewer's frames are counted over ``--seconds``. CPU is in % of one core.
The marginal cost of a viewer is ``(cpu(max) - cpu(min)) / (max - min)`` viewers. A viewer
is at full frame rate when it received at least 95 % of the camera's 15 fps. Other
processes' CPU during each window (all of ``/proc/stat`` minus the bench's processes and
this one) is printed: the machine has 2 shared cores. Targets: Fanout's marginal cost <= 1 %
of a core per viewer (VP8, 1 to 8 viewers), <= 0.5 % (H.264, 1 to 32 viewers) with every
viewer at full frame rate.
"""

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import logging
import multiprocessing
import os
import platform
import queue
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this file is named like the relay package: keep bench/ off the path, the project on it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import aiortc  # noqa: E402
import av  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.codecs.vpx import number_of_threads  # noqa: E402
from aiortc.contrib.media import MediaRelay  # noqa: E402
from aiortc.jitterbuffer import JitterFrame  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

from device_sim.camera_peer import CameraPeer  # noqa: E402
from device_sim.media import SyntheticVideo  # noqa: E402
from device_sim.sources import OwnEncoder, PassthroughSource  # noqa: E402
from device_sim.stream import EncodedTrack  # noqa: E402
from device_sim.viewer_peer import ViewerPeer  # noqa: E402
from peer import codecs  # noqa: E402
from peer.network import use_host_addresses  # noqa: E402
from relay.media import Fanout, FanoutTrack, serve_viewer  # noqa: E402
from tests.rtsp import rtsp_camera  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 15  # VP8
H264_WIDTH, H264_HEIGHT, H264_KBPS, H264_GOP_S = 1280, 720, 2000, 2.0
MODES = {"vp8": ("fanout", "mediarelay", "encode-once"), "h264": ("fanout", "mediarelay")}
TARGET_MARGINAL = {"vp8": 1.0, "h264": 0.5}  # % of a core per additional viewer, Fanout
FULL_RATE = 0.95  # a viewer receiving at least this share of FPS is at full frame rate
COMMAND_TIMEOUT_S = 90.0
FIRST_FRAME_TIMEOUT_S = 20.0
SOURCE_TIMEOUT_S = 10.0
TICKS = os.sysconf("SC_CLK_TCK")
DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


# the viewer that does not decode


class CountingViewer:
    """A receive-only aiortc peer that counts the encoded video frames it receives.

    Nothing is decoded: the receiver's private ``_RTCRtpReceiver__decoder_queue.put`` (called
    by ``RTCRtpReceiver._handle_rtp_packet`` on the event loop with ``(codec, JitterFrame)``
    for each complete frame out of the jitter buffer) is replaced by a counter that keeps
    nothing. ``None``, the receiver's stop signal, is still passed on so that aiortc's idle
    decoder thread ends. :attr:`frames` and :attr:`bytes` count frames from the first
    keyframe on (VP8 or H.264, told by the bitstream). Raises :class:`RuntimeError` when
    aiortc's receiver no longer has that queue; :meth:`first_frame` raises when it was handed
    something else than ``(codec, JitterFrame)``.
    """

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        self.frames = 0
        self.bytes = 0
        self.keyframes = 0
        self.error: str | None = None
        self._first = asyncio.Event()
        decoder_queue = getattr(transceiver.receiver, DECODER_QUEUE, None)
        if not isinstance(decoder_queue, queue.Queue) or "put" in vars(decoder_queue):
            raise RuntimeError(f"aiortc's RTCRtpReceiver no longer has a plain {DECODER_QUEUE}")
        forward = decoder_queue.put

        def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is None:  # the receiver stops: let aiortc's decoder thread end
                forward(item, block, timeout)
            else:
                self._count(item)

        decoder_queue.put = put  # type: ignore[method-assign]

    def _count(self, item: Any) -> None:
        match item:
            case (codec, JitterFrame() as frame) if hasattr(codec, "mimeType"):
                pass
            case _:
                self.error = f"aiortc's decoder queue was handed {type(item)!r}, not a frame"
                self._first.set()
                return
        data = frame.data
        mime = codec.mimeType.lower()
        if mime == codecs.H264:
            keyframe = codecs.is_h264_keyframe(data)
        else:
            keyframe = mime == codecs.VP8 and codecs.is_vp8_keyframe(data)
        if not self.keyframes and not keyframe:
            return  # nothing before the first keyframe could be decoded
        self.keyframes += int(keyframe)
        self.frames += 1
        self.bytes += len(data)
        self._first.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def first_frame(self, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await self._first.wait()
        if self.error is not None:
            raise RuntimeError(self.error)

    async def close(self) -> None:
        await self.pc.close()


# the processes: each runs one event loop and answers the parent's commands over a pipe


async def receive(conn: Connection) -> tuple[str, Any]:
    ready = await asyncio.to_thread(conn.poll, COMMAND_TIMEOUT_S)
    if not ready:
        raise TimeoutError("no command from the parent")
    command, argument = conn.recv()
    return str(command), argument


def serve(main: Callable[[Connection, Any], Any], conn: Connection, argument: Any) -> None:
    logging.basicConfig(level=logging.ERROR)  # peers log their hang-ups at the end of a scenario
    try:
        asyncio.run(main(conn, argument))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise


async def camera_main(conn: Connection, spec: dict[str, Any]) -> None:
    """The camera: VP8 encoded per session, or an H.264 source shared by every session."""
    use_host_addresses(["127.0.0.1"])
    source: PassthroughSource | OwnEncoder | None = None
    if spec["codec"] == "vp8":
        video = SyntheticVideo(WIDTH, HEIGHT, fps=FPS)
        make_track: Callable[[], MediaStreamTrack] = video.track
    else:
        if spec["source"] == "rtsp":
            source = PassthroughSource(spec["url"])
        else:
            pictures = SyntheticVideo(H264_WIDTH, H264_HEIGHT, fps=FPS)
            source = OwnEncoder(pictures, codecs.H264, bitrate_kbps=H264_KBPS, keyframe_interval=30)
        await source.start()
        make_track = source.track
    peers: list[CameraPeer] = []
    tracks: list[EncodedTrack] = []
    while True:
        command, argument = await receive(conn)
        if command == "answer":
            track = make_track()
            if isinstance(track, EncodedTrack):
                tracks.append(track)
                if await track.stream.wait_codec(SOURCE_TIMEOUT_S) is None:
                    raise RuntimeError("the camera's source gave no keyframe")
            peer = CameraPeer(f"bench{len(peers)}", track, [])
            peers.append(peer)
            conn.send(await peer.answer(argument))
            await peer.add_candidate(None)
        elif command == "mark":
            conn.send((time.process_time(), sum(t.restarts for t in tracks)))
        elif command == "stop":
            break
    for peer in peers:
        await peer.close()
    if source is not None:
        await source.close()
    conn.send("stopped")


class QueueTrack(MediaStreamTrack):
    """A viewer track fed packets by :class:`EncodeOnce`; starts at a keyframe."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.started = False

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.queue.get()


class EncodeOnce:
    """Prototype of design (2): aiortc decodes, one libvpx encoder per camera, packets shared."""

    def __init__(self) -> None:
        self.tracks: list[QueueTrack] = []
        self.codec: Any = None
        self.force_keyframe = False
        self.task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        self.task = asyncio.create_task(self.run(track))

    def subscribe(self) -> QueueTrack:
        track = QueueTrack()
        self.tracks.append(track)
        self.force_keyframe = True
        return track

    async def run(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await track.recv()
            force, self.force_keyframe = self.force_keyframe, False
            packets = await loop.run_in_executor(None, self.encode, frame, force)
            for packet in packets:
                for viewer in self.tracks:
                    viewer.started = viewer.started or packet.is_keyframe
                    if viewer.started:
                        viewer.queue.put_nowait(packet)

    def encode(self, frame: Any, force: bool) -> list[Any]:
        if self.codec is None:  # aiortc's Vp8Encoder settings (aiortc/codecs/vpx.py)
            codec = av.CodecContext.create("libvpx", "w")
            codec.width, codec.height = frame.width, frame.height
            codec.bit_rate = 500_000
            codec.pix_fmt = "yuv420p"
            codec.gop_size = 3000
            codec.qmin, codec.qmax = 2, 56
            codec.options = {
                "bufsize": "500000",
                "cpu-used": "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                "minrate": "500000",
                "maxrate": "500000",
                "noise-sensitivity": "4",
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            }
            codec.thread_count = number_of_threads(frame.width * frame.height, os.cpu_count() or 1)
            self.codec = codec
        if force:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(self.codec.encode(frame))
        for packet in packets:
            packet.pts, packet.time_base = frame.pts, frame.time_base
        return packets

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def relay_main(conn: Connection, setup: tuple[str, str, str | None]) -> None:
    mode, codec_name, profile_path = setup
    # --profile: the event loop's thread under cProfile from the first "mark" (the window's
    # start) to the next (its end), dumped as pstats to profile_path (decoder thread not in it)
    profiler = cProfile.Profile() if profile_path is not None else None
    marks = 0
    use_host_addresses(["127.0.0.1"])
    upstream = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = upstream.addTransceiver("video", direction="recvonly")
    fanout = Fanout("bench") if mode == "fanout" else None
    media_relay = MediaRelay() if mode == "mediarelay" else None
    encode_once = EncodeOnce() if mode == "encode-once" else None
    camera_codec: codecs.VideoCodec | None = None
    downstream: list[RTCPeerConnection] = []
    tracks: list[FanoutTrack] = []
    while True:
        command, argument = await receive(conn)
        if command == "offer":
            await upstream.setLocalDescription(await upstream.createOffer())
            conn.send(upstream.localDescription.sdp)
        elif command == "answer":
            await upstream.setRemoteDescription(RTCSessionDescription(argument, "answer"))
            camera_codec = next(iter(codecs.offered_codecs(argument)), None)
            if fanout is not None:
                fanout.attach(transceiver.receiver)
            if encode_once is not None:
                encode_once.attach(transceiver.receiver.track)
            conn.send("ok")
        elif command == "viewer" and codec_name == "h264":
            # as relay/node.py answers a viewer: the transceiver and its codec preferences
            # before the offer is set, the camera's profile-level-id in the answer
            assert camera_codec is not None
            assert camera_codec.mime == codecs.H264, camera_codec
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            downstream.append(pc)
            if fanout is not None:
                fanout_track = fanout.subscribe()
                tracks.append(fanout_track)
                sender = pc.addTransceiver(fanout_track, direction="sendonly").sender
                serve_viewer(sender, fanout_track)
                codecs.prefer_exactly(pc, [camera_codec.capability()])
            else:
                assert media_relay is not None
                track = media_relay.subscribe(transceiver.receiver.track, buffered=False)
                pc.addTransceiver(track, direction="sendonly")
                codecs.prefer(pc, (codecs.H264,))
            await pc.setRemoteDescription(RTCSessionDescription(argument, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sdp = pc.localDescription.sdp
            conn.send(codecs.with_profile_level_id(sdp, camera_codec) if fanout else sdp)
        elif command == "viewer":
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            downstream.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(argument, "offer"))
            if fanout is not None:
                track = fanout.subscribe()
            elif encode_once is not None:
                track = encode_once.subscribe()
            else:
                assert media_relay is not None
                track = media_relay.subscribe(transceiver.receiver.track)
            pc.addTrack(track)
            for each in pc.getTransceivers():
                each.direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
            conn.send(pc.localDescription.sdp)
        elif command == "mark":
            marks += 1
            if profiler is not None and profile_path is not None:
                if marks == 1:
                    profiler.enable()
                elif marks == 2:
                    profiler.disable()
                    profiler.dump_stats(profile_path)
            plis = fanout.keyframe_requests if fanout is not None else 0
            conn.send((time.process_time(), plis, sum(t.restarts for t in tracks)))
        elif command == "stop":
            break
    for closable in (fanout, encode_once):
        if closable is not None:
            await closable.close()
    for pc in [*downstream, upstream]:
        await pc.close()
    conn.send("stopped")


async def viewers_main(conn: Connection, codec_name: str) -> None:
    use_host_addresses(["127.0.0.1"])
    peers: list[ViewerPeer] | list[CountingViewer] = []
    while True:
        command, argument = await receive(conn)
        if command == "offers":
            if codec_name == "h264":
                peers = [CountingViewer() for _ in range(argument)]
            else:
                peers = [ViewerPeer([], session_id=f"v{i}") for i in range(argument)]
            conn.send([await peer.offer() for peer in peers])
        elif command == "answers":
            for peer, answer in zip(peers, argument, strict=True):
                await peer.accept(answer)
                if isinstance(peer, ViewerPeer):
                    await peer.add_candidate(None)
            firsts = await asyncio.gather(
                *(peer.first_frame(timeout=FIRST_FRAME_TIMEOUT_S) for peer in peers),
                return_exceptions=True,
            )
            for first in firsts:
                if isinstance(first, RuntimeError):  # aiortc changed under CountingViewer
                    raise first
            conn.send(sum(not isinstance(first, BaseException) for first in firsts))
        elif command == "mark":
            sizes = [getattr(peer, "bytes", 0) for peer in peers]
            conn.send(([peer.frames for peer in peers], sizes, time.process_time()))
        elif command == "stop":
            break
    for peer in peers:
        await peer.close()
    conn.send("stopped")


# the parent


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Child:
    def __init__(self, main: Callable[[Connection, Any], Any], argument: Any = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=serve, args=(main, child_conn, argument))
        self.process.start()

    def ask(self, command: str, argument: Any = None) -> Any:
        self.conn.send((command, argument))
        if not self.conn.poll(COMMAND_TIMEOUT_S):
            raise TimeoutError(f"no reply to {command}")
        reply = self.conn.recv()
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise RuntimeError(f"child failed: {reply[1]}")
        return reply

    def cpu_s(self) -> float:
        assert self.process.pid is not None
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        with contextlib.suppress(TimeoutError, RuntimeError, OSError):
            self.ask("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def machine_busy_s() -> float:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    return models[0] if models else platform.processor()


def scenario(
    codec: str,
    mode: str,
    viewers: int,
    seconds: float,
    warmup: float,
    h264_source: str,
    profile: str | None = None,
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        spec: dict[str, Any] = {"codec": codec, "source": h264_source, "url": None}
        standin_pid: int | None = None
        if codec == "h264" and h264_source == "rtsp":
            standin = stack.enter_context(
                rtsp_camera(
                    size=(H264_WIDTH, H264_HEIGHT),
                    fps=FPS,
                    bitrate_kbps=H264_KBPS,
                    keyframe_interval_s=H264_GOP_S,
                    profile="main",
                )
            )
            spec["url"], standin_pid = standin.url, standin.process.pid
        camera = Child(camera_main, spec)
        relay, watchers = Child(relay_main, (mode, codec, profile)), Child(viewers_main, codec)
        try:
            relay.ask("answer", camera.ask("answer", relay.ask("offer")))
            offers = watchers.ask("offers", viewers)
            started = watchers.ask("answers", [relay.ask("viewer", offer) for offer in offers])
            time.sleep(warmup)
            children = (camera, relay, watchers)
            start = time.monotonic()
            busy0, own0 = machine_busy_s(), time.process_time()
            tree0 = [child.cpu_s() for child in children]
            standin0 = process_cpu_s(standin_pid) if standin_pid else 0.0
            relay0, plis0, restarts0 = relay.ask("mark")
            frames0, bytes0, _ = watchers.ask("mark")
            _, camera_restarts0 = camera.ask("mark")
            time.sleep(seconds)
            relay1, plis1, restarts1 = relay.ask("mark")
            frames1, bytes1, _ = watchers.ask("mark")
            _, camera_restarts1 = camera.ask("mark")
            tree1 = [child.cpu_s() for child in children]
            standin1 = process_cpu_s(standin_pid) if standin_pid else 0.0
            busy1, own1 = machine_busy_s(), time.process_time()
            wall = time.monotonic() - start
        finally:
            for child in (watchers, relay, camera):
                child.stop()
    fps = [(b - a) / seconds for a, b in zip(frames0, frames1, strict=True)]
    mbps = [8 * (b - a) / seconds / 1e6 for a, b in zip(bytes0, bytes1, strict=True)]
    ours = sum(b - a for a, b in zip(tree0, tree1, strict=True)) + (own1 - own0)
    ours += standin1 - standin0
    return {
        "codec": codec,
        "mode": mode,
        "viewers": viewers,
        "started": started,
        "relay_cpu": 100 * (relay1 - relay0) / seconds,
        "camera_cpu": 100 * (tree1[0] - tree0[0]) / wall,
        "viewers_cpu": 100 * (tree1[2] - tree0[2]) / wall,
        "standin_cpu": 100 * (standin1 - standin0) / wall if standin_pid else None,
        "others_s": max(0.0, (busy1 - busy0) - ours),
        "wall": wall,
        "fps_min": min(fps),
        "fps_mean": sum(fps) / len(fps),
        "mbps_mean": sum(mbps) / len(mbps),
        "plis": plis1 - plis0,
        "restarts": restarts1 - restarts0,
        "camera_restarts": camera_restarts1 - camera_restarts0,
    }


def full_rate(result: dict[str, Any]) -> bool:
    return bool(result["fps_min"] >= FULL_RATE * FPS)


def run_codec(
    codec: str,
    counts: dict[str, list[int]],
    seconds: float,
    warmup: float,
    h264_source: str,
    profile: str | None = None,
) -> None:
    modes = [mode for mode in MODES[codec] if counts.get(mode)]
    if codec == "vp8":
        what = f"{WIDTH}x{HEIGHT}@{FPS} VP8, viewers decode"
    elif h264_source == "rtsp":
        what = (
            f"{H264_WIDTH}x{H264_HEIGHT}@{FPS} H.264 Main ~{H264_KBPS} kbit/s from the RTSP "
            f"stand-in (keyframe every {H264_GOP_S:g} s) through PassthroughSource, "
            "viewers count encoded frames (no decoding)"
        )
    else:
        what = (
            f"{H264_WIDTH}x{H264_HEIGHT}@{FPS} H.264 from OwnEncoder(SyntheticVideo) "
            f"({H264_KBPS} kbit/s target, keyframe every 30 frames), "
            "viewers count encoded frames (no decoding)"
        )
    print(
        f"bench/relay.py  {datetime.datetime.now():%Y-%m-%d %H:%M}  {os.cpu_count()} x "
        f"{cpu_model()}  Python {platform.python_version()}  aiortc {aiortc.__version__}  "
        f"{what}  window {seconds:g} s",
        flush=True,
    )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    all_counts = sorted({n for mode in modes for n in counts[mode]})
    for count in all_counts:
        for mode in modes:
            if count not in counts[mode]:
                continue
            path = None if profile is None else f"{profile}.{codec}-{mode}-{count}"
            result = scenario(codec, mode, count, seconds, warmup, h264_source, path)
            results[(mode, count)] = result
            extra = ""
            if codec == "h264":
                extra = (
                    f"{result['mbps_mean']:4.2f} Mbit/s per viewer, PLIs {result['plis']}, "
                    f"restarts relay {result['restarts']} camera {result['camera_restarts']}, "
                )
                if result["standin_cpu"] is not None:
                    extra += f"RTSP stand-in {result['standin_cpu']:4.1f} %, "
            late = "" if result["started"] == count else f" ({result['started']} started)"
            print(
                f"  {mode:<11} {count:>2} viewers{late}: relay {result['relay_cpu']:5.1f} %  "
                f"fps min {result['fps_min']:4.1f} mean {result['fps_mean']:4.1f}  "
                f"({extra}camera {result['camera_cpu']:4.1f} %, "
                f"viewers {result['viewers_cpu']:5.1f} %, "
                f"other processes {result['others_s']:4.1f} CPU-s in {result['wall']:.0f} s)",
                flush=True,
            )

    print()
    header = "| viewers | " + " | ".join(f"{m} CPU % | {m} fps min / mean" for m in modes) + " |"
    print(header)
    print("|" + "---:|" * (1 + 2 * len(modes)))
    for count in all_counts:
        cells = []
        for mode in modes:
            r = results.get((mode, count))
            if r is None:
                cells += ["-", "-"]
                continue
            behind = "" if full_rate(r) else " (behind)"
            cells += [f"{r['relay_cpu']:.1f}", f"{r['fps_min']:.1f} / {r['fps_mean']:.1f}{behind}"]
        print(f"| {count} | " + " | ".join(cells) + " |")
    marginal: dict[str, float] = {}
    cells = []
    for mode in modes:
        low, high = counts[mode][0], counts[mode][-1]
        if high > low:
            marginal[mode] = (
                results[(mode, high)]["relay_cpu"] - results[(mode, low)]["relay_cpu"]
            ) / (high - low)
            cells += [f"{marginal[mode]:.2f} ({low}->{high})", ""]
        else:
            cells += ["-", ""]
    print("| marginal per viewer | " + " | ".join(cells) + " |")
    if "fanout" in modes and len(counts["fanout"]) > 2:
        steps = list(zip(counts["fanout"], counts["fanout"][1:], strict=False))
        parts = []
        for a, b in steps:
            cost = results[("fanout", b)]["relay_cpu"] - results[("fanout", a)]["relay_cpu"]
            parts.append(f"{a}->{b}: {cost / (b - a):.2f}")
        print("Fanout marginal per viewer by step, % of a core: " + ", ".join(parts))
    others = sum(r["others_s"] for r in results.values())
    windows = sum(r["wall"] for r in results.values())
    print(f"other processes: {others:.1f} CPU-s over {windows:.0f} s of measurement windows")
    for mode in modes:
        slow = [n for n in counts[mode] if not full_rate(results[(mode, n)])]
        if slow:
            print(f"{mode}: below {FULL_RATE * FPS:g} fps (behind) at {slow} viewers")
        else:
            print(f"{mode}: every viewer at full frame rate (>= {FULL_RATE * FPS:g} fps)")
    if "fanout" in marginal:
        target = TARGET_MARGINAL[codec]
        every = all(full_rate(results[("fanout", n)]) for n in counts["fanout"])
        verdict = "PASS" if marginal["fanout"] <= target and every else "MISS"
        low, high = counts["fanout"][0], counts["fanout"][-1]
        print(
            f"Fanout marginal CPU per viewer ({low}->{high}) {marginal['fanout']:.2f} % of a core "
            f"(target <= {target:g} %{', every viewer at full rate' if codec == 'h264' else ''})"
            f": {verdict}"
        )
    print(flush=True)


def viewer_counts(text: str) -> list[int]:
    return sorted({int(n) for n in text.split(",") if n.strip()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", choices=["vp8", "h264", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewers", default="1,4,8", help="VP8: comma list of viewer counts")
    parser.add_argument("--modes", default=",".join(MODES["vp8"]), help="VP8 modes")
    parser.add_argument("--h264-viewers", default="1,4,8,16,32", help="H.264 Fanout")
    parser.add_argument(
        "--h264-mediarelay-viewers", default="1,4,8", help="H.264 MediaRelay ('' to skip)"
    )
    parser.add_argument("--h264-source", choices=["rtsp", "synthetic"], default="rtsp")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the relay's event loop over each window: pstats to FILE.CODEC-MODE-N",
    )
    args = parser.parse_args()
    vp8_counts = viewer_counts(args.viewers)
    vp8_modes = [m for m in args.modes.split(",") if m]
    h264_counts = viewer_counts(args.h264_viewers)
    if len(vp8_counts) < 2 or min(vp8_counts) < 1 or not set(vp8_modes) <= set(MODES["vp8"]):
        parser.error("give at least two viewer counts >= 1 and modes among " + ", ".join(MODES))
    if len(h264_counts) < 2 or min(h264_counts) < 1:
        parser.error("give at least two H.264 viewer counts >= 1")
    if args.codec in ("vp8", "both"):
        counts = {mode: vp8_counts for mode in vp8_modes}
        run_codec("vp8", counts, args.seconds, args.warmup, args.h264_source, args.profile)
    if args.codec in ("h264", "both"):
        counts = {"fanout": h264_counts, "mediarelay": viewer_counts(args.h264_mediarelay_viewers)}
        run_codec("h264", counts, args.seconds, args.warmup, args.h264_source, args.profile)


if __name__ == "__main__":
    main()
