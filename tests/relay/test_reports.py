"""A relay node's event reports while the cloud is away (issue 16 item 2): kept in a bounded
buffer, retried with backoff under one Idempotency-Key each, in order per thread; and the
final clip upload outlives an outage."""

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import relay.clips
from relay.analysis import Analysis
from relay.clips import ClipRecorder, ClipSettings, PreRoll, UploadRefused
from relay.remux import Entry
from relay.reports import ReportBuffer
from relay.settings import RelaySettings
from tests.relay.test_clips import FPS, encode


def body(thread: str, state: str, device: str = "cam-1", snapshot: str = "") -> dict[str, Any]:
    report = {"device_id": device, "thread_id": thread, "state": state, "kind": "motion"}
    if snapshot:
        report["snapshot_jpeg"] = snapshot
    return report


class Cloud:
    """A cloud that is down (connection refused, or 503) until ``up`` is set, and stores
    each report once by its key; ``log`` has every call, ``stored`` what it applied."""

    def __init__(self, down_with: str = "503") -> None:
        self.up = asyncio.Event()
        self.down_with = down_with
        self.log: list[tuple[str, str, str]] = []  # (thread, state, key) of every call
        self.stored: dict[str, dict[str, Any]] = {}  # by key
        self.refuse: set[str] = set()  # threads answered 404

    async def __call__(self, report: dict[str, Any], key: str) -> httpx.Response:
        self.log.append((report["thread_id"], report["state"], key))
        await asyncio.sleep(0)
        if report["thread_id"] in self.refuse:
            return httpx.Response(404, json={"error": {"code": "device_not_found"}})
        if not self.up.is_set():
            if self.down_with == "connect":
                raise httpx.ConnectError("connection refused")
            return httpx.Response(503, headers={"Retry-After": "0"})
        self.stored.setdefault(key, report)
        return httpx.Response(200, json={})


def fast(send: Callable[..., Any], **options: Any) -> tuple[ReportBuffer, dict[str, int]]:
    stats: dict[str, int] = {}
    return ReportBuffer(send, stats, first_retry_s=0.01, max_retry_s=0.05, **options), stats


@pytest.mark.parametrize("down_with", ["503", "connect"])
async def test_reports_wait_for_the_cloud_in_order_per_thread_under_one_key_each(
    down_with: str,
) -> None:
    cloud = Cloud(down_with)
    reports, stats = fast(cloud)
    for report in (
        body("a", "new"),
        body("b", "new"),
        body("a", "update"),
        body("a", "end"),
        body("b", "end"),
    ):
        reports.put(report)
    assert len(reports) == 5
    await asyncio.sleep(0.3)  # the cloud is down: tried again and again, nothing lost
    assert len(reports) == 5
    assert stats["events_retried"] >= 4
    cloud.up.set()
    assert await reports.flush(5.0)
    assert len(reports) == 0
    assert stats["events_sent"] == 5
    assert stats["events_failed"] == stats["events_dropped"] == 0
    # Each report kept its key over its tries, and no two reports share one.
    keys: dict[tuple[str, str], set[str]] = {}
    for thread, state, key in cloud.log:
        keys.setdefault((thread, state), set()).add(key)
    assert all(len(k) == 1 for k in keys.values())
    assert len({k for ks in keys.values() for k in ks}) == 5
    # A thread's report is never sent before the one put before it was taken: the calls
    # of thread "a" are its new (repeated), then its update, then its end.
    for thread, states in (("a", ["new", "update", "end"]), ("b", ["new", "end"])):
        calls = [state for t, state, _ in cloud.log if t == thread]
        firsts = [state for n, state in enumerate(calls) if n == 0 or calls[n - 1] != state]
        assert firsts == states, calls
        assert [r["state"] for r in cloud.stored.values() if r["thread_id"] == thread] == states
    # while thread "a" waited for the cloud, thread "b" was tried too: side by side
    assert cloud.log.index(("b", "new", next(iter(keys[("b", "new")])))) < 3


async def test_a_refused_report_is_dropped_and_its_thread_goes_on() -> None:
    cloud = Cloud()
    cloud.up.set()
    cloud.refuse.add("gone")
    reports, stats = fast(cloud)
    refused = reports.put(body("gone", "new"))
    taken = reports.put(body("ok", "new"))
    assert await refused is False
    assert await taken is True
    assert (stats["events_failed"], stats["events_sent"]) == (1, 1)
    assert [t for t, _, _ in cloud.log].count("gone") == 1  # not retried


async def test_the_buffer_is_bounded_and_drops_updates_first_never_one_being_sent() -> None:
    cloud = Cloud()
    reports, stats = fast(cloud, max_reports=4)
    first = reports.put(body("a", "new"))
    await asyncio.sleep(0.02)  # being sent (and retried) now
    reports.put(body("a", "update"))
    reports.put(body("a", "update"))
    reports.put(body("a", "end"))
    assert len(reports) == 4
    reports.put(body("b", "new"))  # full: the oldest update goes
    reports.put(body("b", "end"))  # and the next one
    assert len(reports) == 4
    assert stats["events_dropped"] == 2
    reports.put(body("c", "new"))  # no update left: the oldest waiting report (a's end)
    assert stats["events_dropped"] == 3
    cloud.up.set()
    assert await reports.flush(5.0)
    assert await first is True  # being sent while full: never dropped
    assert sorted((r["thread_id"], r["state"]) for r in cloud.stored.values()) == [
        ("a", "new"),
        ("b", "end"),
        ("b", "new"),
        ("c", "new"),
    ]
    # by bytes too: a snapshot that does not fit in what is left pushes out the oldest
    small, _ = fast(cloud, max_bytes=2000)
    small.put(body("d", "new", snapshot="x" * 1000))
    small.put(body("e", "new", snapshot="y" * 1000))
    assert len(small) == 1
    assert small.size <= 2000
    await small.flush(5.0)
    await small.close()
    await reports.close()


async def test_close_gives_up_on_what_is_left() -> None:
    cloud = Cloud()
    reports, _ = fast(cloud)
    held = reports.put(body("a", "new"))
    assert await reports.flush(0.1) is False
    await reports.close()
    assert await held is False
    assert len(reports) == 0


async def test_the_nodes_reports_carry_their_key_in_the_idempotency_key_header() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["idempotency-key"], json.loads(request.content)))
        if len(seen) < 3:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json={})

    settings = RelaySettings(cloud_url="http://cloud", relay_id="r1", relay_secret="s")
    analysis = Analysis(settings, None, {"events_sent": 0, "events_failed": 0}, print)
    analysis.reports.first_retry_s = 0.01
    analysis.http = httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(cloud))
    async with analysis.http:
        assert await analysis.report(body("t", "new")) is True
    assert len(seen) == 3
    assert len({key for key, _ in seen}) == 1
    assert len(seen[0][0]) >= 8
    assert {b["thread_id"] for _, b in seen} == {"t"}


# the final clip upload -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vp8() -> list[Entry]:
    return encode("vp8", 4)


class ClipCloud:
    def __init__(self, down_for: int, error: Exception | None = None) -> None:
        self.down_for = down_for  # calls that fail
        self.error = error or ConnectionError("503: the database is away")
        self.finals = 0
        self.stored: bytes | None = None

    async def __call__(self, data: bytes, final: bool, content_type: str) -> None:
        if final:
            self.finals += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise self.error
        self.stored = data


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay.clips, "FINAL_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(relay.clips, "FINAL_RETRY_MAX_S", 0.04)
    monkeypatch.setattr(relay.clips, "FINAL_RETRY_FOR_S", 1.0)


async def recorded(vp8: list[Entry], cloud: ClipCloud) -> ClipRecorder:
    settings = ClipSettings(pre_roll_s=0, upload_every_s=60)
    recorder = ClipRecorder("vp8", PreRoll(), cloud, settings=settings, name="outage")
    for packet, keyframe in vp8[: 2 * FPS]:
        recorder.add(packet, keyframe)
    async with asyncio.timeout(10):
        await recorder.close()
    return recorder


@pytest.mark.usefixtures("quick_retries")
async def test_the_final_clip_upload_keeps_trying_through_an_outage(vp8: list[Entry]) -> None:
    # Far more tries than the three it used to get: it lands once the cloud is back.
    cloud = ClipCloud(down_for=12)
    recorder = await recorded(vp8, cloud)
    assert cloud.finals == 13
    assert cloud.stored is not None
    assert recorder.failed_uploads == 12


@pytest.mark.usefixtures("quick_retries")
async def test_the_final_clip_upload_gives_up_after_its_time_or_a_refusal(
    vp8: list[Entry],
) -> None:
    endless = ClipCloud(down_for=10_000)
    started = asyncio.get_running_loop().time()
    await recorded(vp8, endless)
    assert endless.stored is None
    assert 0.9 < asyncio.get_running_loop().time() - started < 3.0  # FINAL_RETRY_FOR_S
    refused = ClipCloud(down_for=10_000, error=UploadRefused("404: the camera was removed"))
    await recorded(vp8, refused)
    assert refused.finals == 1
