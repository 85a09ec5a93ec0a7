"""CPU cost of relaying one camera to 1, 4 and 8 viewers, three ways side by side in one run.

    .venv/bin/python bench/relay.py [--seconds 15] [--viewers 1,4,8] [--warmup 3]

Three processes per scenario, so that the relay's CPU is measured alone: a camera
(``device_sim`` ``CameraPeer``, ``SyntheticVideo`` 640x480 at 15 fps, VP8), the relay (one
upstream aiortc peer receiving the camera, one aiortc peer per viewer) and the viewers (``N``
``ViewerPeer``s decoding). The parent only routes SDP between them. Host candidates are
loopback only. The relay serves its viewers in one of three ways:

- ``fanout``: :class:`relay.media.Fanout` (the camera's encoded frames forwarded as the same
  ``av.Packet`` objects to every viewer; no encoder);
- ``mediarelay``: aiortc's ``MediaRelay``, one ``relay.subscribe(track)`` per viewer, so each
  viewer's sender re-encodes the decoded frames;
- ``encode-once``: a prototype of the alternative design: decode once (aiortc) and encode once
  per camera with one VP8 encoder (aiortc's settings), fanning out its packets.

Scenarios are interleaved (for each viewer count, each mode), each with fresh processes.
After every viewer decoded its first frame and ``--warmup`` seconds, the relay's process CPU
time (``time.process_time``: all its threads, including aiortc's decoder and encoder
threads) and every viewer's decoded frames are counted over ``--seconds``. CPU is in % of one
core. The marginal cost of a viewer is ``(cpu(max) - cpu(min)) / (max - min)`` viewers.
Other processes' CPU during each window (all of ``/proc/stat`` minus the three processes and
this one) is printed: the machine has 2 shared cores. Target: Fanout's marginal cost <= 1 %
of a core per viewer.
"""

import argparse
import asyncio
import contextlib
import datetime
import logging
import multiprocessing
import os
import platform
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
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

from device_sim.camera_peer import CameraPeer  # noqa: E402
from device_sim.media import SyntheticVideo  # noqa: E402
from device_sim.viewer_peer import ViewerPeer  # noqa: E402
from peer.network import use_host_addresses  # noqa: E402
from relay.media import Fanout  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 15
MODES = ("fanout", "mediarelay", "encode-once")
TARGET_MARGINAL = 1.0  # % of a core per additional viewer, Fanout
COMMAND_TIMEOUT_S = 60.0
TICKS = os.sysconf("SC_CLK_TCK")


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


async def camera_main(conn: Connection, _: Any) -> None:
    use_host_addresses(["127.0.0.1"])
    video = SyntheticVideo(WIDTH, HEIGHT, fps=FPS)
    peers: list[CameraPeer] = []
    while True:
        command, argument = await receive(conn)
        if command == "answer":
            peer = CameraPeer(f"bench{len(peers)}", video.track(), [])
            peers.append(peer)
            conn.send(await peer.answer(argument))
            await peer.add_candidate(None)
        elif command == "mark":
            conn.send(time.process_time())
        elif command == "stop":
            break
    for peer in peers:
        await peer.close()
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


async def relay_main(conn: Connection, mode: str) -> None:
    use_host_addresses(["127.0.0.1"])
    upstream = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = upstream.addTransceiver("video", direction="recvonly")
    fanout = Fanout("bench") if mode == "fanout" else None
    media_relay = MediaRelay() if mode == "mediarelay" else None
    encode_once = EncodeOnce() if mode == "encode-once" else None
    downstream: list[RTCPeerConnection] = []
    while True:
        command, argument = await receive(conn)
        if command == "offer":
            await upstream.setLocalDescription(await upstream.createOffer())
            conn.send(upstream.localDescription.sdp)
        elif command == "answer":
            await upstream.setRemoteDescription(RTCSessionDescription(argument, "answer"))
            if fanout is not None:
                fanout.attach(transceiver.receiver)
            if encode_once is not None:
                encode_once.attach(transceiver.receiver.track)
            conn.send("ok")
        elif command == "viewer":
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            downstream.append(pc)
            await pc.setRemoteDescription(RTCSessionDescription(argument, "offer"))
            if fanout is not None:
                track: MediaStreamTrack = fanout.subscribe()
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
            conn.send(time.process_time())
        elif command == "stop":
            break
    for closable in (fanout, encode_once):
        if closable is not None:
            await closable.close()
    for pc in [*downstream, upstream]:
        await pc.close()
    conn.send("stopped")


async def viewers_main(conn: Connection, _: Any) -> None:
    use_host_addresses(["127.0.0.1"])
    peers: list[ViewerPeer] = []
    while True:
        command, argument = await receive(conn)
        if command == "offers":
            peers = [ViewerPeer([], session_id=f"v{i}") for i in range(argument)]
            conn.send([await peer.offer() for peer in peers])
        elif command == "answers":
            for peer, answer in zip(peers, argument, strict=True):
                await peer.accept(answer)
                await peer.add_candidate(None)
            await asyncio.gather(*(peer.first_frame(timeout=20) for peer in peers))
            conn.send("ok")
        elif command == "mark":
            conn.send(([peer.frames for peer in peers], time.process_time()))
        elif command == "stop":
            break
    for peer in peers:
        await peer.close()
    conn.send("stopped")


# the parent


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
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

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


def scenario(mode: str, viewers: int, seconds: float, warmup: float) -> dict[str, Any]:
    camera, relay, watchers = Child(camera_main), Child(relay_main, mode), Child(viewers_main)
    try:
        relay.ask("answer", camera.ask("answer", relay.ask("offer")))
        offers = watchers.ask("offers", viewers)
        watchers.ask("answers", [relay.ask("viewer", offer) for offer in offers])
        time.sleep(warmup)
        children = (camera, relay, watchers)
        start = time.monotonic()
        busy0, own0 = machine_busy_s(), time.process_time()
        tree0 = [child.cpu_s() for child in children]
        relay0 = relay.ask("mark")
        frames0, _ = watchers.ask("mark")
        time.sleep(seconds)
        relay1 = relay.ask("mark")
        frames1, _ = watchers.ask("mark")
        tree1 = [child.cpu_s() for child in children]
        busy1, own1 = machine_busy_s(), time.process_time()
        wall = time.monotonic() - start
    finally:
        for child in (watchers, relay, camera):
            child.stop()
    fps = [(b - a) / seconds for a, b in zip(frames0, frames1, strict=True)]
    ours = sum(b - a for a, b in zip(tree0, tree1, strict=True)) + (own1 - own0)
    return {
        "mode": mode,
        "viewers": viewers,
        "relay_cpu": 100 * (relay1 - relay0) / seconds,
        "camera_cpu": 100 * (tree1[0] - tree0[0]) / wall,
        "viewers_cpu": 100 * (tree1[2] - tree0[2]) / wall,
        "others_s": max(0.0, (busy1 - busy0) - ours),
        "wall": wall,
        "fps_min": min(fps),
        "fps_mean": sum(fps) / len(fps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewers", default="1,4,8", help="comma list of viewer counts")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.viewers.split(",")})
    modes = [m for m in args.modes.split(",") if m]
    if len(counts) < 2 or min(counts) < 1 or not set(modes) <= set(MODES):
        parser.error("give at least two viewer counts >= 1 and modes among " + ", ".join(MODES))

    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    cpu_model = models[0] if models else platform.processor()
    print(
        f"bench/relay.py  {datetime.date.today()}  {os.cpu_count()} x {cpu_model}  "
        f"Python {platform.python_version()}  aiortc {aiortc.__version__}  "
        f"{WIDTH}x{HEIGHT}@{FPS} VP8  window {args.seconds:g} s"
    )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for count in counts:
        for mode in modes:
            result = scenario(mode, count, args.seconds, args.warmup)
            results[(mode, count)] = result
            print(
                f"  {mode:<11} {count} viewers: relay {result['relay_cpu']:5.1f} %  "
                f"fps min {result['fps_min']:4.1f} mean {result['fps_mean']:4.1f}  "
                f"(camera {result['camera_cpu']:4.1f} %, viewers {result['viewers_cpu']:5.1f} %, "
                f"other processes {result['others_s']:4.1f} CPU-s in {result['wall']:.0f} s)",
                flush=True,
            )

    print()
    header = "| viewers | " + " | ".join(f"{m} CPU % | {m} fps min/mean" for m in modes) + " |"
    print(header)
    print("|" + "---:|" * (1 + 2 * len(modes)))
    for count in counts:
        cells = []
        for mode in modes:
            r = results[(mode, count)]
            cells += [f"{r['relay_cpu']:.1f}", f"{r['fps_min']:.1f} / {r['fps_mean']:.1f}"]
        print(f"| {count} | " + " | ".join(cells) + " |")
    low, high = counts[0], counts[-1]
    marginal = {
        mode: (results[(mode, high)]["relay_cpu"] - results[(mode, low)]["relay_cpu"])
        / (high - low)
        for mode in modes
    }
    cells = []
    for mode in modes:
        cells += [f"{marginal[mode]:.2f}", ""]
    print(f"| marginal per viewer ({low}->{high}) | " + " | ".join(cells) + " |")
    others = sum(r["others_s"] for r in results.values())
    windows = sum(r["wall"] for r in results.values())
    print(f"\nother processes: {others:.1f} CPU-s over {windows:.0f} s of measurement windows")
    if "fanout" in modes:
        verdict = "PASS" if marginal["fanout"] <= TARGET_MARGINAL else "MISS"
        print(
            f"Fanout marginal CPU per viewer {marginal['fanout']:.2f} % of a core "
            f"(target <= {TARGET_MARGINAL:g} %): {verdict}"
        )


if __name__ == "__main__":
    main()
