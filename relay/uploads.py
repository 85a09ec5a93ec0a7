"""Uploaded videos, analysed like a camera's stream (docs/protocol.md, "Media").

The cloud gives a node an uploaded file (``relay.assign`` ``uploads``); the node reads it
into a temporary file (``GET /relays/uploads/{id}/content``), decodes it in a worker thread,
samples it at ``analysis_fps`` by the frames' own timestamps (so as fast as the CPU allows,
not in real time), and runs the same pipeline: motion, then the detector (waiting for its
share of the node's budget rather than skipping a frame), then event threads, named by the
upload and their order so that analysing the file again reports the same threads. Events
carry ``source: "upload"``, the upload's id, and their start and end as offsets into the
file; their times are the analysis start plus those offsets. Progress goes to
``PATCH /relays/uploads/{id}`` every :data:`PROGRESS_EVERY_S` and at the end (``analysed``,
or ``failed`` with the reason: a file PyAV cannot decode, one without video).
"""

import asyncio
import contextlib
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import av
import httpx
import numpy as np
from numpy.typing import NDArray

from protocol.messages import UploadOrder
from relay.analysis import Analysis
from relay.detector import DetectorError
from relay.events import EventRecord, EventThreads, snapshot_jpeg
from relay.motion import MotionDetector

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
DOWNLOAD_TIMEOUT_S = 600.0


class UploadError(Exception):
    """The file cannot be analysed (the reason is shown to its owner)."""


def sampled_frames(path: str, fps: float) -> Iterator[tuple[float, float, NDArray[np.uint8]]]:
    """``(offset_s, duration_s, bgr)`` for the file's frames, at most ``fps`` a second of
    video (CPU-bound: advance it in a worker thread)."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise UploadError(f"the file cannot be read as a video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise UploadError("the file has no video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = float(container.duration or 0) / av.time_base
        due = 0.0
        try:
            for frame in container.decode(stream):
                offset = float(frame.time or 0.0)
                if offset + 1e-6 < due:
                    continue
                due = offset + 1.0 / fps
                yield offset, duration, np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
        except av.error.FFmpegError as exc:
            raise UploadError(f"the video stopped decoding: {exc}") from exc


class UploadAnalysis:
    """One uploaded video's analysis on this node."""

    def __init__(self, analysis: Analysis, order: UploadOrder) -> None:
        self.analysis = analysis
        self.order = order
        self.frames = 0

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.analysis.http is not None
        return self.analysis.http

    async def run(self) -> None:
        """Analyse the file and report how it went; never raises (but on cancel)."""
        fd, path = tempfile.mkstemp(prefix="upload-", suffix=".video")
        os.close(fd)
        try:
            await self._download(path)
            await self._analyse(path)
            await self._progress("analysed", 1.0)
            log.info("relay: upload %s analysed (%d frames)", self.order.id, self.frames)
        except (UploadError, httpx.HTTPError) as exc:
            log.warning("relay: upload %s failed: %s", self.order.id, exc)
            with contextlib.suppress(httpx.HTTPError):
                await self._progress("failed", None, str(exc)[:500])
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _download(self, path: str) -> None:
        url = f"/api/v1/relays/uploads/{self.order.id}/content"
        async with asyncio.timeout(DOWNLOAD_TIMEOUT_S):
            async with self.http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise UploadError(f"the cloud would not give the file ({response.status_code})")
                out = await asyncio.to_thread(open, path, "wb")
                try:
                    async for chunk in response.aiter_bytes():
                        await asyncio.to_thread(out.write, chunk)  # not on the viewers' loop
                finally:
                    await asyncio.to_thread(out.close)

    async def _analyse(self, path: str) -> None:
        settings = self.analysis.settings
        device = self.order.device_id
        motion = MotionDetector(await self.analysis.motion_config(device))
        # Threads named by the upload and their order, so a restarted analysis of the same
        # file (its node reconnected or died) reports the same threads, not new ones.
        numbers = itertools.count(1)
        threads = EventThreads(new_id=lambda: f"{self.order.id}-{next(numbers)}")
        frames = sampled_frames(path, settings.analysis_fps)
        base = time.time()  # event times: the analysis start plus offsets into the file
        reported_at = time.monotonic()
        offset = duration = 0.0
        while (item := await asyncio.to_thread(next, frames, None)) is not None:
            offset, duration, picture = item
            self.frames += 1
            moved = motion.update(picture, base + offset)
            detections = None
            detector = self.analysis.detector
            if moved.moving and detector:
                await self._budget()
                with contextlib.suppress(DetectorError):
                    detections = await detector.detect(picture)
            for record in threads.update(base + offset, moved, detections):
                await self._report(record, base, picture)
            if time.monotonic() - reported_at >= PROGRESS_EVERY_S and duration > 0:
                reported_at = time.monotonic()
                await self._progress("analysing", min(0.99, offset / duration))
        if self.frames == 0:
            raise UploadError("the file has no frame to analyse")
        for record in threads.end_all(base + offset):
            await self._report(record, base, None)
        self.analysis.budget.forget(f"upload:{self.order.id}")

    async def _budget(self) -> None:
        """Wait for a detection from the node's budget, in its fair share beside the live
        cameras. A file is not live, so no moving frame goes without its detection: the
        same file always gives the same threads."""
        budget = self.analysis.budget
        # The budget is a credit counter time refills (relay/budget.py): nothing to wait on
        while not budget.try_acquire(f"upload:{self.order.id}", time.monotonic()):  # noqa: ASYNC110
            await asyncio.sleep(1.0 / budget.rate_per_s)

    async def _report(self, record: EventRecord, base: float, picture: Any) -> None:
        jpeg = None
        if record.snapshot and picture is not None:
            jpeg = await asyncio.to_thread(snapshot_jpeg, picture)
        report = record.to_report(self.order.device_id, jpeg).model_copy(
            update={
                "source": "upload",
                "upload_id": self.order.id,
                "offset_s": round(max(0.0, record.started_at - base), 3),
                "end_offset_s": None
                if record.ended_at is None
                else round(max(0.0, record.ended_at - base), 3),
            }
        )
        await self.analysis.report(report.model_dump(mode="json", exclude_none=True))

    async def _progress(self, state: str, progress: float | None, error: str | None = None) -> None:
        body: dict[str, Any] = {"analysis": state}
        if progress is not None:
            body["progress"] = progress
        if error is not None:
            body["error"] = error
        response = await self.http.patch(f"/api/v1/relays/uploads/{self.order.id}", json=body)
        if response.status_code != 200:
            log.warning(
                "relay: upload %s progress refused (%s)", self.order.id, response.status_code
            )
