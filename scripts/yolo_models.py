"""The YOLO models the tests and benchmarks use, made offline (run by scripts/install-yolo).

    .venv/bin/python scripts/yolo_models.py [--out DIR] [--export MODEL.pt ...]

Into DIR (default: ``models`` in the running venv, i.e. ``.venv/models``):

- ``yolo11n-random.pt``: ultralytics' yolo11n architecture with seeded random weights (no
  trained weights can be downloaded here), COCO class names, and made to find things: its
  batch-norm statistics are measured on SyntheticVideo frames (so activations keep their
  scale through the network instead of fading out) and its class head is scaled so that a
  frame gives a few dozen boxes above 0.25 with varied scores, labels and sizes. What it
  finds is nonsense, but deterministic, which is what comparing two runtimes needs.
- ``yolo11n-random.onnx``: the same weights exported by ultralytics (dynamic input size,
  simplified), for relay/onnx_detector.py; ``yolo11n-random-320.onnx``: exported with a fixed
  320x320 input instead (ultralytics' default kind of export).

``--export``: instead, export these ``.pt`` files (trained models, e.g. yolo11n.pt) to ONNX
next to them, the same way. Exporting needs torch, ultralytics, onnx and onnxslim; running the
``.onnx`` needs onnxruntime only. Idempotent: existing files are kept.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

STEM = "yolo11n-random"
SEED = 0
HUD_TIME = "2026-12-01 06:00:00"  # SyntheticVideo draws the time of day into its frames
CLASS_HEAD_GAIN = 2.0  # with the calibrated statistics: boxes above 0.25 in most frames


def export_onnx(pt: Path, fixed: int | None = None) -> Path:
    """``pt`` exported to ``<stem>.onnx`` (dynamic input size), or with ``fixed`` to
    ``<stem>-<fixed>.onnx`` (a fixed square input, as ultralytics exports by default)."""
    from ultralytics import YOLO

    onnx = pt.with_name(f"{pt.stem}-{fixed}.onnx" if fixed else f"{pt.stem}.onnx")
    if onnx.exists():
        return onnx
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / pt.name  # the export lands beside its source: not over another
        shutil.copy(pt, source)
        made = YOLO(str(source)).export(
            format="onnx", dynamic=not fixed, simplify=True, imgsz=fixed or 640, device="cpu"
        )
        shutil.move(made, onnx)
    print(f"exported {onnx} ({onnx.stat().st_size / 1e6:.1f} MB)")
    return onnx


def make_random(out: Path) -> Path:
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from device_sim.media import SyntheticVideo

    pt = out / f"{STEM}.pt"
    if pt.exists():
        return pt
    torch.manual_seed(SEED)
    model: Any = YOLO("yolo11n.yaml")
    net = model.model
    net.names = YAML.load(check_yaml("coco.yaml"))["names"]
    video = SyntheticVideo(motion=[(0.0, 60.0)])
    with mock.patch("time.strftime", return_value=HUD_TIME):  # the frames' clock: reproducible
        frames = [video.picture(i) for i in range(0, 120, 8)]
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration frames
    net.train()
    with torch.no_grad():
        for frame in frames:
            x = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
            for size in ((256, 320), (480, 640)):  # as the predictor shapes 640x480 frames
                net(torch.nn.functional.interpolate(x, size=size, mode="bilinear"))
        for branch in net.model[-1].cv3:  # the class head's last convolutions
            branch[-1].weight.mul_(CLASS_HEAD_GAIN)
    for bn in batch_norms:
        bn.momentum = 0.03
    net.eval()
    model.save(str(pt))
    print(f"made {pt} ({pt.stat().st_size / 1e6:.1f} MB)")
    return pt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(sys.prefix) / "models")
    parser.add_argument("--export", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as config_dir:
        os.environ.setdefault("YOLO_CONFIG_DIR", config_dir)
        for pt in args.export:
            export_onnx(pt)
        if not args.export:
            random = make_random(args.out)
            export_onnx(random)
            export_onnx(random, fixed=320)


if __name__ == "__main__":
    main()
