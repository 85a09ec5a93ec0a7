"""Object detection behind a small interface, and its ultralytics (YOLO) implementation.

The relay only knows :class:`Detector`: ``await detect(frame)`` gives labelled boxes.
ultralytics is AGPL-3.0, so it stays behind that interface: another runtime can replace
:class:`UltralyticsDetector` without touching the relay. :func:`make_detector` picks one by the
model file: ``.onnx`` runs on ONNX Runtime without PyTorch (relay/onnx_detector.py), anything
else through ultralytics. Both share :class:`WorkerDetector`: its workers, budget and stats.

:class:`UltralyticsDetector` never runs inference on the event loop, and never queues it:
each worker (a thread, or a process) holds its own model and at most one job, so a frame
is either analysed now or not at all (:class:`DetectorBusy`). Queueing would only make
every later result staler; the caller's next analysed frame is fresher than a queued one.

Thread or process (measured here, 2 cores, yolo11n, one torch thread per worker, a probe
sleeping 5 ms on the loop): both keep the loop's lag p95 at ~1-4 ms during back-to-back
inference at 320 and 640 px, because torch releases the GIL while it computes; the
process pays ~5 s to spawn and import torch, ~1 MB of pickling per 640x480 frame, and
its own copy of torch in memory, and gains no lower lag. So ``executor="thread"`` is the
default; ``"process"`` isolates a crash or a leak in the runtime from the relay. Either
way, ``start()`` at relay startup loads the model before traffic arrives (importing torch
in a thread still holds the GIL much of its ~3 s). Importing ultralytics changes its whole
process (ultralytics 8.4): ``cv2.setNumThreads(0)``, numpy and torch print options, and
``OMP_NUM_THREADS=1`` when unset; with the process executor that stays in the worker.
"""

import asyncio
import concurrent.futures
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from relay.motion import Box

logger = logging.getLogger(__name__)

LATENCY_WINDOW = 256  # inference latencies kept for stats


@dataclass(frozen=True)
class Detection:
    """An object found in a frame: a label (a COCO class name for YOLO), 0..1 score, box."""

    label: str
    score: float
    box: Box


class DetectorError(Exception):
    """Detection failed: the model did not load or inference raised."""


class DetectorBusy(DetectorError):
    """Every worker already has a job: skip this frame (nothing is queued)."""


class Detector(Protocol):
    """What the relay needs from an object detector."""

    async def detect(self, frame_bgr: NDArray[np.uint8]) -> list[Detection]:
        """Objects in a BGR frame; raises :class:`DetectorBusy` rather than queue the frame."""
        ...

    async def close(self) -> None:
        """Stop the workers; later ``detect`` calls raise :class:`DetectorError`."""
        ...


@dataclass(frozen=True)
class DetectorStats:
    """Counters since start, and inference latency (ms) over the last 256 jobs (a worker's
    first job, which also loads the model, is counted but not timed)."""

    completed: int
    busy: int
    failed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None


RawDetection = tuple[str, float, float, float, float, float]  # label, score, x, y, w, h (0..1)
# What a worker runs: (..., frame) -> detections and the inference ms (None: not timed).
WorkerJob = Callable[..., tuple[list[RawDetection], float | None]]

_worker = threading.local()  # the model of this worker thread (or process)


def _infer(
    model_path: str, imgsz: int, conf: float, torch_threads: int, frame: NDArray[np.uint8]
) -> tuple[list[RawDetection], float | None]:
    """Runs in a worker: loads the model on first use, then one inference.

    Returns the detections and the inference time in ms, None for a worker's first
    inference, which also builds the predictor (~2 s here) and would skew the stats.
    """
    model = getattr(_worker, "model", None)
    first = model is None
    if model is None:
        # Detection takes only CPU that nothing else wants: on a shared core, YOLO's 40 ms
        # bursts otherwise delay the relay's media and the signaling next to it
        # (bench/detect.py, part 4). sched_setscheduler(0) sets the calling thread.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        # importlib, not import statements: the relay (and mypy) work without the ~6 GB
        # install; scripts/install-yolo adds it.
        importlib.import_module("torch").set_num_threads(torch_threads)
        model = _worker.model = importlib.import_module("ultralytics").YOLO(model_path)
    started = time.perf_counter()
    results = model.predict(frame, imgsz=imgsz, conf=conf, device="cpu", verbose=False)
    elapsed_ms = (time.perf_counter() - started) * 1000
    found: list[RawDetection] = []
    for result in results:
        names = result.names
        boxes = result.boxes
        for (cx, cy, w, h), score, cls in zip(
            boxes.xywhn.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
        ):
            found.append((str(names[int(cls)]), float(score), cx - w / 2, cy - h / 2, w, h))
    return found, None if first else elapsed_ms


class WorkerDetector:
    """The workers of a detector: at most one job each, off the event loop, and their stats.

    A subclass names the job (:meth:`_job`): a module-level function, so that a process
    worker can run it, called as ``job(*args, frame)`` in the worker. ``executor``: worker
    threads (default) or processes, see the module docstring.
    """

    def __init__(
        self,
        model_path: str,
        *,
        imgsz: int,
        conf: float,
        workers: int,
        executor: Literal["thread", "process"],
    ) -> None:
        if imgsz % 32:
            raise ValueError("imgsz must be a multiple of 32")
        self.model_path = model_path
        self.imgsz = imgsz
        self.conf = conf
        self.workers = workers
        self.executor_kind = executor
        self._executor: concurrent.futures.Executor | None = None
        self._closed = False
        self._lock = threading.Lock()  # done-callbacks run in worker/management threads
        self._in_flight = 0
        self._completed = 0
        self._busy = 0
        self._failed = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def _job(self) -> tuple[WorkerJob, tuple[Any, ...]]:
        """The function a worker runs for a frame, and its arguments before the frame."""
        raise NotImplementedError

    def _before_pool(self) -> None:
        """Called once, before the first worker starts."""

    @property
    def busy(self) -> bool:
        """Whether every worker has a job: ``detect`` would raise :class:`DetectorBusy`."""
        with self._lock:
            return self._in_flight >= self.workers

    def latencies_ms(self) -> list[float]:
        """Inference latencies of the last jobs (ms, oldest first), measured in the worker."""
        with self._lock:
            return list(self._latencies)

    def stats(self) -> DetectorStats:
        """Counters and latency percentiles, for the relay's status and the benchmarks."""
        with self._lock:
            ordered = sorted(self._latencies)
            completed, busy, failed = self._completed, self._busy, self._failed

        def pick(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return DetectorStats(completed, busy, failed, pick(0.50), pick(0.95))

    async def start(self) -> None:
        """Load the model in every worker (one inference each on a blank frame)."""
        blank = np.zeros((self.imgsz, self.imgsz, 3), dtype=np.uint8)
        await asyncio.gather(*(self.detect(blank) for _ in range(self.workers)))

    async def detect(self, frame_bgr: NDArray[np.uint8]) -> list[Detection]:
        """Objects in ``frame_bgr``; :class:`DetectorBusy` when every worker is taken.

        Cancelling the caller does not stop a running inference; its worker stays taken
        until the inference ends.
        """
        if self._closed:
            raise DetectorError("the detector is closed")
        with self._lock:
            if self._in_flight >= self.workers:
                self._busy += 1
                raise DetectorBusy(f"{self.workers} inference(s) already running")
            self._in_flight += 1
        try:
            function, args = self._job()
            job = self._pool().submit(function, *args, frame_bgr)
        except BaseException:
            with self._lock:
                self._in_flight -= 1
            raise
        job.add_done_callback(self._finished)
        try:
            found, _ = await asyncio.wrap_future(job)
        except Exception as exc:
            raise DetectorError(f"inference with {self.model_path} failed: {exc}") from exc
        return [Detection(label, score, (x, y, w, h)) for label, score, x, y, w, h in found]

    async def close(self) -> None:
        """Stop the workers, letting running inferences end (in a thread: may take ~0.1 s)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    def _finished(
        self, job: "concurrent.futures.Future[tuple[list[RawDetection], float | None]]"
    ) -> None:
        with self._lock:
            self._in_flight -= 1
            if job.cancelled() or job.exception() is not None:
                self._failed += 1
                if not job.cancelled():
                    logger.warning("detector %s: inference failed", self.model_path)
            else:
                self._completed += 1
                elapsed_ms = job.result()[1]
                if elapsed_ms is not None:
                    self._latencies.append(elapsed_ms)

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is None:
            self._before_pool()
            if self.executor_kind == "process":
                # spawn, not fork: forking a process that runs an event loop and threads
                # copies locks in whatever state they are in.
                context = multiprocessing.get_context("spawn")
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=context
                )
            else:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix="detector"
                )
        return self._executor


class UltralyticsDetector(WorkerDetector):
    """YOLO through ultralytics on the CPU, off the event loop, at most one job per worker.

    ``model_path``: a ``.pt`` file, or a model ``.yaml`` such as
    ``"yolo11n.yaml"`` (random weights: exercises the pipeline and timing, finds nothing
    useful). ``imgsz``: inference size, 320 (~4x cheaper) or 640 (finds smaller objects).
    ``torch_threads`` per worker: 1 leaves the other core of a small relay to the loop and
    media. Workers run in Linux's idle scheduling class: detection never takes a core from
    anything else on the machine, and skips frames (``DetectorBusy``) when none is free.
    ultralytics reads its environment once, at import: ``YOLO_OFFLINE``,
    ``YOLO_AUTOINSTALL`` and ``YOLO_CONFIG_DIR`` (``config_dir``, default: ultralytics'
    own) are set here unless already set, so that nothing reaches for the network.
    """

    def __init__(
        self,
        model_path: str,
        *,
        imgsz: int = 320,
        conf: float = 0.25,
        workers: int = 1,
        executor: Literal["thread", "process"] = "thread",
        torch_threads: int = 1,
        config_dir: str | None = None,
    ) -> None:
        if workers < 1 or torch_threads < 1:
            raise ValueError("workers and torch_threads must be at least 1")
        super().__init__(model_path, imgsz=imgsz, conf=conf, workers=workers, executor=executor)
        self._torch_threads = torch_threads
        self._config_dir = config_dir

    def _job(self) -> tuple[WorkerJob, tuple[Any, ...]]:
        return _infer, (self.model_path, self.imgsz, self.conf, self._torch_threads)

    def _before_pool(self) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        os.environ.setdefault("YOLO_VERBOSE", "false")
        if self._config_dir is not None:
            os.makedirs(self._config_dir, exist_ok=True)
            os.environ.setdefault("YOLO_CONFIG_DIR", self._config_dir)


def make_detector(
    model_path: str, *, imgsz: int = 320, conf: float = 0.25, workers: int = 1
) -> WorkerDetector:
    """The relay's detector for ``model_path`` (``YOLO_MODEL``): a ``.onnx`` file runs on ONNX
    Runtime (no PyTorch is imported), anything else (``.pt``, ``.yaml``) through ultralytics."""
    if model_path.lower().endswith(".onnx"):
        from relay.onnx_detector import OnnxDetector

        return OnnxDetector(model_path, imgsz=imgsz, conf=conf, workers=workers)
    return UltralyticsDetector(model_path, imgsz=imgsz, conf=conf, workers=workers)
