"""Where a camera's encoded video comes from: an IP camera over RTSP, a file, or the agent's
own encoder fed by the synthetic scene or a V4L2 device.

Every source publishes into one :class:`~device_sim.stream.EncodedStream` per camera, shared
by all its sessions (one RTSP pull however many viewers):

- :class:`PassthroughSource` demuxes H.264 with PyAV (libavformat) in a thread and publishes
  the camera's own access units, never decoded nor re-encoded: from ``rtsp://`` over
  RTSP/TCP, reconnecting with backoff and jitter when the camera drops or refuses; from a
  file (looped, paced at its own timestamps). ``h264_mp4toannexb`` turns a file's
  length-prefixed units into the Annex B stream WebRTC packetizes and puts the parameter
  sets ahead of each keyframe.
- :class:`OwnEncoder` encodes decoded pictures (the synthetic scene, a V4L2 device, a file
  in another codec) once per camera with libx264 or libvpx, only while a session watches,
  and makes a keyframe when a viewer asks for one.

An RTSP URL's password is the camera owner's secret: log lines, errors and :attr:`status`
show the URL with ``***`` in its place (:mod:`device_sim.redaction`).
"""

import asyncio
import contextlib
import fractions
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import av
import av.error
import cv2
import numpy as np
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError
from av.bitstream import BitStreamFilterContext
from av.video.frame import PictureType

from device_sim.media import SyntheticVideo, VideoSource
from device_sim.redaction import redact, scrub
from device_sim.stream import EncodedStream, EncodedTrack
from peer.codecs import H264, VP8

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
ENCODER_LINGER_S = 5.0  # an encoder with no session left stops after this
DEFAULT_FPS = 15  # the frame rate the encoder assumes of a source that does not say (files)
CLOSE_TIMEOUT_S = 15.0


class SourceError(Exception):
    """The source cannot give video; the message is for the camera's owner."""


def describe_failure(exc: BaseException, location: str, password: str | None) -> str:
    """What went wrong with a source, in plain words, never with the password."""
    text = scrub(str(exc), password)
    lowered = text.lower()
    if isinstance(exc, SourceError):
        return text
    if "401" in lowered or "unauthorized" in lowered or isinstance(exc, PermissionError):
        return f"{location} refused the user name or password (RTSP 401)"
    if "404" in lowered or "not found" in lowered:
        return f"{location} has no stream at that path (404)"
    if isinstance(exc, ConnectionRefusedError) or "connection refused" in lowered:
        return f"nothing answers at {location} (connection refused)"
    if isinstance(exc, TimeoutError) or "timed out" in lowered or "timeout" in lowered:
        return f"{location} did not answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"{location} does not exist"
    return f"{location} failed: {text}"


class PassthroughSource:
    """H.264 from an RTSP camera (``rtsp://user:pass@host/path``) or a file, passed through.

    :meth:`start` opens it in a thread; the camera's first keyframe sets the stream's codec
    (with its profile-level-id). A live source reconnects by itself; a file loops.
    :attr:`status` says what the source is doing, for people (``"playing"``,
    ``"connecting"``, or why it is not playing).
    """

    def __init__(self, location: str, *, loop: bool = True) -> None:
        self.location = location
        self.live = location.startswith(("rtsp://", "rtsps://"))
        self.loop = loop
        self.display = redact(location)
        self._password = urllib.parse.urlsplit(location).password if self.live else None
        self.stream = EncodedStream(H264, self.display)
        self.description = f"{self.display} (H.264 passed through)"
        self.status = "not started"
        self.failures = 0
        self.connects = 0
        self._closing = threading.Event()
        self._thread: Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def track(self) -> EncodedTrack:
        return self.stream.track()

    async def start(self) -> None:
        """Start pulling (returns at once; see :attr:`status`)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.status = "connecting"
        self._thread = self._loop.run_in_executor(None, self._run)  # type: ignore[assignment]

    async def close(self) -> None:
        """Stop pulling (within the read timeout) and end every session's track."""
        self._closing.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.wrap_future(thread)
        self.stream.stop()

    # the pulling thread

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._closing.is_set():
            delivered = 0
            try:
                delivered = self._pull()
                if not self.live and not self.loop:
                    break
                if not delivered:
                    raise SourceError(f"{self.display} gave no video")
            except Exception as exc:  # report any failure in words, then retry
                self.failures += 1
                self.status = describe_failure(exc, self.display, self._password)
                logger.warning("video source: %s", self.status)
                if not self.live:
                    break
            if delivered:
                backoff = BACKOFF_FIRST_S
            if not self.live:
                continue  # a file loops at once
            delay = random.uniform(backoff / 2, backoff)  # noqa: S311 (jitter, not crypto)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if self._closing.wait(delay):
                break
            self.status = "connecting"
        self._call(self.stream.stop)

    def _pull(self) -> int:
        """One session with the source; returns the number of frames delivered."""
        options = {
            "rtsp_transport": "tcp",
            "timeout": str(int(READ_TIMEOUT_S * 1e6)),
            # the SDP names the codec, size and parameter sets: no need to read a GOP first
            "analyzeduration": "0",
            "probesize": "32",
        }
        container = av.open(
            self.location,
            options=options if self.live else {},
            timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S),
        )
        try:
            video = next((s for s in container.streams if s.type == "video"), None)
            if video is None:
                raise SourceError(f"{self.display} has no video stream")
            name = video.codec_context.name
            if name != "h264":
                raise SourceError(
                    f"{self.display} sends {name}: only H.264 is passed through "
                    "(set the camera's stream to H.264)"
                )
            self.connects += 1
            self._call(self.stream.restart)
            return self._deliver(container, video)
        finally:
            container.close()

    def _deliver(self, container: Any, video: Any) -> int:
        annex_b = BitStreamFilterContext("h264_mp4toannexb", video)
        base = video.time_base or fractions.Fraction(1, VIDEO_CLOCK_RATE)
        started, first_pts = time.monotonic(), None
        delivered = 0
        for packet in container.demux(video):
            if self._closing.is_set():
                break
            for unit in annex_b.filter(packet):
                if unit.size == 0:
                    continue
                pts = None if unit.pts is None else round(unit.pts * base * VIDEO_CLOCK_RATE)
                if not self.live and pts is not None:  # a file plays in real time
                    first_pts = pts if first_pts is None else first_pts
                    due = started + (pts - first_pts) / VIDEO_CLOCK_RATE
                    if self._closing.wait(max(0.0, due - time.monotonic())):
                        return delivered
                self._call(self.stream.publish, bytes(unit), pts)
                delivered += 1
                if delivered == 1:
                    self.status = "playing"
                    logger.info("video source: %s playing", self.display)
        return delivered

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(function, *args)


class OwnEncoder:
    """Decoded pictures from ``pictures`` encoded once per camera (H.264 or VP8).

    The encoder runs while at least one session's track is live (and
    :data:`ENCODER_LINGER_S` after the last one stopped), starts with a keyframe, makes one
    every ``keyframe_interval`` frames and whenever a viewer asks. H.264 is Constrained
    Baseline (libx264, zero latency), which every WebRTC peer decodes.
    """

    def __init__(
        self,
        pictures: VideoSource,
        mime: str = H264,
        *,
        bitrate_kbps: int = 1000,
        keyframe_interval: int = 60,
        name: str = "camera",
    ) -> None:
        if keyframe_interval < 1:
            raise ValueError("keyframe_interval must be at least 1 frame")
        self.pictures = pictures
        self.bitrate_kbps = bitrate_kbps
        self.keyframe_interval = keyframe_interval
        self.stream = EncodedStream(mime, name, make_keyframe=self._make_keyframe)
        self.description = f"{name} (encoded once to {self.stream.mime.removeprefix('video/')})"
        self.status = "playing"
        self._task: asyncio.Task[None] | None = None
        self._keyframe_wanted = False

    def track(self) -> EncodedTrack:
        track = self.stream.track()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._encode(), name=f"OwnEncoder({self.stream.name})")
        return track

    async def start(self) -> None:
        """Nothing to start: the encoder starts with the first session."""

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.stream.stop()

    def _make_keyframe(self) -> None:
        self._keyframe_wanted = True

    def _context(self, width: int, height: int) -> Any:
        if self.stream.mime == H264:
            context = av.CodecContext.create("libx264", "w")
            level = "3.1" if width * height <= 1280 * 720 else "4.0"  # x264 guesses 6.2
            context.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": "baseline",
                "level": level,
            }
        else:
            context = av.CodecContext.create("libvpx", "w")
            context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        # The rate control shares the bit rate among frames at this rate; without it x264
        # takes 1 / time_base, 90,000 frames a second, and starves every frame but the
        # keyframes (measured: 23-byte P-frames, 4 kbit/s of a 1,000 asked, a picture that
        # moved only at keyframes). A source that does not say gets the agent's default.
        fps = getattr(self.pictures, "fps", None) or DEFAULT_FPS
        context.framerate = fractions.Fraction(fps).limit_denominator(1001)
        context.bit_rate = self.bitrate_kbps * 1000
        context.gop_size = self.keyframe_interval
        context.max_b_frames = 0
        return context

    async def _encode(self) -> None:
        pictures = self.pictures.track()
        context: Any = None
        idle_since: float | None = None
        try:
            while True:
                if self.stream.sessions:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > ENCODER_LINGER_S:
                    return
                try:
                    frame = await pictures.recv()
                except MediaStreamError:
                    logger.warning("%s: the pictures ended", self.stream.name)
                    self.status = "the video source ended"
                    return
                if context is None or (context.width, context.height) != (
                    frame.width,
                    frame.height,
                ):
                    context = self._context(frame.width, frame.height)
                    self.stream.restart()
                if self._keyframe_wanted:
                    self._keyframe_wanted = False
                    frame.pict_type = PictureType.I
                packets = await asyncio.to_thread(context.encode, frame)
                for packet in packets:
                    self.stream.publish(bytes(packet), packet.pts)
        finally:
            pictures.stop()


Source = PassthroughSource | OwnEncoder


def open_source(
    spec: str,
    *,
    synthetic: Callable[[], VideoSource],
    codec: str = "h264",
    keyframe_interval: int = 60,
    bitrate_kbps: int = 1000,
) -> Source:
    """The source ``spec`` names: ``synthetic``, ``rtsp://…``, ``/dev/videoN`` or a file.

    A file that holds H.264 is passed through; another codec is decoded and encoded once.
    Raises :class:`SourceError` for a file or device that cannot be opened.
    """
    mime = {"h264": H264, "vp8": VP8}[codec]
    if spec == "synthetic":
        return OwnEncoder(
            synthetic(),
            mime,
            bitrate_kbps=bitrate_kbps,
            keyframe_interval=keyframe_interval,
            name="synthetic",
        )
    if spec.startswith(("rtsp://", "rtsps://")):
        return PassthroughSource(spec)
    from device_sim.media import FileVideo

    if spec.startswith("/dev/video"):
        try:
            device = FileVideo(spec, format="v4l2", loop=False)
        except Exception as exc:
            raise SourceError(describe_failure(exc, spec, None)) from exc
        return OwnEncoder(
            device, mime, bitrate_kbps=bitrate_kbps, keyframe_interval=keyframe_interval, name=spec
        )
    try:
        with av.open(spec) as probe:
            video = next((s for s in probe.streams if s.type == "video"), None)
            if video is None:
                raise SourceError(f"{spec} has no video stream")
            name = video.codec_context.name
    except av.error.FFmpegError as exc:
        raise SourceError(describe_failure(exc, spec, None)) from exc
    if name == "h264":
        return PassthroughSource(spec)
    return OwnEncoder(
        FileVideo(spec),
        mime,
        bitrate_kbps=bitrate_kbps,
        keyframe_interval=keyframe_interval,
        name=spec,
    )


def snapshot_jpeg(source: Source) -> bytes | None:
    """A JPEG of the source's picture now (CPU-bound: call it in a thread), ``None`` when it
    has none yet. The agent's own synthetic scene draws it; any other source decodes its
    stream's current GOP (an RTSP camera's, or what the agent encoded last)."""
    pictures = getattr(source, "pictures", None)
    if isinstance(pictures, SyntheticVideo):
        image = pictures.picture(pictures.index_at(pictures.elapsed()))
    else:
        frame = source.stream.picture()
        if frame is None:
            return None
        image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return bytes(encoded) if ok else None
