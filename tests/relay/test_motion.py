from typing import Literal

import numpy as np
import pytest

from device_sim.media import MOTION_CROSSING_S, SyntheticVideo
from relay.motion import Box, MotionConfig, MotionDetector, MotionResult

ANALYSED_EVERY = 3  # frames: 5 analysed frames per second of a 15 fps camera
Method = Literal["mog2", "diff"]
METHODS: list[Method] = ["mog2", "diff"]


def run(video: SyntheticVideo, detector: MotionDetector, seconds: float) -> list[MotionResult]:
    """The detector's result for every analysed frame of the first ``seconds``."""
    last = video.index_at(seconds)
    return [
        detector.update(video.picture(i), i / video.fps) for i in range(0, last, ANALYSED_EVERY)
    ]


def figure_box(video: SyntheticVideo, at_s: float) -> Box:
    """Where SyntheticVideo draws its intruder at ``at_s`` (body and head), in 0..1."""
    start = min(s for s, d in video.episodes if s <= at_s < s + d)
    phase = ((at_s - start) / MOTION_CROSSING_S) % 2.0
    travel = phase if phase <= 1.0 else 2.0 - phase
    body_w = int(video.width * 0.10)
    left = int(travel * (video.width - body_w)) / video.width
    return (left, 0.40, body_w / video.width, 0.52)


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2] / 2, box[1] + box[3] / 2)


def inside(point: tuple[float, float], box: Box) -> bool:
    return box[0] <= point[0] <= box[0] + box[2] and box[1] <= point[1] <= box[1] + box[3]


@pytest.mark.parametrize("method", METHODS)
def test_a_static_scene_with_a_running_clock_is_quiet(method: Method) -> None:
    video = SyntheticVideo()
    results = run(video, MotionDetector(MotionConfig(method=method)), seconds=12)
    assert not any(r.moving for r in results)
    assert max(r.score for r in results) < 0.002  # only the clock's digits change


@pytest.mark.parametrize("method", METHODS)
def test_an_intruder_is_moving_with_a_box_around_it(method: Method) -> None:
    video = SyntheticVideo(motion=[(3.0, 5.0)])
    detector = MotionDetector(MotionConfig(method=method))
    for i in range(0, video.index_at(12), ANALYSED_EVERY):
        at_s = i / video.fps
        result = detector.update(video.picture(i), at_s)
        if at_s < 3.0 or at_s >= 8.5:
            assert not result.moving, at_s
        elif video.in_motion(at_s) and video.in_motion(at_s - 0.2):  # diff: the previous too
            assert result.moving, at_s
            assert result.box is not None
            assert inside(centre(figure_box(video, at_s)), result.box), (at_s, result.box)
            assert result.box[2] < 0.3
            assert 0.3 < result.box[3] < 0.7
            assert 0.02 < result.score < 0.15


def test_mog2_boxes_the_whole_figure() -> None:
    video = SyntheticVideo(motion=[(1.0, 4.0)])
    detector = MotionDetector(MotionConfig(method="mog2"))
    result = run(video, detector, seconds=3.0)[-1]
    expected = figure_box(video, (video.index_at(3.0) - ANALYSED_EVERY) / video.fps)
    assert result.box is not None
    assert result.box == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("method", METHODS)
def test_motion_outside_the_zones_does_not_count(method: Method) -> None:
    video = SyntheticVideo(motion=[(1.0, 8.0)])
    left_half = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    detector = MotionDetector(MotionConfig(method=method, zones=[left_half]))
    seen = {"left": 0, "right": 0}
    for i in range(0, video.index_at(9), ANALYSED_EVERY):
        at_s = i / video.fps
        result = detector.update(video.picture(i), at_s)
        if not video.in_motion(at_s - 0.2) or not video.in_motion(at_s):
            continue
        now, before = figure_box(video, at_s), figure_box(video, at_s - 0.2)
        if min(now[0], before[0]) > 0.52:
            assert not result.moving, at_s
            seen["right"] += 1
        elif max(now[0] + now[2], before[0] + before[2]) < 0.48:
            assert result.moving, at_s
            assert result.box is not None
            assert result.box[0] + result.box[2] <= 0.51
            seen["left"] += 1
    assert seen["left"] >= 5
    assert seen["right"] >= 5


def test_masks_hide_motion() -> None:
    video = SyntheticVideo(motion=[(1.0, 4.0)])
    floor = [(0.0, 0.3), (1.0, 0.3), (1.0, 1.0), (0.0, 1.0)]
    results = run(video, MotionDetector(MotionConfig(masks=[floor])), seconds=6)
    assert not any(r.moving for r in results)


def test_the_min_area_rule_or_a_mask_keeps_the_clock_from_counting() -> None:
    video = SyntheticVideo()
    tiny = 5 / (320 * 240)  # five analysis pixels: the clock's digits pass this
    unmasked = run(video, MotionDetector(MotionConfig(min_area=tiny)), seconds=6)
    assert any(r.moving for r in unmasked)
    assert all(r.box is None or r.box[0] + r.box[2] <= 0.25 for r in unmasked)

    x, y, w, h = video.hud_box
    x0, y0 = x / video.width, y / video.height
    x1, y1 = (x + w + 4) / video.width, (y + h + 4) / video.height
    hud = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    masked = run(video, MotionDetector(MotionConfig(min_area=tiny, masks=[hud])), seconds=6)
    assert not any(r.moving for r in masked)


@pytest.mark.parametrize("method", METHODS)
def test_a_lighting_change_is_not_motion(method: Method) -> None:
    video = SyntheticVideo()
    detector = MotionDetector(MotionConfig(method=method))
    run(video, detector, seconds=2)
    brighter = np.clip(video.picture(40).astype(np.int16) + 60, 0, 255).astype(np.uint8)
    results = [detector.update(brighter, 3.0 + k * 0.2) for k in range(5)]
    assert not any(r.moving for r in results)


def test_gray_frames_of_any_size_are_accepted() -> None:
    video = SyntheticVideo(320, 240, motion=[(0.0, 5.0)])
    detector = MotionDetector(MotionConfig(method="diff", size=(160, 120)))
    gray = [video.picture(i)[:, :, 1].copy() for i in range(0, 15, ANALYSED_EVERY)]
    results = [detector.update(frame, k * 0.2) for k, frame in enumerate(gray)]
    assert not results[0].moving  # nothing to compare with yet
    assert all(r.moving for r in results[1:])


def test_a_gap_in_the_frames_restarts_the_background() -> None:
    video = SyntheticVideo(motion=[(0.0, 60.0)])
    detector = MotionDetector(MotionConfig(method="diff", reset_after_s=5.0))
    assert not detector.update(video.picture(0), 0.0).moving
    assert detector.update(video.picture(3), 0.2).moving
    assert not detector.update(video.picture(150), 10.2).moving  # 10 s later: a new start
    assert detector.update(video.picture(153), 10.4).moving


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sensitivity": 1.5},
        {"min_area": 0.0},
        {"min_area": 0.7, "max_area": 0.6},
        {"size": (8, 8)},
        {"method": "optical-flow"},
        {"zones": [[(0.0, 0.0), (1.0, 1.0)]]},
    ],
)
def test_an_invalid_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        MotionConfig(**kwargs)  # type: ignore[arg-type]
