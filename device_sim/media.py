"""The camera's pictures: a synthetic scene or a video file.

A source is shared by every viewer session of the camera; ``track()`` hands each session
its own :class:`CameraTrack`, so that each RTP sender (and its encoder) owns its frames:
aiortc's encoder marks the frame it is given when it forces a keyframe, which must not leak
into another viewer's stream. Like a real camera's video settings page, a source carries
the stream's ``keyframe_interval`` next to its size and rate; its tracks carry it to
:class:`~device_sim.rtc.CameraPeer`, which configures the encoder.

The VP8 encoder that honours the interval is :class:`device_sim.keyframes.Vp8KeyframeEncoder`.
"""

import asyncio
import fractions
import logging
import os
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
MOTION_CROSSING_S = 2.0  # an intruder crosses the picture in 2 s, then turns back
FILE_STALL_TIMEOUT_S = 10.0

Picture = NDArray[np.uint8]


class VideoSource(Protocol):
    """What a camera session needs from a picture source."""

    keyframe_interval: int | None

    def track(self) -> "CameraTrack":
        """A new video track for one session, fed by this source."""
        ...


class CameraTrack(MediaStreamTrack):
    """A camera's video track; ``keyframe_interval`` (frames, ``None``: aiortc's 3000)."""

    kind = "video"

    def __init__(self, keyframe_interval: int | None) -> None:
        super().__init__()
        self.keyframe_interval = keyframe_interval

    @abstractmethod
    async def recv(self) -> VideoFrame:
        """The next frame (``yuv420p``); raises ``MediaStreamError`` once the track ended."""


def check_keyframe_interval(keyframe_interval: int | None) -> int | None:
    if keyframe_interval is not None and keyframe_interval < 1:
        raise ValueError("keyframe_interval must be at least 1 frame")
    return keyframe_interval


def _video_frame(yuv: Picture, pts: int) -> VideoFrame:
    frame = VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = pts
    frame.time_base = VIDEO_TIME_BASE
    return frame


class SyntheticVideo:
    """A synthetic camera picture: a static room, a clock and a frame counter, and intruders.

    Frame ``n`` is the picture at ``n / fps`` seconds after the source was created. The room is
    static; a small box in the top-left corner (:attr:`hud_box`) shows the wall-clock time
    when the frame is drawn and the frame number. During a motion episode an orange figure
    (about 5 % of the picture) walks across the room, turning back at the edges every
    :data:`MOTION_CROSSING_S`; outside episodes nothing but the corner box changes, so a
    motion detector that ignores small areas sees motion exactly during episodes.

    Episodes are ``(start_s, duration_s)`` pairs relative to the source's start, given at
    construction (``motion=``) or started now with :meth:`motion`. Tracks (:meth:`track`)
    pace themselves at ``fps`` on the event loop's clock and skip frames rather than fall
    behind; their frames are ``yuv420p`` with ``pts`` in 1/90000 s on the source's
    timeline, so every session shows the same frame number at the same time. Each frame is
    drawn once, on the event loop (about 0.25 ms at 640x480 here), and copied for each
    session.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 15.0,
        *,
        motion: Sequence[Sequence[float]] = (),
        keyframe_interval: int | None = None,
        label: str = "VisionConnect sim",
    ) -> None:
        if width < 64 or height < 48 or width % 2 or height % 2:
            raise ValueError("width and height must be even and at least 64x48")
        if not 0 < fps <= 60:
            raise ValueError("fps must be in (0, 60]")
        self.width = width
        self.height = height
        self.fps = fps
        self.keyframe_interval = check_keyframe_interval(keyframe_interval)
        self._episodes: list[tuple[float, float]] = []
        for episode in motion:
            if len(episode) != 2:
                raise ValueError("a motion episode is (start_s, duration_s)")
            self._add_episode(episode[0], episode[1])
        self._start = time.monotonic()
        self._scale = height / 480
        self._hud_font_scale = max(0.3, 0.42 * self._scale)
        self.hud_box = self._measure_hud()
        self._background = self._draw_background(label)
        self._latest: tuple[int, Picture] | None = None

    @property
    def episodes(self) -> list[tuple[float, float]]:
        """The motion episodes, ``(start_s, duration_s)`` from the source's start."""
        return list(self._episodes)

    def elapsed(self) -> float:
        """Seconds since the source was created."""
        return time.monotonic() - self._start

    def motion(self, seconds: float) -> None:
        """Start a motion episode of ``seconds`` now."""
        self._add_episode(self.elapsed(), seconds)

    def in_motion(self, at_s: float) -> bool:
        """Whether an episode covers ``at_s`` seconds after the start."""
        return self._episode_at(at_s) is not None

    def index_at(self, at_s: float) -> int:
        """The number of the frame shown ``at_s`` seconds after the start."""
        return int(at_s * self.fps)

    def picture(self, index: int) -> Picture:
        """Frame ``index`` as a BGR array (height x width x 3), drawn now."""
        image = self._background.copy()
        self._draw_intruder(image, index / self.fps)
        self._draw_hud(image, index)
        return image

    def track(self) -> CameraTrack:
        """A new video track, paced at ``fps``, that starts with the current frame."""
        return _SyntheticTrack(self)

    # frames for the tracks

    def _yuv(self, index: int) -> Picture:
        if self._latest is not None and self._latest[0] == index:
            return self._latest[1]
        bgr = self.picture(index)
        yuv = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        self._latest = (index, yuv)  # BT.601 limited range, as libswscale converts
        return yuv

    def _frame(self, index: int) -> VideoFrame:
        return _video_frame(self._yuv(index), round(index * VIDEO_CLOCK_RATE / self.fps))

    async def _next_index(self, wanted: int | None) -> int:
        """Wait until frame ``wanted`` is due; answer the current frame if it is already late."""
        current = self.index_at(self.elapsed())
        if wanted is None or wanted <= current:
            return current
        await asyncio.sleep(self._start + wanted / self.fps - time.monotonic())
        return max(wanted, self.index_at(self.elapsed()))

    # drawing

    def _add_episode(self, start_s: float, duration_s: float) -> None:
        if start_s < 0 or duration_s <= 0:
            raise ValueError("a motion episode needs start_s >= 0 and duration_s > 0")
        self._episodes.append((float(start_s), float(duration_s)))

    def _episode_at(self, at_s: float) -> tuple[float, float] | None:
        active = [e for e in self._episodes if e[0] <= at_s < e[0] + e[1]]
        return min(active) if active else None

    def _measure_hud(self) -> tuple[int, int, int, int]:
        (w1, h1), base1 = cv2.getTextSize(
            "0000-00-00 00:00:00", cv2.FONT_HERSHEY_SIMPLEX, self._hud_font_scale, 1
        )
        (w2, _), _ = cv2.getTextSize("#00000000", cv2.FONT_HERSHEY_SIMPLEX, self._hud_font_scale, 1)
        self._hud_line = int(h1) + int(base1) + 3
        width = min(self.width, max(int(w1), int(w2)) + 8)
        height = min(self.height, 2 * self._hud_line + 6)
        return (0, 0, width, height)

    def _draw_background(self, label: str) -> Picture:
        w, h = self.width, self.height
        wall = np.linspace(95, 135, h, dtype=np.float32)[:, None, None]
        tint = np.array([1.0, 0.95, 0.85], dtype=np.float32)[None, None, :]
        image = np.empty((h, w, 3), dtype=np.uint8)
        image[:] = wall * tint
        floor_y = int(h * 0.78)
        image[floor_y:] = (70, 85, 95)
        line = max(1, int(3 * self._scale))
        cv2.line(image, (0, floor_y), (w, floor_y), (50, 60, 65), line)
        # a door, a window and a cupboard: edges for the encoder and the detectors
        shapes = [
            ((0.06, 0.30), (0.20, 0.78), (45, 70, 110), -1),
            ((0.42, 0.16), (0.66, 0.42), (215, 190, 150), -1),
            ((0.42, 0.16), (0.66, 0.42), (240, 240, 240), line),
            ((0.535, 0.16), (0.545, 0.42), (240, 240, 240), -1),
            ((0.78, 0.46), (0.95, 0.78), (60, 90, 80), -1),
        ]
        for (x0, y0), (x1, y1), colour, thickness in shapes:
            corner0, corner1 = (int(w * x0), int(h * y0)), (int(w * x1), int(h * y1))
            cv2.rectangle(image, corner0, corner1, colour, thickness)
        knob = (int(w * 0.18), int(h * 0.56))
        cv2.circle(image, knob, max(2, int(4 * self._scale)), (30, 160, 200), -1)
        font_scale = max(0.3, 0.5 * self._scale)
        origin = (int(w * 0.62), h - int(10 * self._scale))
        cv2.putText(
            image,
            label,
            origin,
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (220, 220, 220),
            1,
            cv2.LINE_AA,
        )
        return image

    def _draw_intruder(self, image: Picture, at_s: float) -> None:
        episode = self._episode_at(at_s)
        if episode is None:
            return
        w, h = self.width, self.height
        body_w, body_h = int(w * 0.10), int(h * 0.40)
        head_r = int(h * 0.06)
        phase = ((at_s - episode[0]) / MOTION_CROSSING_S) % 2.0
        travel = phase if phase <= 1.0 else 2.0 - phase  # 0..1..0: across and back
        left = int(travel * (w - body_w))
        feet = int(h * 0.92)
        top = feet - body_h
        outline = max(1, int(2 * self._scale))
        cv2.rectangle(image, (left, top), (left + body_w, feet), (0, 140, 255), -1)
        cv2.rectangle(image, (left, top), (left + body_w, feet), (20, 20, 20), outline)
        centre = (left + body_w // 2, top - head_r)
        cv2.circle(image, centre, head_r, (0, 140, 255), -1)
        cv2.circle(image, centre, head_r, (20, 20, 20), outline)

    def _draw_hud(self, image: Picture, index: int) -> None:
        x, y, width, height = self.hud_box
        cv2.rectangle(image, (x, y), (x + width - 1, y + height - 1), (0, 0, 0), -1)
        for row, text in enumerate((time.strftime("%Y-%m-%d %H:%M:%S"), f"#{index:08d}"), start=1):
            cv2.putText(
                image,
                text,
                (x + 4, y + row * self._hud_line),
                cv2.FONT_HERSHEY_SIMPLEX,
                self._hud_font_scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )


class _SyntheticTrack(CameraTrack):
    def __init__(self, source: SyntheticVideo) -> None:
        super().__init__(source.keyframe_interval)
        self._source = source
        self._next: int | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._source._next_index(self._next)
        self._next = index + 1
        return self._source._frame(index)


class FileVideo:
    """A video file played in real time as the camera picture, looped by default; with
    ``format="v4l2"``, a V4L2 device's pictures (``/dev/videoN``; ``loop=False``).

    Decoding and pacing are aiortc's ``MediaPlayer`` (a decoder thread). Looping reopens the
    file at its end: ``MediaPlayer(loop=True)`` does not loop here (with PyAV 18 its decoder
    loop ends on ``av.EOFError``, not ``StopIteration``, and drops the last frame), and after
    its seek the timestamps restart at 0, which defeats its pacing. Frames are converted
    once to ``yuv420p`` and copied for each session, stamped with the wall time since
    playback started (1/90000 s). Playback starts with the first track's first ``recv()``;
    call :meth:`close` to stop the player.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        loop: bool = True,
        keyframe_interval: int | None = None,
        format: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.format = format
        self.loop = loop
        self.keyframe_interval = check_keyframe_interval(keyframe_interval)
        self._player: MediaPlayer | None = self._open()  # a bad file fails here, not later
        self._pump_task: asyncio.Task[None] | None = None
        self._published = asyncio.Event()
        self._latest: tuple[int, Picture, int] | None = None
        self._ended = False
        self._start = 0.0

    def track(self) -> CameraTrack:
        """A new video track for one session, sent at the file's own frame rate."""
        return _FileTrack(self)

    async def close(self) -> None:
        """Stop playback; tracks then end (``MediaStreamError``)."""
        self._ended = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                async with asyncio.timeout(5):
                    await self._pump_task
            except (asyncio.CancelledError, TimeoutError):
                pass
            self._pump_task = None
        player, self._player = self._player, None
        if player is not None and player.video is not None:
            player.video.stop()
        self._wake()

    def _open(self) -> MediaPlayer:
        player = MediaPlayer(self.path, format=self.format)
        if player.video is None:
            raise ValueError(f"{self.path}: no video stream")
        return player

    def _wake(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    async def _next_picture(self, after: int) -> tuple[int, Picture, int]:
        if self._pump_task is None and not self._ended:
            self._start = time.monotonic()
            self._pump_task = asyncio.create_task(self._pump(), name=f"FileVideo({self.path})")
        try:
            async with asyncio.timeout(FILE_STALL_TIMEOUT_S):
                while True:
                    latest = self._latest
                    if latest is not None and latest[0] > after:
                        return latest
                    if self._ended:
                        raise MediaStreamError
                    await self._published.wait()
        except TimeoutError:
            stalled = f"no picture from {self.path} for {FILE_STALL_TIMEOUT_S} s"
            raise MediaStreamError(stalled) from None

    async def _pump(self) -> None:
        sequence = 0
        try:
            while not self._ended:
                player = self._player
                if player is None:
                    player = self._player = await asyncio.to_thread(self._open)
                video = player.video
                assert video is not None
                before = sequence
                try:
                    while True:
                        frame = await video.recv()
                        assert isinstance(frame, VideoFrame)
                        sequence += 1
                        self._publish(sequence, frame)
                except MediaStreamError:
                    pass
                finally:
                    video.stop()
                    self._player = None
                if not self.loop or sequence == before:
                    break
                logger.debug("FileVideo(%s) looping", self.path)
        except Exception:
            logger.exception("FileVideo(%s) playback failed", self.path)
        finally:
            self._ended = True
            self._wake()

    def _publish(self, sequence: int, frame: VideoFrame) -> None:
        width, height = frame.width & ~1, frame.height & ~1
        yuv = np.ascontiguousarray(
            frame.to_ndarray(format="yuv420p", width=width, height=height), dtype=np.uint8
        )
        pts = round((time.monotonic() - self._start) * VIDEO_CLOCK_RATE)
        self._latest = (sequence, yuv, pts)
        self._wake()


class _FileTrack(CameraTrack):
    def __init__(self, source: FileVideo) -> None:
        super().__init__(source.keyframe_interval)
        self._source = source
        self._sequence = 0
        self._last_pts = -1

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._sequence, yuv, pts = await self._source._next_picture(self._sequence)
        self._last_pts = max(pts, self._last_pts + 1)
        return _video_frame(yuv, self._last_pts)
