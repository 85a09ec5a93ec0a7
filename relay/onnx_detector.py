"""YOLO on ONNX Runtime: the relay's object detection without PyTorch.

The model is a YOLO11 detector exported once by ultralytics
(``yolo export model=yolo11n.pt format=onnx dynamic=True``; ``scripts/yolo_models.py`` makes
the one the tests use). Everything around the network is done here in numpy and OpenCV, the
way ultralytics' predictor does it, so that both runtimes find the same boxes in the same
frame (tests/relay/test_onnx_detector.py compares them):

- pre-processing: letterbox (scale to fit ``imgsz``, pad with grey 114 to a multiple of the
  stride, centred; a model exported with a fixed input size is padded to that size instead),
  BGR to RGB, HWC to CHW, float32 in 0..1;
- post-processing of the output ``[1, 4 + classes, anchors]`` (cx, cy, w, h in input pixels,
  then one sigmoid score per class): each anchor's best class, above ``conf``, class-aware
  NMS at IoU 0.7 (``cv2.dnn.NMSBoxesBatched``), at most 300 boxes, mapped back through the
  letterbox and clipped to the frame;
- class names from the ``names`` entry ultralytics writes into the file's metadata.

Nothing on this path imports torch (a test runs a relay node on an ``.onnx`` model and checks
that no libtorch is mapped into it). Workers, budget and stats are :class:`WorkerDetector`'s,
as for ultralytics; each worker holds its own session with ``threads`` intra-op threads (1:
the session computes in the worker thread itself, which runs in the idle scheduling class).
"""

import ast
import importlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from relay.detector import RawDetection, WorkerDetector, WorkerJob

IOU = 0.7  # ultralytics' predict default
MAX_DET = 300
PAD_VALUE = 114

_worker = threading.local()  # the model of this worker thread (or process)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the network's input: scale, then padding (pixels)."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


def letterbox(
    frame_bgr: NDArray[np.uint8], imgsz: int, stride: int, fixed: tuple[int, int] | None
) -> tuple[NDArray[np.float32], Letterbox]:
    """The network input (1, 3, H, W) float32 RGB 0..1 for a BGR frame, and the mapping.

    ``fixed``: the model's (height, width) when it was exported with a fixed input size;
    None: ``imgsz`` with the padding cut to a multiple of ``stride`` (ultralytics' "rect").
    """
    h0, w0 = frame_bgr.shape[:2]
    target_h, target_w = fixed or (imgsz, imgsz)
    r = min(target_h / h0, target_w / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = float(target_w - new_w), float(target_h - new_h)
    if fixed is None:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    image: NDArray[Any] = frame_bgr
    if (w0, h0) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    tensor = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
    tensor /= 255.0
    # The mapping back, as ultralytics' scale_boxes computes it from the two shapes.
    in_h, in_w = image.shape[:2]
    gain = min(in_h / h0, in_w / w0)
    scaled_h, scaled_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    mapping = Letterbox(
        gain_x=scaled_w / w0,
        gain_y=scaled_h / h0,
        pad_x=round((in_w - scaled_w) / 2 - 0.1),
        pad_y=round((in_h - scaled_h) / 2 - 0.1),
    )
    return tensor, mapping


def decode(
    output: NDArray[np.float32],
    mapping: Letterbox,
    frame_shape: tuple[int, ...],
    conf: float,
    names: dict[int, str],
) -> list[RawDetection]:
    """Detections from a YOLO11 output ``[1, 4 + classes, anchors]``, boxes normalised to the
    frame (x, y of the top-left corner, w, h), best score first."""
    if output.ndim != 3 or output.shape[0] != 1 or output.shape[1] <= 4:
        raise ValueError(
            f"expected a YOLO11 detection output [1, 4 + classes, N], got {output.shape}"
        )
    rows = output[0].T  # (anchors, 4 + classes)
    class_scores = rows[:, 4:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), classes]
    keep = scores > conf
    if not keep.any():
        return []
    rows, classes, scores = rows[keep], classes[keep], scores[keep]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    x1, y1 = cx - w / 2, cy - h / 2
    # NMSBoxesBatched offsets each class's boxes apart, as ultralytics does (class-aware NMS).
    chosen = cv2.dnn.NMSBoxesBatched(
        np.stack([x1, y1, w, h], axis=1).astype(np.float64).tolist(),
        scores.astype(np.float64).tolist(),
        classes.astype(np.int32).tolist(),
        conf,
        IOU,
    )
    order = np.asarray(chosen, dtype=np.int64).reshape(-1)[:MAX_DET]
    h0, w0 = frame_shape[:2]
    found: list[RawDetection] = []
    for i in order.tolist():
        left = (float(x1[i]) - mapping.pad_x) / mapping.gain_x
        top = (float(y1[i]) - mapping.pad_y) / mapping.gain_y
        right = (float(x1[i] + w[i]) - mapping.pad_x) / mapping.gain_x
        bottom = (float(y1[i] + h[i]) - mapping.pad_y) / mapping.gain_y
        left, right = min(max(left, 0.0), w0), min(max(right, 0.0), w0)
        top, bottom = min(max(top, 0.0), h0), min(max(bottom, 0.0), h0)
        label = names.get(int(classes[i]), str(int(classes[i])))
        found.append(
            (label, float(scores[i]), left / w0, top / h0, (right - left) / w0, (bottom - top) / h0)
        )
    return found


class OnnxModel:
    """One ONNX Runtime session on a YOLO model, with what its metadata says."""

    def __init__(self, model_path: str, threads: int = 1) -> None:
        # importlib: onnxruntime ships no type information; the session is typed Any here.
        ort: Any = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle threads sleep instead of spinning: the relay's media shares the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta: dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        self.names: dict[int, str] = {
            int(k): str(v) for k, v in ast.literal_eval(meta.get("names", "{}")).items()
        }
        self.stride = int(meta.get("stride", "32"))
        graph_input = self.session.get_inputs()[0]
        self.input_name: str = graph_input.name
        height, width = graph_input.shape[2:4]
        # A dynamic axis is named (a str), a fixed one is an int.
        both = isinstance(height, int) and isinstance(width, int)
        self.fixed: tuple[int, int] | None = (height, width) if both else None

    def detect(self, frame_bgr: NDArray[np.uint8], imgsz: int, conf: float) -> list[RawDetection]:
        tensor, mapping = letterbox(frame_bgr, imgsz, self.stride, self.fixed)
        (output, *_) = self.session.run(None, {self.input_name: tensor})
        return decode(output, mapping, frame_bgr.shape, conf, self.names)


def _infer_onnx(
    model_path: str, imgsz: int, conf: float, threads: int, frame: NDArray[np.uint8]
) -> tuple[list[RawDetection], float | None]:
    """Runs in a worker: opens the session on first use, then one detection, timed from the
    frame to the boxes (as ultralytics' predict is timed). The first is not timed."""
    model: OnnxModel | None = getattr(_worker, "model", None)
    first = model is None
    if model is None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # see relay/detector.py
        model = _worker.model = OnnxModel(model_path, threads)
    started = time.perf_counter()
    found = model.detect(frame, imgsz, conf)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return found, None if first else elapsed_ms


class OnnxDetector(WorkerDetector):
    """YOLO from a ``.onnx`` file on ONNX Runtime's CPU provider, off the event loop, at most
    one job per worker (``DetectorBusy`` otherwise), workers in the idle scheduling class.

    ``imgsz``: inference size for a model exported with dynamic axes (320 or 640); a model
    with a fixed input size is always run at that size. ``threads``: intra-op threads per
    worker.
    """

    def __init__(
        self,
        model_path: str,
        *,
        imgsz: int = 320,
        conf: float = 0.25,
        workers: int = 1,
        executor: Literal["thread", "process"] = "thread",
        threads: int = 1,
    ) -> None:
        if workers < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        super().__init__(model_path, imgsz=imgsz, conf=conf, workers=workers, executor=executor)
        self._threads = threads

    def _job(self) -> tuple[WorkerJob, tuple[Any, ...]]:
        return _infer_onnx, (self.model_path, self.imgsz, self.conf, self._threads)
