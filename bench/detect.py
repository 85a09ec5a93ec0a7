"""Detection costs: motion per frame, YOLO per frame, and detection lag with 4 cameras.

    .venv/bin/python bench/detect.py [--seconds 30] [--fps 5] [--rate 8] [--imgsz 320] [--frames 40]
                                     [--only motion|yolo|cameras|signaling]

1. Motion: ``MotionDetector`` (320x240 gray) on 300 pre-drawn 640x480 SyntheticVideo frames
   (half of them with the intruder walking), ms per frame including the BGR->gray
   conversion and the downscale, for MOG2 and frame differencing.
2. YOLO on both runtimes, side by side: the same model (scripts/yolo_models.py's
   yolo11n-random, made by scripts/install-yolo: yolo11n with seeded random weights, offline)
   as ``.pt`` on ultralytics/PyTorch (``UltralyticsDetector``) and as its ONNX export on ONNX
   Runtime (``OnnxDetector``), one thread per worker, the same ``--frames`` 640x480 frames
   back to back at 320 and at 640 px (conf 0.25): latency per frame as measured in the worker
   (pre-processing, inference, NMS), this process's CPU per frame, boxes found, and the event
   loop's lag meanwhile. Rounds alternate the runtimes so that both see the same machine.
3. Four cameras: four SyntheticVideo sources with overlapping motion episodes, each
   analysed at ``--fps`` (out of step) on one event loop: motion on the loop, then, when it moves, a
   detection if the shared ``DetectionBudget`` (``--rate``/s) grants one and the one
   ``UltralyticsDetector`` worker is free (nothing queues). Lag is the time from a frame's
   capture to its detection result. Run once with a worker thread and once with a worker
   process, side by side, with a probe task sleeping 5 ms on the loop.
4. Signaling latency with detection on and off (``--only signaling`` runs it alone): the
   latency harness of bench/signaling.py ((b), same instance: ``--pairs`` viewer/camera pairs
   on one cloud process, viewer ``session.ice`` at ``--msg-rate``/s echoed by the cameras,
   one-way legs timed on one clock) while a real relay node (``python -m relay``, yolo11n at
   random weights) watches one simulator camera for one relayed viewer (device_sim, ICE on
   127.0.0.1 only). Detection is switched by the scene: during "on" windows the camera's
   intruder walks (motion -> YOLO at the relay's budget -> events), during "off" windows the
   room is still (the relay still receives, decodes and fans out the video and checks motion,
   but runs no YOLO and opens no event). Windows alternate off/on after a warm-up; the first
   ``--guard`` seconds of each are not counted. p99 of on vs off windows, both legs.
"""

import argparse
import asyncio
import datetime
import importlib
import multiprocessing
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_sim.media import Picture, SyntheticVideo  # noqa: E402
from device_sim.state import CameraState  # noqa: E402
from relay.budget import DetectionBudget  # noqa: E402
from relay.detector import UltralyticsDetector, WorkerDetector  # noqa: E402
from relay.events import EventThreads  # noqa: E402
from relay.motion import MotionConfig, MotionDetector  # noqa: E402
from relay.onnx_detector import OnnxDetector  # noqa: E402

# The latency harness of bench/signaling.py and the test servers, imported by name so that
# mypy (strict) checks this file without following into those, which are not strictly typed.
signaling: Any = importlib.import_module("bench.signaling")
servers: Any = importlib.import_module("tests.servers")

MODEL = "yolo11n.yaml"
MODELS = Path(sys.prefix) / "models"  # scripts/install-yolo makes them
PT, ONNX = MODELS / "yolo11n-random.pt", MODELS / "yolo11n-random.onnx"
EPISODES = [[(2, 10), (16, 8)], [(5, 8), (18, 9)], [(8, 12)], [(3, 5), (12, 14)]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {pct(values, 50):6.1f}  p95 {pct(values, 95):6.1f}  max {max(values):6.1f} ms"


def own_cpu_s() -> float:
    """CPU seconds of this process and of its live children (a detector worker process)."""
    total = time.process_time()
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_s() -> float:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class LagProbe:
    """Sleeps 5 ms in a loop and records how late it wakes up (ms)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lags.append((time.perf_counter() - started - 0.005) * 1000)

    def __enter__(self) -> "LagProbe":
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def bench_motion() -> None:
    video = SyntheticVideo(motion=[(10.0, 10.0)])
    frames = [video.picture(i) for i in range(0, 600, 2)]  # 300 frames over 40 s
    for method in ("mog2", "diff"):
        detector = MotionDetector(MotionConfig(method=method))
        costs = []
        for k, frame in enumerate(frames):
            started = time.perf_counter()
            detector.update(frame, k * 2 / video.fps)
            costs.append((time.perf_counter() - started) * 1000)
        print(
            f"  motion {method:<4} 320x240: mean {statistics.fmean(costs):.2f}  "
            f"p50 {pct(costs, 50):.2f}  p95 {pct(costs, 95):.2f} ms/frame"
        )


async def bench_yolo(config_dir: str, frames_n: int, rounds: int = 4) -> None:
    if not (PT.is_file() and ONNX.is_file()):
        sys.exit(f"no {PT} / {ONNX}: run scripts/install-yolo {sys.prefix}")
    video = SyntheticVideo(motion=[(0.0, 60.0)])
    frames = [video.picture(i) for i in range(0, 4 * frames_n, 4)]  # the intruder walking
    per_round = max(1, frames_n // rounds)
    for imgsz in (320, 640):
        detectors: dict[str, WorkerDetector] = {
            "PyTorch": UltralyticsDetector(str(PT), imgsz=imgsz, config_dir=config_dir),
            "ONNX Runtime": OnnxDetector(str(ONNX), imgsz=imgsz),
        }
        cpu = dict.fromkeys(detectors, 0.0)
        boxes = dict.fromkeys(detectors, 0)
        lags: dict[str, list[float]] = {name: [] for name in detectors}
        for detector in detectors.values():
            await detector.start()
        for k in range(0, len(frames), per_round):
            for name, detector in detectors.items():
                cpu0 = time.process_time()
                with LagProbe() as probe:
                    for frame in frames[k : k + per_round]:
                        boxes[name] += len(await detector.detect(frame))
                cpu[name] += time.process_time() - cpu0
                lags[name] += probe.lags
        for name, detector in detectors.items():
            await detector.close()
            print(
                f"  yolo11n {imgsz} px {name:<12}: {summary(detector.latencies_ms())};  "
                f"CPU {1000 * cpu[name] / len(frames):5.1f} ms/frame;  "
                f"{boxes[name] / len(frames):5.1f} boxes/frame;  "
                f"loop lag p95 {pct(lags[name], 95):.1f} ms"
            )
        p50 = {name: pct(d.latencies_ms(), 50) for name, d in detectors.items()}
        print(
            f"  yolo11n {imgsz} px: ONNX Runtime p50 / PyTorch p50 = "
            f"{p50['ONNX Runtime'] / p50['PyTorch']:.2f}"
        )


@dataclass
class Camera:
    name: str
    video: SyntheticVideo
    motion: MotionDetector
    events: EventThreads = field(default_factory=EventThreads)
    analysed: int = 0
    moving: int = 0
    detected: int = 0
    refused_budget: int = 0
    refused_busy: int = 0
    threads: int = 0


async def four_cameras(
    executor: Literal["thread", "process"], args: argparse.Namespace, config_dir: str
) -> None:
    detector = UltralyticsDetector(
        MODEL, imgsz=args.imgsz, executor=executor, config_dir=config_dir
    )
    await detector.start()
    budget = DetectionBudget(args.rate)
    cameras = [
        Camera(f"cam{k}", SyntheticVideo(motion=episodes), MotionDetector(MotionConfig()))
        for k, episodes in enumerate(EPISODES)
    ]
    lags: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def detect(camera: Camera, frame: Picture, captured: float) -> None:
        found = await detector.detect(frame)
        lags.append((time.perf_counter() - captured) * 1000)
        camera.detected += 1
        camera.threads += sum(
            r.state == "new" for r in camera.events.update(time.time(), None, found)
        )

    async def analyse(camera: Camera, phase: float) -> None:
        # Cameras are not in step: in lockstep, the first to ask would always find the
        # worker free and the others always busy.
        period = 1.0 / args.fps
        next_at = time.perf_counter() + phase * period
        await asyncio.sleep(phase * period)
        while camera.video.elapsed() < args.seconds:
            captured = time.perf_counter()
            frame = camera.video.picture(camera.video.index_at(camera.video.elapsed()))
            result = camera.motion.update(frame, captured)
            camera.analysed += 1
            camera.threads += sum(
                r.state == "new" for r in camera.events.update(time.time(), result)
            )
            if result.moving:
                camera.moving += 1
                if detector.busy:
                    camera.refused_busy += 1
                elif not budget.try_acquire(camera.name, captured):
                    camera.refused_budget += 1
                else:
                    task = asyncio.create_task(detect(camera, frame, captured))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    busy0, own0, wall0 = machine_busy_s(), own_cpu_s(), time.monotonic()
    with LagProbe() as probe:
        await asyncio.gather(
            *(analyse(camera, k / len(cameras)) for k, camera in enumerate(cameras))
        )
        await asyncio.gather(*pending)
    wall = time.monotonic() - wall0
    ours = own_cpu_s() - own0
    others = (machine_busy_s() - busy0) - ours
    await detector.close()
    print(
        f"  4 cameras, {executor} worker, {args.imgsz} px, {args.fps:g} fps each, "
        f"budget {args.rate:g}/s, {wall:.0f} s:"
    )
    print(f"    detection lag  {summary(lags)}  ({len(lags)} detections)")
    print(f"    inference      {summary(detector.latencies_ms())}")
    print(f"    loop lag       {summary(probe.lags)}")
    for c in cameras:
        print(
            f"    {c.name}: {c.analysed} analysed, {c.moving} moving, {c.detected} detected, "
            f"refused {c.refused_budget} by budget / {c.refused_busy} busy, "
            f"{c.threads} threads opened"
        )
    print(
        f"    CPU: {100 * ours / wall:.0f} % of a core for this bench (loop, workers, the "
        f"scenes), other processes {max(0.0, others):.1f} CPU-s"
    )


# --- 4. signaling latency with detection on and off ------------------------------------------

SPAWN = multiprocessing.get_context("spawn")
DETECTOR_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO relay\.node detector: (\d+) inferences"
    r".*?p50 (\S+) ms"
)


def camera_process(pipe: Connection, state: dict[str, str], size: str) -> None:
    """The simulator camera (``device_sim.camera.Camera`` with a ``SyntheticVideo``).

    Its intruder walks during the ``(start, end)`` intervals (time.monotonic(), the clock of
    every process here) that the bench sends; "stop" or a closed pipe stops the camera.
    """
    from device_sim.camera import Camera
    from device_sim.state import CameraState
    from peer.network import use_host_addresses

    use_host_addresses(["127.0.0.1"])  # docs/design.md, "Hermetic network"

    async def run() -> None:
        width, height = (int(v) for v in size.split("x"))
        video = SyntheticVideo(width, height)
        done, loop = asyncio.Event(), asyncio.get_running_loop()

        def walk(end: float) -> None:
            video.motion(max(0.05, end - time.monotonic()))

        def command(message: Any) -> None:
            if message == "stop":
                done.set()
                return
            for start, end in message:  # the loop's clock is time.monotonic()
                loop.call_at(start, walk, end)

        def read() -> None:
            try:
                while True:
                    message: Any = pipe.recv()
                    loop.call_soon_threadsafe(command, message)
            except (EOFError, OSError, RuntimeError):
                with suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=read, daemon=True).start()
        await Camera(CameraState(**state), video).run(done)

    asyncio.run(run())


def viewer_process(pipe: Connection, url: str, token: str, device_id: str) -> None:
    """The owner watching the camera through a relay node until told to stop.

    Sends ``{"route", "ttff_s"}`` once playing, then ``{"frames", "ended", "events"}``; the
    events are the live ``event`` pushes, as (arrival time.monotonic(), kind, state,
    started_at, ended_at), the last two as time.time() (ended_at: the thread's last hit).
    """
    from device_sim.viewer import Viewer
    from peer.network import use_host_addresses

    use_host_addresses(["127.0.0.1"])

    async def run() -> dict[str, Any]:
        async with Viewer(url, token, "") as viewer:
            watch = await viewer.watch(device_id, mode="relay", timeout_s=60)
            pipe.send({"route": watch.route, "ttff_s": watch.ttff_s})
            events: list[tuple[float, str, str, float, float | None]] = []

            def wall(at: str | None) -> float | None:
                return None if at is None else datetime.datetime.fromisoformat(at).timestamp()

            async def collect() -> None:
                while True:
                    push = await viewer.pushes.get()
                    if push.get("type") == "event":
                        started, ended = wall(push["started_at"]), wall(push.get("ended_at"))
                        assert started is not None
                        at = time.monotonic()
                        events.append((at, push["kind"], push["state"], started, ended))

            collector = asyncio.create_task(collect())
            await asyncio.to_thread(pipe.recv)  # "stop"
            collector.cancel()
            ended = watch.ended.result() if watch.ended.done() else None
            return {"frames": watch.frames, "ended": ended, "events": events}

    try:
        pipe.send(asyncio.run(run()))
    except Exception as exc:
        pipe.send({"error": repr(exc)})


def load_process(pipe: Connection, *load: Any) -> None:
    """bench/signaling.py's load generator; tells the bench when message 0 is due."""
    try:
        result = asyncio.run(
            signaling.relay_load(*load, on_start=lambda t: pipe.send({"start": t}))
        )
        pipe.send(result)
    except Exception as exc:
        pipe.send({"error": repr(exc)})


@contextmanager
def pinned(side: str, args: argparse.Namespace) -> Iterator[None]:
    """With --split-cpus, processes started inside run on their side's CPU only: "cloud"
    (cloud, load generator, this bench) on CPU 0, "relay" (relay, camera, viewer) on CPU 1,
    as if the relay had a machine of its own. They inherit this process's affinity."""
    if not args.split_cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0 if side == "cloud" else 1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def spawn(stack: ExitStack, target: Any, *args: Any) -> tuple[Any, Connection]:
    """A spawned process and our end of its pipe; killed by PID at the end (or on failure)."""
    parent, child = SPAWN.Pipe()
    process = SPAWN.Process(target=target, args=(child, *args))
    process.start()

    def end() -> None:
        with suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()

    stack.callback(end)
    return process, parent


def receive(pipe: Connection, process: Any, what: str, timeout: float) -> dict[str, Any]:
    if not pipe.poll(timeout):
        raise RuntimeError(f"{what}: nothing within {timeout:g} s (alive: {process.is_alive()})")
    message: dict[str, Any] = pipe.recv()
    if "error" in message:
        raise RuntimeError(f"{what} failed: {message['error']}")
    return message


def start_relay(
    stack: ExitStack, url: str, secret: str, tmp: Path, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    """``python -m relay`` with yolo11n at random weights; returns once it has registered."""
    env = {
        "CLOUD_URL": url,
        "RELAY_ID": "relay-bench",
        "RELAY_SECRET": secret,
        "YOLO_MODEL": args.relay_model,
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp / "yolo"),
        "ANALYSIS_FPS": f"{args.analysis_fps:g}",
        "DETECTIONS_PER_S": f"{args.detections_per_s:g}",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
    }
    log = tmp / "relay.log"
    nice = args.relay_nice
    process: subprocess.Popen[bytes] = servers.relay_process(
        env, log, preexec_fn=lambda: os.nice(nice)
    )
    stack.callback(servers.stop, process)
    deadline = time.monotonic() + 180  # imports torch, builds the model, one inference
    while "registered as" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the relay did not register:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return process


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cpu_or_none(pid: int) -> float | None:
    try:
        return float(signaling.cpu_s(pid))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Sample:
    t: float
    machine: float  # busy CPU-s of the machine
    cpu: dict[int, float]  # CPU-s of each of our processes
    cloud: tuple[float, float]  # the cloud's main thread: (on a CPU, waiting for one) s


def take_sample(cloud_pid: int, pids: set[int]) -> Sample:
    cpu = {p: c for p in pids if (c := cpu_or_none(p)) is not None}
    return Sample(time.monotonic(), machine_busy_s(), cpu, signaling.sched_s(cloud_pid))


@dataclass
class Window:
    state: str  # "on" or "off"
    start: float  # time.monotonic()
    end: float
    v2c: list[float] = field(default_factory=list)
    c2v: list[float] = field(default_factory=list)
    sent: int = 0
    shares: dict[str, float] = field(default_factory=dict)  # of one core, over the window
    moving: float = 0.0  # seconds of the counted span inside a relay motion thread
    events: int = 0


def between(samples: list[Sample], lo: float, hi: float) -> tuple[Sample, Sample]:
    first = next(s for s in samples if s.t >= lo)
    last = next(s for s in reversed(samples) if s.t <= hi)
    return first, last


def shares(a: Sample, b: Sample, named: dict[str, int]) -> dict[str, float]:
    span = b.t - a.t
    used = {
        n: (b.cpu.get(p, a.cpu.get(p, 0.0)) - a.cpu.get(p, 0.0)) / span for n, p in named.items()
    }
    ours = sum(b.cpu[p] - a.cpu[p] for p in b.cpu if p in a.cpu) / span
    used["others"] = max(0.0, (b.machine - a.machine) / span - ours)
    used["cloud main"] = (b.cloud[0] - a.cloud[0]) / span
    used["cloud wait"] = (b.cloud[1] - a.cloud[1]) / span
    return used


def inference_counts(log: str, offset: float) -> list[tuple[float, int, str]]:
    """(time.monotonic(), inferences so far, p50 ms) from the relay's periodic detector lines."""
    found = []
    for line in log.splitlines():
        if match := DETECTOR_LINE.match(line):
            wall = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((wall - offset, int(match[2]), match[3]))
    return found


def run_windows(stack: ExitStack, args: argparse.Namespace, db: str, tmp: Path) -> dict[str, Any]:
    secret, key = "relay-" + secrets.token_hex(8), Ed25519PrivateKey.generate()
    env = signaling.cloud_env(db, tmp, 60) | {"RELAY_SECRET": secret}
    if args.split_cpus:
        os.sched_setaffinity(0, {0})  # this bench samples and reads pipes: the cloud's side
    with pinned("cloud", args):
        cloud, url = signaling.start_cloud(stack, env, tmp / "cloud.log", "websockets-sansio")
    ws_url = url.replace("http", "ws", 1)
    owners, ids = signaling.owners_and_devices(url, env, args.pairs, key)
    # Another owner for the video camera: its event pushes do not go to the signaling pairs.
    watchers, (video_id,) = signaling.owners_and_devices(url, env, 1, key)
    token, viewer_token = owners[0][1], watchers[0][1]
    with pinned("relay", args):
        relay = start_relay(stack, url, secret, tmp, args)
    state = {
        "cloud_url": signaling.PUBLIC,  # the audience of the camera's assertions
        "device_id": video_id,
        "device_uid": "bench-video",
        "device_name": "Bench video",
        "camera_model": "VC-100",
        "firmware_version": "1.0.0",
        "signaling_url": ws_url + "/ws/v1/device",
        "private_key": CameraState.encode_key(key),
    }
    with pinned("relay", args):
        camera, camera_pipe = spawn(stack, camera_process, state, args.size)
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url, timeout=15) as http:
        while True:
            headers = {"Authorization": f"Bearer {viewer_token}"}
            listed = http.get("/api/v1/devices", headers=headers)
            if any(d["id"] == video_id and d["online"] for d in listed.json()["devices"]):
                break
            if time.monotonic() > deadline or not camera.is_alive():
                raise RuntimeError("the simulator camera did not come online")
            time.sleep(0.3)
    with pinned("relay", args):
        viewer, viewer_pipe = spawn(stack, viewer_process, url, viewer_token, video_id)
    playing = receive(viewer_pipe, viewer, "the relayed viewer", 90)
    if playing["route"] != "relay":
        raise RuntimeError(f"the viewer plays through {playing['route']}, not a relay")
    windows_s = args.windows * args.window
    load_args = argparse.Namespace(rate=args.msg_rate, warmup=args.warmup, seconds=windows_s)
    with pinned("cloud", args):
        load, load_pipe = spawn(
            stack, load_process, [ws_url], token, ids, signaling.raw(key), load_args
        )
    t0 = receive(load_pipe, load, "the load generator", 120)["start"]
    begin = t0 + args.warmup
    windows = [
        Window("on" if k % 2 else "off", begin + k * args.window, begin + (k + 1) * args.window)
        for k in range(args.windows)
    ]
    walks = [(time.monotonic(), begin)] + [(w.start, w.end) for w in windows if w.state == "on"]
    camera_pipe.send(walks)
    offset = time.time() - time.monotonic()
    named = {"cloud": cloud.pid, "relay": relay.pid, "camera": camera.pid}
    named |= {"viewer": viewer.pid, "load": load.pid}
    pids = descendants(os.getpid()) | {os.getpid()}
    samples = [take_sample(cloud.pid, pids)]
    deadline = begin + windows_s + 120
    while not load_pipe.poll(0.25):
        samples.append(take_sample(cloud.pid, pids))
        if not load.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the load process died or hung")
    samples.append(take_sample(cloud.pid, pids))
    result = receive(load_pipe, load, "the load generator", 1)
    # The last motion thread ends (quiet_s, 3 s) after the last window: wait for its push.
    time.sleep(max(0.0, windows[-1].end + 4.5 - time.monotonic()))
    viewer_pipe.send("stop")
    watched = receive(viewer_pipe, viewer, "the relayed viewer", 30)
    counts = inference_counts((tmp / "relay.log").read_text(), offset)
    step = 1 / args.msg_rate
    for w in windows:
        lo = w.start + args.guard
        first, last = round((lo - t0) / step), round((w.end - t0) / step)
        w.sent = last - first
        w.v2c = [result["v2c_at"][n] for n in range(first, last) if n in result["v2c_at"]]
        w.c2v = [result["c2v_at"][n] for n in range(first, last) if n in result["c2v_at"]]
        w.shares = shares(*between(samples, lo, w.end), named)
        w.moving = sum(
            max(0.0, min(w.end, ended - offset) - max(lo, started - offset))
            for _, kind, state, started, ended in watched["events"]
            if kind == "motion" and state == "end" and ended is not None
        )
        w.events = sum(w.start <= at < w.end for at, *_ in watched["events"])
    span = shares(*between(samples, begin, windows[-1].end), named)
    return {
        "windows": windows,
        "span": span,
        "playing": playing,
        "watched": watched,
        "counts": [c for c in counts if begin <= c[0] <= windows[-1].end],
        "lost": result["sent"] - len(result["rtt"]),
        "other": result["other"],
        "late": signaling.pct(result["late"]),
    }


def print_windows(r: dict[str, Any], args: argparse.Namespace) -> bool:
    windows: list[Window] = r["windows"]
    print(
        f"\n4. Signaling latency with detection on/off: {args.pairs} viewer/camera pairs, "
        f"{args.msg_rate:g} session.ice/s echoed, 1 cloud process (in-memory bus); a relay node "
        f"({MODEL} random weights, 320 px, ANALYSIS_FPS {args.analysis_fps:g}, "
        f"DETECTIONS_PER_S {args.detections_per_s:g}, nice {args.relay_nice}) watching one "
        f"{args.size}@15 simulator "
        f"camera for one relayed viewer; "
        + ("CPUs split: cloud side on 0, relay side on 1" if args.split_cpus else "CPUs shared")
    )
    print(
        f"   warm-up {args.warmup:g} s (intruder walking), then {args.windows} x "
        f"{args.window:g} s windows alternating off/on; the first {args.guard:g} s of each "
        "window are not counted. CPU in % of one core; c-main = the cloud's main thread on a CPU,"
        " c-wait = runnable but waiting for one; others = processes not started by this bench; "
        "moving = seconds of the counted span inside a motion thread the relay reported (its "
        "'end' push); events = event pushes to the relayed viewer (whole window)"
    )
    keys = ["relay", "cloud", "cloud main", "cloud wait", "camera", "viewer", "load", "others"]
    heads = (
        "msgs v2c-p50 v2c-p99 c2v-p50 c2v-p99 relay cloud c-main c-wait camera viewer load others"
    )
    print(
        f"   {'win':<4}{'state':<6}"
        + "".join(f"{h:>9}" for h in heads.split())
        + "   moving events"
    )

    def row(label: str, state: str, ws: list[Window]) -> tuple[float, float]:
        v2c = [v for w in ws for v in w.v2c]
        c2v = [v for w in ws for v in w.c2v]
        pv, pc = signaling.pct(v2c), signaling.pct(c2v)
        share = {k: statistics.fmean(w.shares[k] for w in ws) for k in ws[0].shares}
        cells = [f"{sum(w.sent for w in ws)}", *(f"{v:.2f}" for v in (pv[0], pv[2], pc[0], pc[2]))]
        cells += [f"{100 * share[k]:.0f}" for k in keys]
        tail = f"{sum(w.moving for w in ws):>9.1f}{sum(w.events for w in ws):>7}"
        print(f"   {label:<4}{state:<6}" + "".join(f"{c:>9}" for c in cells) + tail)
        return pv[2], pc[2]

    for k, w in enumerate(windows):
        row(str(k + 1), w.state, [w])
    off = row("all", "off", [w for w in windows if w.state == "off"])
    on = row("all", "on", [w for w in windows if w.state == "on"])
    change = [b / a - 1 for a, b in zip(off, on, strict=True)]
    ok = all(c <= 0.10 for c in change)
    medians: list[list[float]] = []
    for state in ("off", "on"):
        p99s = [
            (signaling.pct(w.v2c)[2], signaling.pct(w.c2v)[2]) for w in windows if w.state == state
        ]
        medians.append([statistics.median(x) for x in zip(*p99s, strict=True)])
        v2c, c2v = (f"{min(x):.2f}-{max(x):.2f} ms" for x in zip(*p99s, strict=True))
        print(
            f"   p99 per {state:<3} window: viewer->camera {v2c}, camera->viewer {c2v}; median "
            f"{medians[-1][0]:.2f} / {medians[-1][1]:.2f} ms"
        )
    robust = [b / a - 1 for a, b in zip(*medians, strict=True)]
    print(
        f"   p99 on vs off: viewer->camera {change[0]:+.1%}, camera->viewer {change[1]:+.1%}; "
        f"target <= +10 %: {'PASS' if ok else 'MISS'} (median of the window p99s: "
        f"{robust[0]:+.1%}, {robust[1]:+.1%})"
    )
    span, counts, watched = r["span"], r["counts"], r["watched"]
    done, on_s, p50 = 0, 0.0, "-"
    if len(counts) >= 2:  # the relay logs its count every 5 s while it changes
        (t1, c1, _), (t2, c2, p50) = counts[0], counts[-1]
        done = c2 - c1
        on_s = sum(max(0.0, min(t2, w.end) - max(t1, w.start)) for w in windows if w.state == "on")
    kinds = sorted({f"{kind} {state}" for _, kind, state, *_ in watched["events"]})
    print(
        f"   relay: {done} YOLO inferences between its first and last log line in the windows, "
        f"{done / max(on_s, 1e-9):.1f} per second of 'on' window between them; inference p50 "
        f"{p50} ms; viewer: route relay, first frame after "
        f"{r['playing']['ttff_s']:.2f} s, {watched['frames']} frames, ended: {watched['ended']}; "
        f"event pushes seen: {', '.join(kinds) or 'none'}"
    )
    print(
        f"   whole measured span: relay {span['relay']:.0%}, cloud {span['cloud']:.0%}, camera "
        f"{span['camera']:.0%}, viewer {span['viewer']:.0%}, load {span['load']:.0%}, other "
        f"processes {span['others']:.0%} of one core; ICE lost {r['lost']}, other frames "
        f"{r['other'] or 'none'}; generator lateness p99 {r['late'][2]:.2f} ms"
    )
    return ok


def signaling_with_detection(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        (Path(tmp) / "db").mkdir()
        try:
            with servers.secantus_server(Path(tmp) / "db") as db, ExitStack() as stack:
                result = run_windows(stack, args, db, Path(tmp))
            print_windows(result, args)
        finally:
            for log in Path(tmp).glob("*.log"):
                if (at := (text := log.read_text()).find("Traceback")) >= 0:
                    print(f"!! {log.name} has a traceback:\n{text[at : at + 1500]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=5.0, help="analysed frames/s per camera")
    parser.add_argument("--rate", type=float, default=8.0, help="detection budget, frames/s")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--frames", type=int, default=40, help="2. frames per runtime and size")
    parser.add_argument("--executors", default="thread,process")
    parser.add_argument("--only", choices=["motion", "yolo", "cameras", "signaling"])
    group = parser.add_argument_group("4. signaling latency with detection on/off")
    group.add_argument("--pairs", type=int, default=60, help="viewer/camera signaling pairs")
    group.add_argument("--msg-rate", type=float, default=1000, help="session.ice/s in total")
    group.add_argument("--windows", type=int, default=8, help="off/on windows (even)")
    group.add_argument("--window", type=float, default=8.0, help="seconds per window")
    group.add_argument("--warmup", type=float, default=8.0, help="unmeasured seconds first")
    group.add_argument("--guard", type=float, default=1.0, help="uncounted start of a window")
    group.add_argument("--analysis-fps", type=float, default=5.0, help="the relay's ANALYSIS_FPS")
    group.add_argument(
        "--detections-per-s", type=float, default=4.0, help="the relay's DETECTIONS_PER_S"
    )
    group.add_argument("--size", default="640x480", help="the simulator camera's picture")
    group.add_argument(
        "--relay-nice", type=int, default=0, help="start the relay node at this nice value"
    )
    group.add_argument(
        "--split-cpus",
        action="store_true",
        help="cloud, load and bench on CPU 0; relay, camera and viewer on CPU 1",
    )
    group.add_argument(
        "--relay-model", default=MODEL, help="the relay's YOLO_MODEL (none: motion only, a control)"
    )
    args = parser.parse_args()
    if args.windows < 2 or args.windows % 2:
        parser.error("--windows: an even number, at least 2")
    if args.msg_rate / args.pairs > 19:
        parser.error("keep --msg-rate / --pairs under 20 ICE/s per connection (the cloud's limit)")
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    print(
        f"bench/detect.py  {datetime.date.today()}  {os.cpu_count()} x "
        f"{models[0] if models else platform.processor()}  Python {platform.python_version()}"
        f"  torch {version('torch')}  ultralytics {version('ultralytics')}"
        f"  onnxruntime {version('onnxruntime')}"
        "  (1 torch thread per worker)"
    )
    with tempfile.TemporaryDirectory() as config_dir:
        if args.only in (None, "motion"):
            bench_motion()
        if args.only in (None, "yolo"):
            await bench_yolo(config_dir, args.frames)
        for executor in args.executors.split(",") if args.only in (None, "cameras") else ():
            if executor not in ("thread", "process"):
                parser.error("executors: thread and/or process")
            await four_cameras("process" if executor == "process" else "thread", args, config_dir)
    if args.only in (None, "signaling"):
        started, busy, own = time.monotonic(), machine_busy_s(), signaling.machine_cpu()[1]
        signaling_with_detection(args)
        wall = time.monotonic() - started
        others = max(0.0, machine_busy_s() - busy - (signaling.machine_cpu()[1] - own))
        print(
            f"   other processes on the machine used {others:.1f} CPU-s in this section's "
            f"{wall:.0f} s ({others / wall:.0%} of one core)"
        )


if __name__ == "__main__":
    asyncio.run(main())
