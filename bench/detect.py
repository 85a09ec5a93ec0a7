"""Detection costs: motion per frame, YOLO per frame, and detection lag with 4 cameras.

    .venv/bin/python bench/detect.py [--seconds 30] [--fps 5] [--rate 8] [--imgsz 320]

1. Motion: ``MotionDetector`` (320x240 gray) on 300 pre-drawn 640x480 SyntheticVideo frames
   (half of them with the intruder walking), ms per frame including the BGR->gray
   conversion and the downscale, for MOG2 and frame differencing.
2. YOLO: ``UltralyticsDetector`` with ultralytics' yolo11n at random weights (offline; the
   cost does not depend on the weights), 25 frames back to back at 320 and at 640 px,
   inference ms as measured in the worker, and the event loop's lag meanwhile.
3. Four cameras: four SyntheticVideo sources with overlapping motion episodes, each
   analysed at ``--fps`` (out of step) on one event loop: motion on the loop, then, when it moves, a
   detection if the shared ``DetectionBudget`` (``--rate``/s) grants one and the one
   ``UltralyticsDetector`` worker is free (nothing queues). Lag is the time from a frame's
   capture to its detection result. Run once with a worker thread and once with a worker
   process, side by side, with a probe task sleeping 5 ms on the loop.
"""

import argparse
import asyncio
import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_sim.media import Picture, SyntheticVideo  # noqa: E402
from relay.budget import DetectionBudget  # noqa: E402
from relay.detector import UltralyticsDetector  # noqa: E402
from relay.events import EventThreads  # noqa: E402
from relay.motion import MotionConfig, MotionDetector  # noqa: E402

MODEL = "yolo11n.yaml"
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


async def bench_yolo(config_dir: str) -> None:
    frame = SyntheticVideo(motion=[(0.0, 60.0)]).picture(10)
    for imgsz in (320, 640):
        detector = UltralyticsDetector(MODEL, imgsz=imgsz, config_dir=config_dir)
        await detector.start()
        with LagProbe() as probe:
            for _ in range(25):
                await detector.detect(frame)
        await detector.close()
        print(
            f"  yolo11n {imgsz} px: inference {summary(detector.latencies_ms())};  "
            f"loop lag p95 {pct(probe.lags, 95):.1f} max {max(probe.lags):.1f} ms"
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=5.0, help="analysed frames/s per camera")
    parser.add_argument("--rate", type=float, default=8.0, help="detection budget, frames/s")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--executors", default="thread,process")
    args = parser.parse_args()
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line]
    print(
        f"bench/detect.py  {datetime.date.today()}  {os.cpu_count()} x "
        f"{models[0] if models else platform.processor()}  Python {platform.python_version()}"
        f"  torch {version('torch')}  ultralytics {version('ultralytics')}"
        "  (1 torch thread per worker)"
    )
    with tempfile.TemporaryDirectory() as config_dir:
        bench_motion()
        await bench_yolo(config_dir)
        for executor in args.executors.split(","):
            if executor not in ("thread", "process"):
                parser.error("executors: thread and/or process")
            await four_cameras("process" if executor == "process" else "thread", args, config_dir)


if __name__ == "__main__":
    asyncio.run(main())
