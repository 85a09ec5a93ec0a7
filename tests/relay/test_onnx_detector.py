"""The ONNX Runtime detector (relay/onnx_detector.py): it finds what ultralytics on PyTorch finds
with the same weights, it works like the PyTorch detector (one job per worker, stats, close),
and a relay node runs it with torch never imported.

The models are scripts/yolo_models.py's (made by scripts/install-yolo, i.e. `make yolo`):
yolo11n-random.pt, yolo11n with seeded random weights made to find boxes with varied scores
and labels, and its ONNX export. No trained weights can be fetched here; comparing the two
runtimes needs the same weights, not good ones.
"""

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from device_sim.media import SyntheticVideo
from peer.network import use_host_addresses
from relay.detector import (
    Detection,
    DetectorBusy,
    DetectorError,
    UltralyticsDetector,
    make_detector,
)
from relay.onnx_detector import OnnxDetector, letterbox
from tests.e2e.test_live_video import Owner, onboarded_camera, simulator
from tests.e2e.test_relay import RELAY_SECRET, RelayStack
from tests.servers import ROOT, cloud_process, relay_process, stop

MODELS = Path(sys.prefix) / "models"
PT, ONNX = MODELS / "yolo11n-random.pt", MODELS / "yolo11n-random.onnx"
FIXED = MODELS / "yolo11n-random-320.onnx"  # exported with a fixed 320x320 input
# Made by `make test` (scripts/install-yolo); without them this suite fails.
for _model in (PT, ONNX, FIXED):
    assert _model.is_file(), f"no {_model}: run scripts/install-yolo {sys.prefix}"

HUD_TIME = "2026-12-01 06:00:00"


def picture(index: int) -> NDArray[np.uint8]:
    """Frame ``index`` of a 640x480 SyntheticVideo with the intruder walking, the clock it
    draws fixed: random weights answer to every pixel, so the same frame every run."""
    with mock.patch("time.strftime", return_value=HUD_TIME):
        return SyntheticVideo(motion=[(0.0, 60.0)]).picture(index)


FRAME = picture(50)  # ~40 boxes above 0.25 at 320 px


@pytest.fixture(scope="module")
async def detector() -> AsyncIterator[OnnxDetector]:
    onnx = OnnxDetector(str(ONNX), imgsz=320)
    await onnx.start()
    yield onnx
    await onnx.close()


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h + 1e-12)


@pytest.mark.parametrize(
    ("index", "imgsz", "conf"),
    # 12 to 120 boxes each, 9 to 30 labels (scripts/yolo_models.py's model)
    [(10, 320, 0.05), (50, 320, 0.25), (90, 320, 0.01), (10, 640, 0.5), (90, 640, 0.8)],
)
async def test_onnx_runtime_finds_what_pytorch_finds_with_the_same_weights(
    index: int, imgsz: int, conf: float, tmp_path: Path
) -> None:
    frame = picture(index)
    torch_side = UltralyticsDetector(str(PT), imgsz=imgsz, conf=conf, config_dir=str(tmp_path))
    onnx_side = OnnxDetector(str(ONNX), imgsz=imgsz, conf=conf)
    try:
        expected = await torch_side.detect(frame)
        found = await onnx_side.detect(frame)
    finally:
        await torch_side.close()
        await onnx_side.close()
    # Enough boxes, of several classes, under the 300 cap: the comparison means something.
    assert 10 <= len(expected) < 300, len(expected)
    assert len({d.label for d in expected}) >= 5
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    assert_same_detections(frame, expected, found)


def assert_same_detections(
    frame: NDArray[np.uint8], expected: list[Detection], found: list[Detection]
) -> None:
    assert len(found) == len(expected)
    height, width = frame.shape[:2]
    scale = (width, height, width, height)
    unmatched = list(found)
    for want in expected:  # best first; each matched to the same label's closest box
        same = [d for d in unmatched if d.label == want.label]
        assert same, (want, found)
        got = max(same, key=lambda d: iou(d.box, want.box))
        unmatched.remove(got)
        pixels = max(abs(g - w) * s for g, w, s in zip(got.box, want.box, scale, strict=True))
        assert pixels <= 2.0, (want, got)
        assert abs(got.score - want.score) <= 1e-3, (want, got)


async def test_a_model_with_a_fixed_input_size_runs_at_that_size_as_ultralytics_runs_it(
    tmp_path: Path,
) -> None:
    """ultralytics pads a frame to the whole square for such a model, and so must we."""
    onnx_side = OnnxDetector(str(FIXED), imgsz=640)  # the file's 320x320 wins
    try:
        found = await onnx_side.detect(FRAME)
    finally:
        await onnx_side.close()
    for name, value in (("YOLO_OFFLINE", "1"), ("YOLO_AUTOINSTALL", "false")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path))
    from ultralytics import YOLO  # the test process may import torch; the relay's may not

    result = YOLO(str(FIXED), task="detect").predict(FRAME, imgsz=320, conf=0.25, verbose=False)
    boxes = result[0].boxes
    expected = [
        Detection(result[0].names[int(k)], float(score), (cx - w / 2, cy - h / 2, w, h))
        for (cx, cy, w, h), score, k in zip(
            boxes.xywhn.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
        )
    ]
    assert len(expected) >= 3
    assert_same_detections(FRAME, expected, found)


def test_the_letterbox_keeps_the_aspect_and_pads_to_the_stride_or_the_fixed_size() -> None:
    tensor, mapping = letterbox(FRAME, 320, 32, None)  # 640x480 -> 320x240, padded to 256
    assert tensor.shape == (1, 3, 256, 320)
    assert tensor.dtype == np.float32
    assert (mapping.gain_x, mapping.gain_y, mapping.pad_x, mapping.pad_y) == (0.5, 0.5, 0, 8)
    assert np.allclose(tensor[0, :, 0, 0], 114 / 255)  # grey padding
    # RGB, in 0..1: the top-left picture pixel, channels reversed
    assert np.allclose(tensor[0, :, 8 + 1, 1], FRAME[2, 2, ::-1] / 255, atol=0.1)
    tensor, mapping = letterbox(FRAME, 320, 32, (640, 640))  # a fixed-size export
    assert tensor.shape == (1, 3, 640, 640)
    assert (mapping.gain_x, mapping.pad_x, mapping.pad_y) == (1.0, 0, 80)


async def test_detections_are_normalised_boxes_with_coco_names_and_latency_is_recorded(
    detector: OnnxDetector,
) -> None:
    before = detector.stats()
    found = await detector.detect(FRAME)
    assert found
    for item in found:
        assert isinstance(item, Detection)
        assert not item.label.isdigit()  # the names in the file's metadata
        assert 0.25 < item.score <= 1.0
        x, y, w, h = item.box
        assert x >= 0
        assert y >= 0
        assert x + w <= 1 + 1e-6
        assert y + h <= 1 + 1e-6
    after = detector.stats()
    assert after.completed == before.completed + 1
    assert after.latency_p50_ms is not None
    assert after.latency_p50_ms > 0


async def test_a_second_frame_is_refused_while_the_worker_is_busy(detector: OnnxDetector) -> None:
    first = asyncio.create_task(detector.detect(FRAME))
    await asyncio.sleep(0)
    assert detector.busy
    busy_before = detector.stats().busy
    with pytest.raises(DetectorBusy):
        await detector.detect(FRAME)
    await first
    assert not detector.busy
    assert detector.stats().busy == busy_before + 1


async def test_inference_does_not_block_the_event_loop(detector: OnnxDetector) -> None:
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - started - 0.005) * 1000)

    task = asyncio.create_task(probe())
    for _ in range(12):
        await detector.detect(FRAME)
    done.set()
    await task
    inference_ms = statistics.median(detector.latencies_ms()[-12:])
    lags.sort()
    assert lags[int(0.9 * len(lags))] < 0.25 * inference_ms, (lags, inference_ms)


async def test_workers_run_in_the_idle_scheduling_class(detector: OnnxDetector) -> None:
    await detector.detect(FRAME)
    policy = detector._pool().submit(os.sched_getscheduler, 0).result(timeout=10)
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


async def test_a_closed_detector_and_a_broken_file_are_detector_errors(tmp_path: Path) -> None:
    closed = OnnxDetector(str(ONNX))
    await closed.close()
    with pytest.raises(DetectorError):
        await closed.detect(FRAME)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    onnx = OnnxDetector(str(broken))
    try:
        with pytest.raises(DetectorError):
            await onnx.detect(FRAME)
        assert onnx.stats().failed == 1
        assert not onnx.busy
    finally:
        await onnx.close()


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"threads": 0}, {"imgsz": 300}])
def test_invalid_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        OnnxDetector(str(ONNX), **kwargs)  # type: ignore[arg-type]


def test_the_factory_picks_the_runtime_by_the_file() -> None:
    assert isinstance(make_detector(str(ONNX)), OnnxDetector)
    assert isinstance(make_detector(str(PT)), UltralyticsDetector)
    assert isinstance(make_detector("yolo11n.yaml"), UltralyticsDetector)


async def test_a_process_worker_runs_the_same_model(detector: OnnxDetector) -> None:
    onnx = OnnxDetector(str(ONNX), imgsz=detector.imgsz, executor="process")
    try:
        await asyncio.wait_for(onnx.start(), timeout=60)
        found = await onnx.detect(FRAME)
        assert found == await detector.detect(FRAME)
        assert onnx.stats().completed == 2
    finally:
        await onnx.close()


def test_the_onnx_path_imports_no_torch() -> None:
    code = (
        "import sys, asyncio\n"
        "from unittest import mock\n"
        "from device_sim.media import SyntheticVideo\n"
        "from relay.detector import make_detector\n"
        f"with mock.patch('time.strftime', return_value={HUD_TIME!r}):\n"
        "    frame = SyntheticVideo(motion=[(0.0, 60.0)]).picture(50)\n"
        f"found = asyncio.run(make_detector({str(ONNX)!r}).detect(frame))\n"
        "print(len(found), sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'ultralytics')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    count, modules = done.stdout.split(" ", 1)
    assert int(count) > 0
    assert modules.strip() == "[]"


# --- a relay node on the .onnx model ----------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayStack]:
    use_host_addresses(["127.0.0.1"])
    tmp = tmp_path_factory.mktemp("onnx-relay")
    database = "onnx_" + secrets.token_hex(4)
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": database,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
        "RELAY_SECRET": RELAY_SECRET,
    }
    with cloud_process(env, tmp / "cloud.log") as url:
        yield RelayStack(url, tmp, database, mongodb_url)


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split()) == 6}


@pytest.mark.timeout(150)
async def test_a_relay_node_runs_yolo_from_onnx_without_torch(cloud: RelayStack) -> None:
    relay_id = f"relay-onnx-{secrets.token_hex(3)}"
    env = {
        "CLOUD_URL": cloud.url,
        "RELAY_ID": relay_id,
        "RELAY_SECRET": RELAY_SECRET,
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "YOLO_MODEL": str(ONNX),
        "ANALYSIS_FPS": "5",
    }
    node = relay_process(env, cloud.tmp / f"{relay_id}.log")
    camera = None
    try:
        deadline = time.monotonic() + 60
        while relay_id not in cloud.online_relays():
            assert node.poll() is None, cloud.relay_log(relay_id)[-3000:]
            assert time.monotonic() < deadline, "the relay did not register"
            await asyncio.sleep(0.3)
        owner = await Owner.register(cloud.url)
        state = await onboarded_camera(cloud, owner, "yard")  # type: ignore[arg-type]
        device_id = json.loads(state.read_text())["device_id"]
        camera = simulator(
            "run", "--state", str(state), "--size", "640x480", "--motion", "6:8",
            log=cloud.tmp / "yard.log",
        )  # fmt: skip
        # The armed camera is analysed by the node: motion, then YOLO on the moving frames,
        # whose boxes open event threads of their own kinds (COCO names).
        kinds: set[str] = set()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=cloud.url, timeout=15) as http:
            while not ("motion" in kinds and kinds - {"motion"}):
                assert time.monotonic() < deadline, (kinds, cloud.relay_log(relay_id)[-3000:])
                await asyncio.sleep(0.5)
                r = await http.get(
                    "/api/v1/events", params={"device_id": device_id}, headers=owner.headers
                )
                assert r.status_code == 200, r.text
                kinds = {e["kind"] for e in r.json()["events"]}
        assert node.poll() is None
        files = mapped_files(node.pid)
        assert any("onnxruntime" in f for f in files), sorted(files)
        assert not [f for f in files if "torch" in f], [f for f in files if "torch" in f]
        deadline = time.monotonic() + 15  # the node logs its detector's count every 5 s
        while "detector: " not in (log := cloud.relay_log(relay_id)):
            assert time.monotonic() < deadline, log[-3000:]
            await asyncio.sleep(0.5)
        line = next(li for li in log.splitlines() if "detector: " in li)
        assert int(line.split("detector: ")[1].split()[0]) >= 1, line
    finally:
        if camera is not None:
            stop(camera)
        stop(node)
    log = cloud.relay_log(relay_id)
    assert "Traceback" not in log, log[-3000:]
    assert "torch" not in log.lower(), log[-3000:]
