import itertools
from typing import Literal

import cv2
import numpy as np
import pytest

from device_sim.media import SyntheticVideo
from protocol.events import EventReport
from relay.detector import Detection
from relay.events import EventConfig, EventRecord, EventThreads, event_kind, snapshot_jpeg
from relay.motion import MotionConfig, MotionDetector, MotionResult

MOVING = MotionResult(moving=True, score=0.05, box=(0.1, 0.4, 0.1, 0.5))
STILL = MotionResult(moving=False, score=0.0, box=None)
PERSON = Detection("person", 0.6, (0.2, 0.3, 0.1, 0.5))


def ids() -> EventThreads:
    counter = itertools.count(1)
    return EventThreads(new_id=lambda: f"t{next(counter)}")


def feed(threads: EventThreads, frames: list[tuple[float, MotionResult]]) -> list[EventRecord]:
    return [record for t, motion in frames for record in threads.update(t, motion)]


def states(records: list[EventRecord]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.state, r.thread_id) for r in records]


@pytest.mark.parametrize("method", ["mog2", "diff"])
def test_a_scripted_episode_is_one_motion_thread_new_updates_end(
    method: Literal["mog2", "diff"],
) -> None:
    video = SyntheticVideo(motion=[(2.0, 6.0)])
    motion = MotionDetector(MotionConfig(method=method))
    threads = EventThreads(EventConfig(update_every_s=2.0))
    records = []
    for i in range(0, video.index_at(14), 3):  # 5 analysed frames per second
        t = 1_000.0 + i / video.fps
        records += threads.update(t, motion.update(video.picture(i), t))
    assert next(r.state for r in records) == "new"
    assert [r.state for r in records][-1] == "end"
    assert {r.state for r in records[1:-1]} == {"update"}
    assert len(records) >= 3
    assert {r.kind for r in records} == {"motion"}
    assert len({r.thread_id for r in records}) == 1
    assert records[0].snapshot
    assert not records[-1].snapshot
    assert records[0].started_at == pytest.approx(1_002.0, abs=0.25)
    assert records[-1].ended_at == pytest.approx(1_008.0, abs=0.25)
    assert all(r.box is not None for r in records)
    assert threads.open_threads == {}


def test_one_stray_frame_of_motion_opens_nothing() -> None:
    threads = ids()
    frames = [(0.0, STILL), (0.2, MOVING), (0.4, STILL), (0.6, STILL), (5.0, STILL)]
    assert feed(threads, frames) == []


def test_two_of_three_frames_confirm_and_a_quiet_period_ends() -> None:
    threads = ids()
    records = feed(threads, [(0.0, MOVING), (0.2, STILL), (0.4, MOVING)])
    assert states(records) == [("motion", "new", "t1")]
    assert records[0].started_at == 0.0
    assert feed(threads, [(0.6, STILL), (3.3, STILL)]) == []
    records = feed(threads, [(3.4, STILL)])
    assert states(records) == [("motion", "end", "t1")]
    assert records[0].ended_at == 0.4
    assert states(feed(threads, [(4.0, MOVING), (4.2, MOVING)])) == [("motion", "new", "t2")]


def test_updates_come_with_a_better_score_or_as_a_heartbeat() -> None:
    threads = EventThreads(EventConfig(update_every_s=5.0, min_update_gap_s=1.0))
    assert [r.state for r in feed(threads, [(0.0, MOVING), (0.2, MOVING)])] == ["new"]
    better = MotionResult(moving=True, score=0.08, box=(0.3, 0.4, 0.1, 0.5))
    assert feed(threads, [(0.4, better)]) == []  # too soon after "new"
    (record,) = feed(threads, [(1.2, better)])
    assert (record.state, record.snapshot, record.score, record.box) == (
        "update",
        True,
        0.08,
        better.box,
    )
    frames = [(1.2 + 0.2 * k, MOVING) for k in range(1, 26)]  # until 6.2 s
    records = feed(threads, frames)
    assert [(r.state, r.snapshot) for r in records] == [("update", False)]  # at 6.2 s
    assert records[0].score == MOVING.score
    (end,) = feed(threads, [(9.3, STILL)])
    assert end.score == 0.08  # the thread's peak


def test_detections_open_their_own_threads_beside_motion() -> None:
    threads = ids()
    feed(threads, [(0.0, MOVING), (0.2, MOVING)])
    records = threads.update(0.4, MOVING, [PERSON])
    records += threads.update(0.6, MOVING, [PERSON, Detection("person", 0.9, (0, 0, 1, 1))])
    assert states(records) == [("person", "new", "t2")]
    assert records[0].score == 0.9
    assert records[0].box == (0, 0, 1, 1)
    assert threads.open_threads == {"motion": "t1", "person": "t2"}


def test_road_vehicles_are_one_vehicle_kind() -> None:
    assert [event_kind(x) for x in ("car", "truck", "bus", "motorcycle")] == ["vehicle"] * 4
    assert event_kind("person") == "person"
    assert event_kind("dog") == "dog"
    threads = ids()
    records = threads.update(0.0, None, [Detection("car", 0.7, (0, 0, 0.2, 0.2))])
    records += threads.update(0.2, None, [Detection("truck", 0.5, (0.5, 0, 0.2, 0.2))])
    assert states(records) == [("vehicle", "new", "t1")]


def test_frames_without_detection_neither_confirm_nor_deny_a_label() -> None:
    threads = ids()
    records = threads.update(0.0, MOVING, [PERSON])
    records += threads.update(0.2, MOVING, None)  # the detector did not look at this frame
    records += threads.update(0.4, MOVING, None)
    records += threads.update(0.6, MOVING, [PERSON])
    assert states(records) == [("motion", "new", "t1"), ("person", "new", "t2")]
    assert threads.update(0.8, MOVING, []) == []  # looked, saw nobody: not ended yet
    (end,) = threads.update(3.6, MOVING, [])
    assert (end.kind, end.state, end.ended_at) == ("person", "end", 0.6)


def test_weak_detections_and_unwanted_kinds_open_nothing() -> None:
    threads = EventThreads(EventConfig(min_detection_score=0.5, kinds=frozenset({"person"})))
    weak = Detection("person", 0.3, (0, 0, 0.1, 0.1))
    dog = Detection("dog", 0.9, (0, 0, 0.1, 0.1))
    records = [r for t in (0.0, 0.2, 0.4) for r in threads.update(t, MOVING, [weak, dog])]
    assert records == []


def test_ending_all_threads_when_the_camera_leaves() -> None:
    threads = ids()
    threads.update(0.0, MOVING, [PERSON])
    threads.update(0.2, MOVING, [PERSON])
    records = threads.end_all(0.5)
    assert states(records) == [("motion", "end", "t1"), ("person", "end", "t2")]
    assert threads.open_threads == {}


def test_a_record_becomes_the_protocol_report_and_a_dict() -> None:
    record = EventRecord("person", "end", "abc", 1.2, (-0.01, 0.5, 0.5, 0.5), 1e9, 1e9 + 5, False)
    report = record.to_report("cam-1", snapshot_jpeg=b"\xff\xd8jpeg")
    assert isinstance(report, EventReport)
    assert report.score == 1.0
    assert report.box == [0.0, 0.5, 0.5, 0.5]
    assert report.started_at.timestamp() == 1e9
    assert report.ended_at is not None
    assert report.snapshot_jpeg == "/9hqcGVn"
    assert record.as_dict() == {
        "kind": "person",
        "state": "end",
        "thread_id": "abc",
        "score": 1.2,
        "box": [-0.01, 0.5, 0.5, 0.5],
        "started_at": 1e9,
        "ended_at": 1e9 + 5,
    }


def test_a_snapshot_is_a_small_jpeg() -> None:
    frame = SyntheticVideo(1280, 720).picture(0)
    data = snapshot_jpeg(frame, max_width=480, quality=70)
    assert data[:2] == b"\xff\xd8"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape == (270, 480, 3)
    assert len(data) < 40_000
    small = snapshot_jpeg(frame[:100, :200])
    decoded = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (100, 200, 3)


def test_confirmation_needs_a_sane_window() -> None:
    with pytest.raises(ValueError, match="confirm_hits"):
        EventConfig(confirm_hits=3, confirm_window=2)


def test_detector_labels_become_kinds_the_contract_accepts() -> None:
    from pydantic import TypeAdapter

    from protocol.events import EventKind

    contract = TypeAdapter(EventKind)
    assert event_kind("person") == "person"
    assert event_kind("bus") == "vehicle"
    assert event_kind("0") == "class-0"
    assert event_kind("Traffic Light!") == "traffic light_"
    for label in ["0", "79", "person", "Traffic Light!", "x" * 50, ""]:
        contract.validate_python(event_kind(label))
