"""Motion detection on a downscaled gray picture: the cheap gate in front of YOLO.

A :class:`MotionDetector` is fed one analysed frame at a time (a few per second per camera,
not every decoded frame) and answers whether something moves, how much, and where. Each
frame is shrunk to the analysis size (320x240 by default), made gray and blurred, then
compared with a background: OpenCV's MOG2 model (``method="mog2"``: learns a per-pixel
distribution, so the whole moving object shows and slow lighting drifts are absorbed) or
the previous analysed frame (``method="diff"``: only the parts that changed between two
frames show, so a uniform object shows as its leading and trailing edges). A whole
``update`` of a 640x480 BGR frame costs ~1.9 ms with MOG2 and ~0.9 ms with diff here
(bench/detect.py), the background models themselves ~1.1 and ~0.3 ms. Changed pixels
outside the zones or inside the masks are dropped; small specks are removed by a
morphological opening.

``moving`` needs one connected changed region of at least ``min_area`` of the picture: that
is what keeps an on-screen clock or frame counter (a camera's OSD; device_sim's
``SyntheticVideo.hud_box``, which changes every frame but only by a few digits, ~0.04 % of
the picture) from counting, with no mask needed. A change over more than ``max_area`` of the
watched area is a scene change (lights switched on, the IR filter flipping, the camera
moved), not motion: the background restarts from that frame. So does a gap of more than
``reset_after_s`` between frames, where the old background would no longer match.

Not thread-safe; one detector per camera. ``update`` is CPU-bound for ~1 ms: cheap enough
for the event loop at a few fps per camera, or batch several cameras in one worker thread.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from cv2.typing import MatLike
from numpy.typing import NDArray

Box = tuple[float, float, float, float]
"""``(x, y, w, h)`` of a rectangle, as fractions (0..1) of the picture's width and height."""

Polygon = Sequence[tuple[float, float]]
"""Points ``(x, y)`` as fractions (0..1) of the picture's width and height."""

Frame = NDArray[np.uint8]


@dataclass(frozen=True)
class MotionConfig:
    """How a camera's motion is detected; defaults suit a 640x480 stream analysed at ~5 fps.

    ``sensitivity`` (0..1, higher finds fainter changes) sets the per-pixel threshold: a gray
    level difference of ``10 + 40 * (1 - sensitivity)`` for ``diff``, a squared Mahalanobis
    distance of ``4 + 28 * (1 - sensitivity)`` for MOG2 (OpenCV's default 16 at ~0.57).
    ``min_area`` and ``max_area`` are fractions of the picture. ``zones`` are the polygons
    where motion counts (empty: the whole picture); ``masks`` are polygons to ignore, applied
    after the zones. ``size`` is the analysis picture (width, height).
    """

    sensitivity: float = 0.5
    min_area: float = 0.005
    max_area: float = 0.6
    zones: Sequence[Polygon] = field(default_factory=tuple)
    masks: Sequence[Polygon] = field(default_factory=tuple)
    size: tuple[int, int] = (320, 240)
    method: Literal["mog2", "diff"] = "mog2"
    history: int = 200
    reset_after_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sensitivity <= 1.0:
            raise ValueError("sensitivity must be in [0, 1]")
        if not 0.0 < self.min_area < self.max_area <= 1.0:
            raise ValueError("need 0 < min_area < max_area <= 1")
        if self.size[0] < 16 or self.size[1] < 16:
            raise ValueError("the analysis size must be at least 16x16")
        if self.method not in ("mog2", "diff"):
            raise ValueError("method must be 'mog2' or 'diff'")
        for polygon in (*self.zones, *self.masks):
            if len(polygon) < 3:
                raise ValueError("a zone or mask polygon needs at least 3 points")


@dataclass(frozen=True)
class MotionResult:
    """One analysed frame: ``score`` is the changed fraction of the watched area (0..1);
    ``box`` bounds the regions of at least a quarter of ``min_area`` (``None`` when still)."""

    moving: bool
    score: float
    box: Box | None


STILL = MotionResult(moving=False, score=0.0, box=None)


class MotionDetector:
    """Per-camera motion detector; see the module docstring for the method and its limits."""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        width, height = config.size
        self._area = width * height
        self._watched = self._watched_mask(config)
        self._watched_pixels = max(1, int(np.count_nonzero(self._watched)))
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._threshold = 10.0 + 40.0 * (1.0 - config.sensitivity)
        self._var_threshold = 4.0 + 28.0 * (1.0 - config.sensitivity)
        self._last_t: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the background; the next frame starts a new one (and reports no motion)."""
        self._previous: MatLike | None = None
        self._mog2: cv2.BackgroundSubtractorMOG2 | None = None

    def update(self, frame: Frame, t: float) -> MotionResult:
        """Analyse one frame (BGR ``HxWx3`` or gray ``HxW``, any size) taken at ``t`` seconds."""
        if self._last_t is not None and t - self._last_t > self.config.reset_after_s:
            self.reset()
        self._last_t = t
        gray = self._prepare(frame)
        changed = self._changed(gray)
        if changed is None:
            return STILL
        changed = cv2.bitwise_and(changed, self._watched)
        changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, self._kernel)
        score = float(np.count_nonzero(changed)) / self._watched_pixels
        if score > self.config.max_area:
            self.reset()  # a scene change: learn the new picture from this frame on
            self._changed(gray)
            return STILL
        return self._regions(changed, score)

    def _prepare(self, frame: Frame) -> MatLike:
        gray: MatLike = frame
        if frame.ndim == 3:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        elif frame.ndim != 2:
            raise ValueError("expected a BGR (HxWx3) or gray (HxW) picture")
        if (gray.shape[1], gray.shape[0]) != self.config.size:
            gray = cv2.resize(gray, self.config.size, interpolation=cv2.INTER_AREA)
        # Blur: sensor and compression noise would otherwise pass the threshold everywhere.
        return cv2.GaussianBlur(gray, (5, 5), 0)

    def _changed(self, gray: MatLike) -> MatLike | None:
        """The changed pixels (255) against the background, or None while it is being learned."""
        if self.config.method == "diff":
            previous, self._previous = self._previous, gray
            if previous is None:
                return None
            _, changed = cv2.threshold(
                cv2.absdiff(gray, previous), self._threshold, 255, cv2.THRESH_BINARY
            )
            return changed
        first = self._mog2 is None
        if self._mog2 is None:
            self._mog2 = cv2.createBackgroundSubtractorMOG2(
                history=self.config.history,
                varThreshold=self._var_threshold,
                detectShadows=False,  # cheaper, and shadows would need a second threshold
            )
        changed = self._mog2.apply(gray)
        return None if first else changed  # the first frame is all foreground

    def _regions(self, changed: MatLike, score: float) -> MotionResult:
        count, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
        areas = stats[1:count, cv2.CC_STAT_AREA]
        if areas.size == 0:
            return MotionResult(moving=False, score=score, box=None)
        moving = bool(areas.max() >= self.config.min_area * self._area)
        kept = stats[1:count][areas >= self.config.min_area * self._area / 4]
        if kept.size == 0:
            return MotionResult(moving=moving, score=score, box=None)
        x0 = int(kept[:, cv2.CC_STAT_LEFT].min())
        y0 = int(kept[:, cv2.CC_STAT_TOP].min())
        x1 = int((kept[:, cv2.CC_STAT_LEFT] + kept[:, cv2.CC_STAT_WIDTH]).max())
        y1 = int((kept[:, cv2.CC_STAT_TOP] + kept[:, cv2.CC_STAT_HEIGHT]).max())
        width, height = self.config.size
        box = (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)
        return MotionResult(moving=moving, score=score, box=box)

    @staticmethod
    def _watched_mask(config: MotionConfig) -> Frame:
        width, height = config.size

        def pixels(polygon: Polygon) -> NDArray[np.int32]:
            points = [(round(x * (width - 1)), round(y * (height - 1))) for x, y in polygon]
            return np.array(points, dtype=np.int32)

        watched = np.zeros((height, width), dtype=np.uint8)
        if config.zones:
            cv2.fillPoly(watched, [pixels(p) for p in config.zones], 255)
        else:
            watched[:] = 255
        if config.masks:
            cv2.fillPoly(watched, [pixels(p) for p in config.masks], 0)
        return watched
