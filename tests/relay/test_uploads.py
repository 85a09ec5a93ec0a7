"""An uploaded video's analysis on a node (relay/uploads.py), against a cloud that serves
the file and records what the node reports."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from protocol.messages import UploadOrder
from relay.analysis import Analysis
from relay.detector import Detection
from relay.settings import RelaySettings
from relay.uploads import UploadAnalysis
from tests.e2e.test_analysis import synthetic_mp4

UPLOAD = UploadOrder(id="64b000000000000000000001", device_id="64b000000000000000000002")


class Person:
    """A detector that sees a person in every frame it is given, and counts them."""

    def __init__(self) -> None:
        self.frames = 0

    async def detect(self, frame_bgr: NDArray[np.uint8]) -> list[Detection]:
        self.frames += 1
        await asyncio.sleep(0)
        return [Detection(label="person", score=0.9, box=(0.4, 0.3, 0.6, 0.9))]

    async def close(self) -> None:
        pass


async def analyse(video: bytes, detector: Person) -> list[dict[str, Any]]:
    """Analyse ``video`` as the upload, on a node with a tight detection budget; the event
    reports the cloud received."""
    reports: list[dict[str, Any]] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/api/v1/relays/uploads/{UPLOAD.id}/content":
            return httpx.Response(200, content=video)
        if path == "/api/v1/relays/events":
            reports.append(json.loads(request.content))
            return httpx.Response(200, json={})
        if path == f"/api/v1/relays/uploads/{UPLOAD.id}":
            return httpx.Response(200, json={})
        return httpx.Response(404)  # motion settings: the defaults

    settings = RelaySettings(
        cloud_url="http://cloud", relay_id="r1", relay_secret="s", detections_per_s=3.0
    )
    analysis = Analysis(settings, detector, {"events_sent": 0, "events_failed": 0}, print)
    analysis.http = httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(cloud))
    async with analysis.http:
        await UploadAnalysis(analysis, UPLOAD).run()
    return reports


async def test_analysing_a_file_again_reports_the_same_threads_and_every_moving_frame_is_detected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "upload.mp4"
    synthetic_mp4(path, seconds=10, motion=(3.0, 3.0))
    first, again = Person(), Person()
    reports = await analyse(path.read_bytes(), first)
    repeated = await analyse(path.read_bytes(), again)

    def threads(rs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["thread_id"], r["kind"], r["state"], r["offset_s"]) for r in rs]

    assert threads(reports) == threads(repeated)  # the same threads, by the same ids
    assert {r["thread_id"] for r in reports} == {f"{UPLOAD.id}-1", f"{UPLOAD.id}-2"}
    assert {r["kind"] for r in reports} == {"motion", "person"}
    # 3 s of motion sampled at 5 fps, each moving frame detected although the budget
    # grants 3 a second: the file waits for its share instead of skipping frames
    assert first.frames == again.frames >= 14
