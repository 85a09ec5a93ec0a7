"""Event threads of one camera: analysed frames in, ``new``/``update``/``end`` records out.

docs/protocol.md ("Events"): one thread per continuous activity, so that an app updates one
notification instead of posting many. Each kind of activity has its own thread: ``motion``
from the motion detector, and one per detection kind (a COCO label, with car, truck, bus
and motorcycle reported as ``vehicle``), so a person thread may open while a motion
thread is open. Several objects of one kind in a frame are one activity: the thread
carries the best-scoring one.

For each kind, per analysed frame that observed it (motion results always; a detection
kind only on frames that went through the detector, since ``detections=None`` means "not
looked at", not "absent"):

- ``new`` once ``confirm_hits`` of the last ``confirm_window`` observations were hits
  (one stray frame opens nothing); ``started_at`` is the first of those hits;
- ``update`` on a hit when the score beats the best snapshot so far by ``snapshot_gain``
  (relative), with a snapshot, or every ``update_every_s`` as a heartbeat; never two
  updates within ``min_update_gap_s``;
- ``end`` once no hit came for ``quiet_s``; ``ended_at`` is the last hit, and the score the
  thread's peak.

Pure: no clock (``t`` is passed in; wall-clock seconds, since records carry it as
``started_at``/``ended_at``), no I/O; thread ids come from ``new_id``. The caller attaches
a JPEG (``snapshot_jpeg``, in a worker thread) when a record says ``snapshot``.
"""

import base64
import re
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from protocol.events import EventReport
from relay.detector import Detection
from relay.motion import Box, MotionResult

VEHICLES = frozenset({"car", "truck", "bus", "motorcycle"})


def event_kind(label: str) -> str:
    """The event kind for a detector label: ``vehicle`` for road vehicles, else the label.

    Kinds follow the contract's pattern (lower case, digits, space, ``_``, ``-``; 32 at
    most, starting with a letter); a model whose labels do not (a randomly initialised one
    names its classes "0".."79") gets them mapped to ``class-<label>``.
    """
    if label in VEHICLES:
        return "vehicle"
    kind = re.sub(r"[^a-z0-9 _-]", "_", label.strip().lower())[:32]
    if not kind or not kind[0].isalpha():
        kind = f"class-{kind}"[:32]
    return kind


@dataclass(frozen=True)
class EventConfig:
    """Timing of event threads; ``kinds`` limits the kinds that open threads (None: all)."""

    confirm_hits: int = 2
    confirm_window: int = 3
    quiet_s: float = 3.0
    update_every_s: float = 10.0
    min_update_gap_s: float = 1.0
    snapshot_gain: float = 0.2
    min_detection_score: float = 0.4
    kinds: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.confirm_hits <= self.confirm_window:
            raise ValueError("need 1 <= confirm_hits <= confirm_window")


@dataclass(frozen=True)
class EventRecord:
    """One state change of a thread; ``snapshot``: attach a JPEG of the frame to it."""

    kind: str
    state: Literal["new", "update", "end"]
    thread_id: str
    score: float
    box: Box | None
    started_at: float
    ended_at: float | None
    snapshot: bool

    def as_dict(self) -> dict[str, object]:
        """The record's wire fields (times in seconds); ``box`` and ``ended_at`` may be None."""
        box = None if self.box is None else list(self.box)
        return {
            "kind": self.kind,
            "state": self.state,
            "thread_id": self.thread_id,
            "score": self.score,
            "box": box,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }

    def to_report(self, device_id: str, snapshot_jpeg: bytes | None = None) -> EventReport:
        """The ``POST /relays/events`` body for this record (times as UTC datetimes)."""

        def when(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, UTC)

        box = None if self.box is None else [min(1.0, max(0.0, v)) for v in self.box]
        snapshot = None if snapshot_jpeg is None else base64.b64encode(snapshot_jpeg).decode()
        return EventReport(
            device_id=device_id,
            thread_id=self.thread_id,
            kind=self.kind,
            state=self.state,
            score=min(1.0, max(0.0, self.score)),
            box=box,
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            ended_at=when(self.ended_at),
            snapshot_jpeg=snapshot,
        )


@dataclass
class _Track:
    hits: deque[tuple[float, bool]]
    thread_id: str | None = None
    started_at: float = 0.0
    last_hit: float = 0.0
    last_update: float = 0.0
    snapshot_score: float = 0.0
    peak: float = 0.0
    box: Box | None = None


class EventThreads:
    """The event threads of one camera (see the module docstring); not thread-safe.

    Call ``update`` for every analysed frame, and ``update(t, None)`` as a tick when no frame
    is analysed for a while (the stream stalled): threads only end inside ``update``.
    """

    def __init__(
        self, config: EventConfig | None = None, *, new_id: Callable[[], str] | None = None
    ) -> None:
        self.config = config or EventConfig()
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._tracks: dict[str, _Track] = {}

    @property
    def open_threads(self) -> dict[str, str]:
        """Thread id of each kind that has an open thread."""
        return {k: t.thread_id for k, t in self._tracks.items() if t.thread_id is not None}

    def update(
        self, t: float, motion: MotionResult | None, detections: Sequence[Detection] | None = None
    ) -> list[EventRecord]:
        """Feed one analysed frame taken at ``t``; returns the records it causes."""
        seen: dict[str, tuple[float, Box | None]] = {}
        observed: set[str] = set()
        if motion is not None:
            observed.add("motion")
            if motion.moving:
                seen["motion"] = (motion.score, motion.box)
        if detections is not None:
            observed.update(k for k in self._tracks if k != "motion")
            for found in detections:
                if found.score < self.config.min_detection_score:
                    continue
                kind = event_kind(found.label)
                observed.add(kind)
                if kind not in seen or found.score > seen[kind][0]:
                    seen[kind] = (found.score, found.box)
        records: list[EventRecord] = []
        for kind in sorted(observed):
            if self.config.kinds is not None and kind not in self.config.kinds:
                continue
            record = self._observe(kind, t, seen.get(kind))
            if record is not None:
                records.append(record)
        records.extend(self._expire(t))
        return records

    def end_all(self, t: float) -> list[EventRecord]:
        """End every open thread now (the camera went away); forgets all state."""
        records = [self._end(kind, track) for kind, track in sorted(self._tracks.items())]
        self._tracks.clear()
        return [r for r in records if r is not None]

    def _observe(
        self, kind: str, t: float, hit: tuple[float, Box | None] | None
    ) -> EventRecord | None:
        track = self._tracks.get(kind)
        if track is None:
            if hit is None:
                return None
            track = self._tracks[kind] = _Track(hits=deque(maxlen=self.config.confirm_window))
        track.hits.append((t, hit is not None))
        if hit is None:
            return None
        score, box = hit
        track.last_hit, track.box = t, box
        if track.thread_id is None:
            hits = [at for at, was_hit in track.hits if was_hit]
            if len(hits) < self.config.confirm_hits:
                return None
            track.thread_id, track.started_at = self._new_id(), hits[0]
            track.last_update, track.snapshot_score, track.peak = t, score, score
            return self._record(kind, track, "new", score, snapshot=True)
        track.peak = max(track.peak, score)
        if t - track.last_update < self.config.min_update_gap_s:
            return None
        better = score >= track.snapshot_score * (1.0 + self.config.snapshot_gain)
        if not better and t - track.last_update < self.config.update_every_s:
            return None
        track.last_update = t
        if better:
            track.snapshot_score = score
        return self._record(kind, track, "update", score, snapshot=better)

    def _expire(self, t: float) -> list[EventRecord]:
        records = []
        for kind, track in list(self._tracks.items()):
            if t - track.last_hit >= self.config.quiet_s:
                del self._tracks[kind]
                record = self._end(kind, track)
                if record is not None:
                    records.append(record)
        return records

    def _end(self, kind: str, track: _Track) -> EventRecord | None:
        if track.thread_id is None:
            return None
        return self._record(kind, track, "end", track.peak, snapshot=False, ended=track.last_hit)

    @staticmethod
    def _record(
        kind: str,
        track: _Track,
        state: Literal["new", "update", "end"],
        score: float,
        *,
        snapshot: bool,
        ended: float | None = None,
    ) -> EventRecord:
        assert track.thread_id is not None
        return EventRecord(
            kind, state, track.thread_id, score, track.box, track.started_at, ended, snapshot
        )


def snapshot_jpeg(frame_bgr: NDArray[np.uint8], max_width: int = 480, quality: int = 70) -> bytes:
    """A JPEG of the frame, scaled down to ``max_width`` (CPU-bound: call it in a thread)."""
    height, width = frame_bgr.shape[:2]
    image = frame_bgr
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        image = np.asarray(cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(encoded)
