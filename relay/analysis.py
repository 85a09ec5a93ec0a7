"""What a relay node makes of the cameras it watches: motion on every sampled frame, YOLO
(off the event loop) only while there is motion and the node's detection budget allows it,
and event threads reported to the cloud (``POST /relays/events``)."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import numpy as np
from av import VideoFrame
from numpy.typing import NDArray

from relay.budget import DetectionBudget
from relay.detector import Detector, DetectorError
from relay.events import EventThreads, snapshot_jpeg
from relay.media import Fanout
from relay.motion import MotionConfig, MotionDetector
from relay.settings import RelaySettings

log = logging.getLogger(__name__)


def bgr(frame: VideoFrame) -> NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)


class Analysis:
    """The node's analysis of every camera it watches; ``stats`` counts frames and events.

    ``http`` is the node's client to the cloud, set while the node runs; ``spawn`` runs an
    event upload as one of the node's tasks, so a slow cloud never stalls the frames.
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

    async def _motion_config(self, device_id: str) -> MotionConfig:
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

    async def watch(self, device: str, fanout: Fanout) -> None:
        """Analyse one camera's picture until its fan-out closes."""
        motion = MotionDetector(await self._motion_config(device))
        threads = EventThreads()
        try:
            async for frame in fanout.frames(self.settings.analysis_fps):
                t = time.time()
                picture: NDArray[np.uint8] = await asyncio.to_thread(bgr, frame)
                moved = motion.update(picture, t)
                self.stats["frames_analysed"] += 1
                detections = None
                if (
                    moved.moving
                    and self.detector is not None
                    and self.budget.try_acquire(device, time.monotonic())
                ):
                    try:
                        detections = await self.detector.detect(picture)
                    except DetectorError:
                        detections = None  # busy: the next frame will do
                for record in threads.update(t, moved, detections):
                    jpeg = (
                        await asyncio.to_thread(snapshot_jpeg, picture) if record.snapshot else None
                    )
                    self._spawn(
                        self._report(
                            record.to_report(device, jpeg).model_dump(
                                mode="json", exclude_none=True
                            )
                        )
                    )
        finally:
            for record in threads.end_all(time.time()):
                with contextlib.suppress(Exception):
                    await self._report(
                        record.to_report(device).model_dump(mode="json", exclude_none=True)
                    )

    async def _report(self, body: dict[str, Any]) -> None:
        assert self.http is not None
        try:
            response = await self.http.post("/api/v1/relays/events", json=body)
        except httpx.HTTPError as exc:
            self.stats["events_failed"] += 1
            log.warning("relay: event upload failed: %s", exc)
            return
        if response.status_code != 200:
            self.stats["events_failed"] += 1
            log.warning("relay: event refused (%s): %s", response.status_code, response.text[:200])
        else:
            self.stats["events_sent"] += 1
