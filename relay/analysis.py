"""What a relay node makes of the cameras it watches: motion on every sampled frame, YOLO
(off the event loop) only while there is motion and the node's detection budget allows it,
event threads reported to the cloud (``POST /relays/events``), and a clip of each thread
(:mod:`relay.clips`: from the camera's pre-roll to the thread's end plus a post-roll, the
camera's own packets) uploaded while the thread runs
(``PUT /relays/devices/{id}/clips/{thread_id}``)."""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from av import Packet, VideoFrame
from numpy.typing import NDArray

from protocol.messages import RecordingOrder
from relay import metrics
from relay.budget import DetectionBudget
from relay.clips import ClipRecorder, ClipSettings, PreRoll, UploadRefused
from relay.detector import Detector, DetectorError
from relay.events import EventRecord, EventThreads, snapshot_jpeg
from relay.media import Fanout
from relay.motion import STILL, MotionConfig, MotionDetector
from relay.remux import CLOCK_RATE, ClipError
from relay.reports import ReportBuffer
from relay.settings import RelaySettings

log = logging.getLogger(__name__)


def bgr(frame: VideoFrame) -> NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)


class Analysis:
    """The node's analysis of every camera it watches; ``stats`` counts frames and events.

    ``http`` is the node's client to the cloud, set while the node runs; event reports go
    through ``reports`` (:mod:`relay.reports`: kept and retried until the cloud takes them,
    in order per thread), so a slow or absent cloud never stalls the frames.
    """

    def __init__(
        self,
        settings: RelaySettings,
        detector: Detector | None,
        stats: dict[str, int],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.budget = DetectionBudget(settings.detections_per_s)
        self.stats = stats
        self.http: httpx.AsyncClient | None = None
        self._spawn = spawn
        self.reports = ReportBuffer(self._post_report, stats)
        self._clips: dict[str, Clips] = {}  # by device, while watched
        self._recordings: set[str] = set()  # ids of the recordings taken here
        self._waiting: dict[str, list[RecordingOrder]] = {}  # by device, until it is watched

    def record(self, device: str, order: RecordingOrder) -> None:
        """Record the camera as the owner asked (once per order, however often it is sent);
        a camera not watched yet starts it as soon as it is."""
        if order.id in self._recordings:
            return
        self._recordings.add(order.id)
        clips = self._clips.get(device)
        if clips is None:
            self._waiting.setdefault(device, []).append(order)
        else:
            clips.record(order)

    async def motion_config(self, device_id: str) -> MotionConfig:
        """The camera's motion settings from the cloud (defaults if they cannot be read)."""
        assert self.http is not None
        try:
            response = await self.http.get(f"/api/v1/relays/devices/{device_id}")
            response.raise_for_status()
            settings = response.json()["motion"]
            return MotionConfig(
                sensitivity=settings["sensitivity"],
                min_area=settings["min_area"],
                zones=[[(x, y) for x, y in polygon] for polygon in settings["zones"]],
                masks=[[(x, y) for x, y in polygon] for polygon in settings["masks"]],
            )
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "relay: motion settings of %s unavailable (%s); using defaults", device_id, exc
            )
            return MotionConfig()

    async def watch(self, device: str, fanout: Fanout, armed: Callable[[], bool]) -> None:
        """Analyse one camera's picture until its fan-out closes; events only while
        ``armed()`` (a camera watched for a viewer or a recording alone gives none)."""
        clips = self._clips[device] = Clips(device, fanout, self.settings.clips, self._upload_clip)
        for order in self._waiting.pop(device, []):
            clips.record(order)
        motion = MotionDetector(await self.motion_config(device))
        threads = EventThreads()
        try:
            async for frame in fanout.frames(self.settings.analysis_fps):
                t = time.time()
                picture: NDArray[np.uint8] = await asyncio.to_thread(bgr, frame)
                moved = motion.update(picture, t)
                if not armed():
                    moved = STILL  # open threads end after their quiet time
                self.stats["frames_analysed"] += 1
                metrics.FRAMES_ANALYSED.inc()
                detections = None
                if moved.moving and self.detector is not None:
                    if self.budget.try_acquire(device, time.monotonic()):
                        try:
                            detections = await self.detector.detect(picture)
                        except DetectorError:
                            detections = None  # busy: the next frame will do
                        else:
                            metrics.DETECTIONS.inc()
                            metrics.DETECTED_OBJECTS.inc(len(detections))
                    else:
                        metrics.BUDGET_REFUSALS.inc()
                for record in threads.update(t, moved, detections):
                    clips.follow(record)
                    jpeg = (
                        await asyncio.to_thread(snapshot_jpeg, picture) if record.snapshot else None
                    )
                    self.reports.put(
                        record.to_report(device, jpeg).model_dump(mode="json", exclude_none=True)
                    )
        finally:
            for record in threads.end_all(time.time()):
                self.reports.put(
                    record.to_report(device).model_dump(mode="json", exclude_none=True)
                )
            await clips.close()
            if self._clips.get(device) is clips:
                del self._clips[device]

    async def _upload_clip(self, clip: "ClipUpload", data: bytes, final: bool, kind: str) -> None:
        """Store the clip so far (it replaces the previous upload); raises on failure, so
        that the recorder tries again with the next one (UploadRefused: not worth it)."""
        assert self.http is not None
        params = {
            "final": "true" if final else "false",
            "started_at": datetime.fromtimestamp(clip.started_at, UTC).isoformat(),
        }
        if clip.duration_s is not None:
            params["duration_s"] = f"{clip.duration_s:.3f}"
        response = await self.http.put(
            clip.path,
            params=params,
            content=data,
            headers={"Content-Type": kind},
        )
        status = response.status_code
        if status >= 300:
            problem = f"clip refused ({status}): {response.text[:200]}"
            if 400 <= status < 500 and status not in (408, 425, 429):
                raise UploadRefused(problem)  # trying again cannot help
            raise ClipError(problem)
        self.stats["clip_uploads"] = self.stats.get("clip_uploads", 0) + 1

    async def snapshot(self, request_id: str, fanout: Fanout | None) -> None:
        """Upload a JPEG of the latest decoded frame a snapshot request asked for (nothing
        when there is none yet: the one waiting gives up after its deadline)."""
        frame = fanout.latest_frame if fanout is not None else None
        if frame is None or self.http is None:
            log.warning("relay: snapshot %s asked before any picture", request_id)
            return
        jpeg = await asyncio.to_thread(
            lambda: snapshot_jpeg(bgr(frame), max_width=frame.width, quality=85)
        )
        try:
            response = await self.http.put(
                f"/api/v1/relays/snapshots/{request_id}",
                content=jpeg,
                headers={"Content-Type": "image/jpeg"},
            )
        except httpx.HTTPError as exc:
            log.warning("relay: snapshot %s upload failed: %s", request_id, exc)
            return
        if response.status_code != 204:
            log.warning("relay: snapshot %s refused (%s)", request_id, response.status_code)

    async def report(self, body: dict[str, Any]) -> bool:
        """Report an event and wait until the cloud took it (True) or refused it; it is
        retried meanwhile (the analysis of an uploaded file goes on once it is reported)."""
        return await self.reports.put(body)

    async def _post_report(self, body: dict[str, Any], key: str) -> httpx.Response:
        if self.http is None:
            raise httpx.TransportError("the node is not connected to the cloud yet")
        return await self.http.post(
            "/api/v1/relays/events", json=body, headers={"Idempotency-Key": key}
        )


@dataclass(frozen=True)
class ClipUpload:
    """Where an upload goes (an event clip's or a recording's path on the cloud), the
    wall-clock time of its first frame, and (on the final upload) its duration."""

    path: str
    started_at: float
    duration_s: float | None


UploadClip = Callable[[ClipUpload, bytes, bool, str], Awaitable[None]]


class Clips:
    """One camera's pre-roll, and what is cut from it: the clips of its open event threads
    and the recordings the owner asked for.

    The fan-out hands every packet to the pre-roll and to each recorder. A thread's ``new``
    starts its clip from the pre-roll (``pre_roll_s`` before the thread's first hit), its
    ``end`` lets the clip take its post-roll and finish. A recording starts from the
    pre-roll too (what the node holds of the seconds before it was asked for) and ends at its
    ``until``. Event times are wall clock and packets carry the camera's ``pts``: the newest
    packet's arrival links the two.
    """

    def __init__(
        self, device: str, fanout: Fanout, settings: ClipSettings, upload: UploadClip
    ) -> None:
        self.device = device
        self.fanout = fanout
        self.settings = settings
        self.preroll = PreRoll(settings.pre_roll_s)
        self.recorders: dict[str, ClipRecorder] = {}  # by upload path
        self._orders: list[RecordingOrder] = []  # recordings waiting for the first packet
        self._upload = upload
        self._newest: tuple[int, float] | None = None  # (pts, time.time() it arrived)
        self._stop_listening = fanout.add_listener(self._packet)

    def _packet(self, packet: "Packet[Any]", keyframe: bool) -> None:
        self._newest = (packet.pts or 0, time.time())
        self.preroll.add(packet, keyframe)
        for recorder in self.recorders.values():
            recorder.add(packet, keyframe)
        if self._orders and keyframe:
            orders, self._orders = self._orders, []
            for order in orders:
                self.record(order)

    def _pts_at(self, t: float) -> int | None:
        if self._newest is None:
            return None
        pts, at = self._newest
        return pts - round((at - t) * CLOCK_RATE)

    def _time_at(self, pts: int) -> float:
        newest_pts, at = self._newest or (pts, time.time())
        return at - (newest_pts - pts) / CLOCK_RATE

    def _start(
        self, path: str, start: float, settings: ClipSettings, name: str
    ) -> ClipRecorder | None:
        """A recorder from ``pre_roll_s`` before wall-clock ``start``, uploading to ``path``."""
        codec = self.fanout.codec
        if codec is None:
            return None
        self._forget_done()
        start_pts = self._pts_at(start)
        first = self.preroll.since((start_pts or 0) - round(settings.pre_roll_s * CLOCK_RATE))
        started_at = self._time_at(first[0][0].pts or 0) if first else start

        async def upload(data: bytes, final: bool, kind: str) -> None:
            recorder = self.recorders.get(path)
            duration = recorder.muxer.duration_s if recorder is not None and final else None
            await self._upload(ClipUpload(path, started_at, duration), data, final, kind)

        recorder = ClipRecorder(
            codec, self.preroll, upload, start_pts=start_pts, settings=settings, name=name
        )
        self.recorders[path] = recorder
        return recorder

    def follow(self, record: EventRecord) -> None:
        """Start, or end, the clip of ``record``'s thread."""
        path = f"/api/v1/relays/devices/{self.device}/clips/{record.thread_id}"
        if record.state == "new":
            self._start(path, record.started_at, self.settings, f"{self.device}/{record.kind}")
        elif record.state == "end" and (recorder := self.recorders.get(path)):
            recorder.end(self._pts_at(record.ended_at or record.started_at))

    def record(self, order: RecordingOrder) -> None:
        """Record from now (with the pre-roll held) until ``order.until``."""
        now = time.time()
        until = order.until.timestamp()
        if until <= now:
            return
        settings = dataclasses.replace(
            self.settings, post_roll_s=0.0, max_clip_s=self.settings.pre_roll_s + until - now + 1
        )
        path = f"/api/v1/relays/recordings/{order.id}"
        recorder = self._start(path, now, settings, f"{self.device}/recording")
        if recorder is None:  # no packet yet: at the first keyframe
            self._orders.append(order)
            return
        recorder.end(self._pts_at(until))
        log.info("relay: recording %s of %s until %s", order.id, self.device, order.until)

    def _forget_done(self) -> None:
        for path in [p for p, r in self.recorders.items() if r.done]:
            del self.recorders[path]

    async def close(self) -> None:
        """The camera's analysis stops: finish every clip and recording and upload it."""
        self._stop_listening()
        await asyncio.gather(*(r.close() for r in self.recorders.values()))
        self.recorders.clear()
