"""The camera's picture sources and its VP8 keyframe interval."""

import asyncio
import fractions
import itertools
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from device_sim.keyframes import Vp8KeyframeEncoder, is_vp8_keyframe
from device_sim.media import FileVideo, SyntheticVideo

FPS = 15
DIFF_THRESHOLD = 25  # grey levels: what a simple frame-differencing detector counts as change


def gray_without_hud(video: SyntheticVideo, picture: np.ndarray) -> np.ndarray:
    """Downscaled grey picture with the clock corner blanked, as a motion detector sees it."""
    x, y, w, h = video.hud_box
    gray = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
    gray[y : y + h, x : x + w] = 0
    return cv2.resize(gray, (160, 120), interpolation=cv2.INTER_AREA).astype(np.int16)


def changed_fraction(video: SyntheticVideo, before: int, after: int) -> tuple[float, float]:
    """Mean absolute difference and fraction of changed pixels between two frames."""
    diff = np.abs(
        gray_without_hud(video, video.picture(after))
        - gray_without_hud(video, video.picture(before))
    )
    return float(diff.mean()), float((diff > DIFF_THRESHOLD).mean())


def test_the_scene_is_static_outside_motion_episodes_apart_from_the_corner_clock() -> None:
    video = SyntheticVideo(640, 480, fps=FPS, motion=[(2.0, 2.0)])
    x, y, w, h = video.hud_box

    assert w * h < 0.03 * 640 * 480
    for index in range(1, 2 * FPS):  # 0 s .. 2 s
        mean, _ = changed_fraction(video, index - 1, index)
        assert mean < 0.5
    first, later = video.picture(0), video.picture(5 * FPS)  # before and after the episode
    first[y : y + h, x : x + w] = later[y : y + h, x : x + w] = 0
    assert np.array_equal(first, later)


def test_an_episode_moves_a_large_object_across_the_scene() -> None:
    video = SyntheticVideo(640, 480, fps=FPS, motion=[(2.0, 2.0)])

    assert [video.in_motion(s) for s in (1.9, 2.0, 3.9, 4.0)] == [False, True, True, False]
    for index in range(2 * FPS + 1, 4 * FPS):  # within the episode, frame to frame
        mean, changed = changed_fraction(video, index - 1, index)
        assert mean > 1.0
        assert changed > 0.01  # well above a detector's minimum area
    _, across = changed_fraction(video, 2 * FPS, 3 * FPS)  # one second apart: far away
    assert across > 0.05


def test_motion_starts_an_episode_now() -> None:
    video = SyntheticVideo(320, 240, fps=FPS)
    assert not video.in_motion(video.elapsed())

    video.motion(1.0)
    now = video.elapsed()

    assert video.in_motion(now)
    assert not video.in_motion(now + 1.5)
    start, duration = video.episodes[0]
    assert duration == 1.0
    assert start <= now
    index = video.index_at(now)
    _, changed = changed_fraction(video, index, index + 3)
    assert changed > 0.01


async def test_a_track_is_paced_at_fps_with_pts_in_90khz_units() -> None:
    video = SyntheticVideo(320, 240, fps=20)
    track = video.track()

    first = await track.recv()
    started = time.monotonic()
    frames = [first] + [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - started

    assert 0.4 < elapsed < 0.8
    assert all(isinstance(f, VideoFrame) for f in frames)
    assert all((f.width, f.height, f.format.name) == (320, 240, "yuv420p") for f in frames)
    assert all(f.time_base == fractions.Fraction(1, 90000) for f in frames)
    steps = [b.pts - a.pts for a, b in itertools.pairwise(frames)]
    assert all(step > 0 and step % 4500 == 0 for step in steps)  # whole frames at 20 fps
    assert steps.count(4500) >= 8  # a frame may be skipped only when the loop falls behind
    track.stop()


async def test_sessions_share_the_timeline_but_not_the_frame_objects() -> None:
    video = SyntheticVideo(320, 240, fps=FPS)
    one, two = video.track(), video.track()
    await asyncio.gather(one.recv(), two.recv())

    a, b = await asyncio.gather(one.recv(), two.recv())

    assert a is not b
    assert a.pts == b.pts
    assert np.array_equal(a.to_ndarray(), b.to_ndarray())


async def test_a_stopped_track_ends() -> None:
    track = SyntheticVideo(320, 240, fps=FPS).track()
    await track.recv()

    track.stop()

    with pytest.raises(MediaStreamError):
        await track.recv()


def test_the_source_checks_its_settings() -> None:
    for bad, problem in (
        ({"width": 321}, "even"),
        ({"fps": 0}, "fps"),
        ({"keyframe_interval": 0}, "keyframe_interval"),
        ({"motion": [(1.0, 0.0)]}, "duration_s > 0"),
    ):
        with pytest.raises(ValueError, match=problem):
            SyntheticVideo(**bad)


def encode_keyframes(encoder: Vp8KeyframeEncoder, count: int, forced: set[int]) -> list[int]:
    video = SyntheticVideo(320, 240, fps=FPS, motion=[(0.0, 60.0)])
    keyframes = []
    for index in range(count):
        frame = VideoFrame.from_ndarray(video.picture(index), format="bgr24")
        frame.pts, frame.time_base = index * 6000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=index in forced)
        if is_vp8_keyframe(payloads[0]):
            keyframes.append(index)
    return keyframes


def test_the_vp8_encoder_sends_a_keyframe_every_interval_and_restarts_after_a_pli() -> None:
    encoder = Vp8KeyframeEncoder(keyframe_interval=10)

    assert encode_keyframes(encoder, 25, forced={13}) == [0, 10, 13, 23]
    assert (encoder.frames, encoder.keyframes) == (25, 4)


def test_without_an_interval_the_vp8_encoder_keeps_aiortcs_keyframes() -> None:
    assert encode_keyframes(Vp8KeyframeEncoder(), 25, forced={13}) == [0, 13]
    with pytest.raises(ValueError, match="at least 1 frame"):
        Vp8KeyframeEncoder(keyframe_interval=0)


def write_clip(path: Path, frames: int, fps: int = 20) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(frames):
            picture = np.full((120, 160, 3), 40, dtype=np.uint8)
            picture[:, index * 10 : index * 10 + 20] = 220
            for packet in stream.encode(VideoFrame.from_ndarray(picture, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def test_a_video_file_plays_in_real_time_and_loops(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=8)
    video = FileVideo(clip, keyframe_interval=250)
    track = video.track()
    try:
        async with asyncio.timeout(10):
            frames = [await track.recv() for _ in range(20)]  # more than two passes
    finally:
        track.stop()
        await video.close()

    assert track.keyframe_interval == 250
    assert all((f.width, f.height, f.format.name) == (160, 120, "yuv420p") for f in frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(set(pts))
    assert 0.6 < (pts[-1] - pts[0]) / 90000 < 2.0  # paced near 20 fps, not as fast as decoded


async def test_a_video_file_without_loop_ends_its_tracks(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=4)
    video = FileVideo(clip, loop=False)
    track = video.track()
    received = 0
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    break
                received += 1
    finally:
        await video.close()

    assert 1 <= received <= 4


def test_a_missing_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileVideo(tmp_path / "missing.mp4")
