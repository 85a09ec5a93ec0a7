"""The YOLO path, with ultralytics' yolo11n at random weights (offline): that it runs, not what
it finds."""

import asyncio
import importlib.util
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sim.media import SyntheticVideo
from relay.detector import Detection, DetectorBusy, DetectorError, UltralyticsDetector

# ultralytics is installed by `make test` (scripts/install-yolo); without it this suite fails.
assert importlib.util.find_spec("ultralytics") is not None, "run scripts/install-yolo"

MODEL = "yolo11n.yaml"  # random weights: nothing to download
FRAME = SyntheticVideo(motion=[(0.0, 60.0)]).picture(10)


@pytest.fixture(scope="module")
async def detector(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UltralyticsDetector]:
    config_dir = str(tmp_path_factory.mktemp("ultralytics"))
    # conf 1e-4: random weights score ~1.6e-4, so boxes come out and their conversion runs
    yolo = UltralyticsDetector(MODEL, imgsz=320, conf=1e-4, config_dir=config_dir)
    await yolo.start()
    yield yolo
    await yolo.close()


async def test_detect_returns_detections_and_records_latency(
    detector: UltralyticsDetector,
) -> None:
    before = detector.stats()
    found = await detector.detect(FRAME)
    assert isinstance(found, list)
    assert found
    for item in found:
        assert isinstance(item, Detection)
        assert isinstance(item.label, str)
        assert 0.0 <= item.score <= 1.0
        x, y, w, h = item.box
        assert x >= -1e-6
        assert y >= -1e-6
        assert x + w <= 1 + 1e-6
        assert y + h <= 1 + 1e-6
    after = detector.stats()
    assert after.completed == before.completed + 1
    assert after.latency_p50_ms is not None
    assert after.latency_p50_ms > 0
    assert len(detector.latencies_ms()) >= 1


async def test_a_second_frame_is_refused_while_the_worker_is_busy(
    detector: UltralyticsDetector,
) -> None:
    first = asyncio.create_task(detector.detect(FRAME))
    await asyncio.sleep(0)
    assert detector.busy
    busy_before = detector.stats().busy
    with pytest.raises(DetectorBusy):
        await detector.detect(FRAME)
    await first
    assert not detector.busy
    assert detector.stats().busy == busy_before + 1


async def test_inference_does_not_block_the_event_loop(detector: UltralyticsDetector) -> None:
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - started - 0.005) * 1000)

    task = asyncio.create_task(probe())
    started = time.perf_counter()
    for _ in range(12):
        await detector.detect(FRAME)
    busy_ms = (time.perf_counter() - started) * 1000
    done.set()
    await task
    inference_ms = statistics.median(detector.latencies_ms()[-12:])
    lags.sort()
    p90 = lags[int(0.9 * len(lags))]
    # A blocked loop would wake ~once per inference, ~inference_ms late.
    assert len(lags) >= 0.4 * busy_ms / 6.0, (len(lags), busy_ms)
    assert p90 < 0.25 * inference_ms, (p90, inference_ms)


async def test_a_closed_detector_refuses_work() -> None:
    yolo = UltralyticsDetector(MODEL)
    await yolo.close()
    with pytest.raises(DetectorError):
        await yolo.detect(FRAME)


async def test_a_broken_model_file_is_a_detector_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    yolo = UltralyticsDetector(str(broken))
    try:
        with pytest.raises(DetectorError):
            await yolo.detect(FRAME)
        assert yolo.stats().failed == 1
        assert not yolo.busy
    finally:
        await yolo.close()


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"torch_threads": 0}, {"imgsz": 300}])
def test_invalid_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        UltralyticsDetector(MODEL, **kwargs)  # type: ignore[arg-type]


async def test_a_process_worker_runs_the_same_model(tmp_path: Path) -> None:
    yolo = UltralyticsDetector(MODEL, executor="process", config_dir=str(tmp_path))
    try:
        await asyncio.wait_for(yolo.start(), timeout=60)
        found = await yolo.detect(FRAME)
        assert isinstance(found, list)
        assert yolo.stats().completed == 2
        assert len(yolo.latencies_ms()) == 1
    finally:
        await yolo.close()


async def test_workers_run_in_the_idle_scheduling_class(detector: UltralyticsDetector) -> None:
    await detector.detect(FRAME)  # the worker has set itself up
    policy = detector._pool().submit(os.sched_getscheduler, 0).result(timeout=10)
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread is untouched
