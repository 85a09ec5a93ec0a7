"""CPU of the camera agent bridging one RTSP H.264 camera, passed through vs decoded and re-encoded.

    .venv/bin/python bench/agent.py [--seconds 15] [--warmup 3] [--viewers 0,1,4]
        [--naive-viewers 0,1,4]

One IP camera: the RTSP stand-in (``tests/rtsp.py``: GStreamer's RTSP server, 1920x1080 at
15 fps, H.264 Main at ~2 Mbit/s, a keyframe every 2 s; run by ``/usr/bin/python3``, started
fresh for each scenario, its own CPU printed apart). Three more processes per scenario: the
agent, whose CPU is measured, the viewers, and this one, which only routes SDP. Host
candidates are loopback only. The agent is one of:

- ``passthrough``: the camera agent as built (``device_sim``): ``PassthroughSource`` pulls the
  camera over RTSP/TCP once and each viewer gets an ``EncodedTrack`` of the camera's own
  H.264 through a ``CameraPeer``; nothing is decoded or encoded;
- ``naive``: the bridge one would write with aiortc alone: ``MediaPlayer(url,
  options={"rtsp_transport": "tcp"})`` (decoding), ``MediaRelay`` and one
  ``RTCPeerConnection`` per viewer whose sender encodes the relayed frames with aiortc's
  ``H264Encoder`` (libx264, its default preset, zerolatency, Baseline). The subscription is
  ``buffered=False`` (an encoder that is too slow gets the newest frame; frames pile up in
  no queue). ``MediaPlayer`` reads the camera only once a viewer's track is pulled, so with
  no viewer this agent is idle.

The viewers do not decode (as in ``bench/relay.py``'s H.264 scenarios): each is a
receive-only aiortc peer (``CountingViewer``) whose receiver's private
``_RTCRtpReceiver__decoder_queue.put`` is replaced by a counter of complete encoded frames,
which fails loudly if aiortc changes it.

Scenarios are interleaved (for each viewer count, each agent), each with fresh processes.
Once every viewer received its first frame (for 0 viewers: once the passthrough source
plays), after ``--warmup`` seconds, the agent's ``time.process_time()`` (all its threads:
PyAV's demuxer, aiortc's decoder and encoders) and every viewer's frames are counted over
``--seconds``. CPU is in % of one core. A viewer is at full frame rate when it received at
least 95 % of 15 fps. Other processes' CPU (all of ``/proc/stat`` minus the bench's
processes, the stand-in and this one) is printed: the machine has 2 shared cores.
Target: the passthrough agent uses <= 3 % of a core with one viewer.
"""

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/relay.py is named like the relay package: keep bench/ off the path, the project on it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import aiortc  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.contrib.media import MediaPlayer, MediaRelay  # noqa: E402

from device_sim.camera_peer import CameraPeer  # noqa: E402
from device_sim.sources import PassthroughSource  # noqa: E402
from device_sim.stream import EncodedTrack  # noqa: E402
from peer import codecs  # noqa: E402
from peer.network import use_host_addresses  # noqa: E402
from tests.rtsp import rtsp_camera  # noqa: E402

# The process harness and the counting viewers of bench/relay.py, imported by name.
harness: Any = importlib.import_module("bench.relay")

WIDTH, HEIGHT, FPS, KBPS, GOP_S = 1920, 1080, 15, 2000, 2.0
AGENTS = ("passthrough", "naive")
TARGET_ONE_VIEWER = 3.0  # % of a core, passthrough agent with one viewer
SOURCE_TIMEOUT_S = 10.0


async def agent_main(conn: Connection, spec: tuple[str, str]) -> None:
    """The agent: the camera's H.264 passed through, or decoded and encoded per viewer."""
    agent, url = spec
    use_host_addresses(["127.0.0.1"])
    source: PassthroughSource | None = None
    player: MediaPlayer | None = None
    media_relay = MediaRelay()
    if agent == "passthrough":
        source = PassthroughSource(url)
        await source.start()
        if await source.stream.wait_codec(SOURCE_TIMEOUT_S) is None:
            raise RuntimeError(f"the RTSP source gave no keyframe: {source.status}")
    else:
        player = MediaPlayer(url, options={"rtsp_transport": "tcp"})
    peers: list[CameraPeer] = []
    tracks: list[EncodedTrack] = []
    connections: list[RTCPeerConnection] = []
    conn.send("ready")
    while True:
        command, argument = await harness.receive(conn)
        if command == "answer" and source is not None:
            track = source.track()
            tracks.append(track)
            peer = CameraPeer(f"bench{len(peers)}", track, [])
            peers.append(peer)
            conn.send(await peer.answer(argument))
            await peer.add_candidate(None)
        elif command == "answer":
            assert player is not None
            assert player.video is not None
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            connections.append(pc)
            pc.addTransceiver(
                media_relay.subscribe(player.video, buffered=False), direction="sendonly"
            )
            codecs.prefer(pc, (codecs.H264,))
            await pc.setRemoteDescription(RTCSessionDescription(argument, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            conn.send(pc.localDescription.sdp)
        elif command == "mark":
            conn.send((time.process_time(), sum(t.restarts for t in tracks)))
        elif command == "stop":
            break
    for peer in peers:
        await peer.close()
    for pc in connections:
        await pc.close()
    if source is not None:
        await source.close()
    if player is not None and player.video is not None:
        player.video.stop()
    conn.send("stopped")


def scenario(agent: str, viewers: int, seconds: float, warmup: float) -> dict[str, Any]:
    Child = harness.Child
    with rtsp_camera(
        size=(WIDTH, HEIGHT), fps=FPS, bitrate_kbps=KBPS, keyframe_interval_s=GOP_S, profile="main"
    ) as camera:
        standin_pid = camera.process.pid
        bridge = Child(agent_main, (agent, camera.url))
        watchers = Child(harness.viewers_main, "h264")
        try:
            if not bridge.conn.poll(harness.COMMAND_TIMEOUT_S):
                raise TimeoutError("the agent did not start")
            ready = bridge.conn.recv()
            if ready != "ready":
                raise RuntimeError(f"the agent failed: {ready}")
            started = 0
            if viewers:
                offers = watchers.ask("offers", viewers)
                started = watchers.ask("answers", [bridge.ask("answer", o) for o in offers])
            time.sleep(warmup)
            children = (bridge, watchers)
            start = time.monotonic()
            busy0, own0 = harness.machine_busy_s(), time.process_time()
            tree0 = [child.cpu_s() for child in children]
            standin0 = harness.process_cpu_s(standin_pid)
            agent0, restarts0 = bridge.ask("mark")
            frames0, bytes0, _ = watchers.ask("mark")
            time.sleep(seconds)
            agent1, restarts1 = bridge.ask("mark")
            frames1, bytes1, _ = watchers.ask("mark")
            tree1 = [child.cpu_s() for child in children]
            standin1 = harness.process_cpu_s(standin_pid)
            busy1, own1 = harness.machine_busy_s(), time.process_time()
            wall = time.monotonic() - start
        finally:
            for child in (watchers, bridge):
                child.stop()
    fps = [(b - a) / seconds for a, b in zip(frames0, frames1, strict=True)] or [0.0]
    mbps = [8 * (b - a) / seconds / 1e6 for a, b in zip(bytes0, bytes1, strict=True)] or [0.0]
    ours = sum(b - a for a, b in zip(tree0, tree1, strict=True)) + (own1 - own0)
    ours += standin1 - standin0
    return {
        "agent": agent,
        "viewers": viewers,
        "started": started,
        "agent_cpu": 100 * (agent1 - agent0) / seconds,
        "viewers_cpu": 100 * (tree1[1] - tree0[1]) / wall,
        "standin_cpu": 100 * (standin1 - standin0) / wall,
        "others_s": max(0.0, (busy1 - busy0) - ours),
        "wall": wall,
        "fps_min": min(fps),
        "fps_mean": sum(fps) / len(fps),
        "mbps_mean": sum(mbps) / len(mbps),
        "restarts": restarts1 - restarts0,
    }


def full_rate(result: dict[str, Any]) -> bool:
    return result["viewers"] == 0 or bool(result["fps_min"] >= harness.FULL_RATE * FPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewers", default="0,1,4", help="passthrough agent: viewer counts")
    parser.add_argument("--naive-viewers", default="0,1,4", help="naive bridge ('' to skip)")
    args = parser.parse_args()
    counts = {
        "passthrough": harness.viewer_counts(args.viewers),
        "naive": harness.viewer_counts(args.naive_viewers),
    }
    if 1 not in counts["passthrough"] or min(counts["passthrough"]) < 0:
        parser.error("--viewers must include 1 (the target's count)")
    print(
        f"bench/agent.py  {datetime.datetime.now():%Y-%m-%d %H:%M}  {os.cpu_count()} x "
        f"{harness.cpu_model()}  Python {platform.python_version()}  "
        f"aiortc {aiortc.__version__}  one RTSP camera {WIDTH}x{HEIGHT}@{FPS} H.264 Main "
        f"~{KBPS} kbit/s, keyframe every {GOP_S:g} s; viewers count encoded frames "
        f"(no decoding)  window {args.seconds:g} s",
        flush=True,
    )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    all_counts = sorted({n for agent in AGENTS for n in counts[agent]})
    for count in all_counts:
        for agent in AGENTS:
            if count not in counts[agent]:
                continue
            r = scenario(agent, count, args.seconds, args.warmup)
            results[(agent, count)] = r
            late = "" if r["started"] == count else f" ({r['started']} started)"
            received = ""
            if count:
                received = (
                    f"fps min {r['fps_min']:4.1f} mean {r['fps_mean']:4.1f}, "
                    f"{r['mbps_mean']:4.2f} Mbit/s per viewer, "
                )
            print(
                f"  {agent:<11} {count} viewers{late}: agent {r['agent_cpu']:5.1f} %  "
                f"({received}restarts {r['restarts']}, RTSP stand-in {r['standin_cpu']:4.1f} %, "
                f"viewers {r['viewers_cpu']:5.1f} %, "
                f"other processes {r['others_s']:4.1f} CPU-s in {r['wall']:.0f} s)",
                flush=True,
            )

    print()
    print(
        "| viewers | passthrough agent CPU % | passthrough fps min / mean "
        "| naive bridge CPU % | naive fps min / mean |"
    )
    print("|---:|---:|---:|---:|---:|")
    for count in all_counts:
        cells = []
        for agent in AGENTS:
            r = results.get((agent, count))
            if r is None:
                cells += ["-", "-"]
            elif count == 0:
                cells += [f"{r['agent_cpu']:.1f}", "-"]
            else:
                behind = "" if full_rate(r) else " (behind)"
                cells += [
                    f"{r['agent_cpu']:.1f}",
                    f"{r['fps_min']:.1f} / {r['fps_mean']:.1f}{behind}",
                ]
        print(f"| {count} | " + " | ".join(cells) + " |")
    for agent in AGENTS:
        got = [n for n in counts[agent] if n >= 1]
        if len(got) >= 2:
            low, high = got[0], got[-1]
            cost = results[(agent, high)]["agent_cpu"] - results[(agent, low)]["agent_cpu"]
            print(
                f"{agent}: marginal per viewer ({low}->{high}) "
                f"{cost / (high - low):.2f} % of a core"
            )
        slow = [n for n in counts[agent] if not full_rate(results[(agent, n)])]
        if slow:
            print(f"{agent}: below {harness.FULL_RATE * FPS:g} fps (behind) at {slow} viewers")
    others = sum(r["others_s"] for r in results.values())
    windows = sum(r["wall"] for r in results.values())
    print(f"other processes: {others:.1f} CPU-s over {windows:.0f} s of measurement windows")
    one = results[("passthrough", 1)]
    verdict = "PASS" if one["agent_cpu"] <= TARGET_ONE_VIEWER and full_rate(one) else "MISS"
    print(
        f"passthrough agent with one viewer: {one['agent_cpu']:.1f} % of a core "
        f"(target <= {TARGET_ONE_VIEWER:g} %): {verdict}"
    )


if __name__ == "__main__":
    main()
