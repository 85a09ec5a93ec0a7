"""A camera's encoded video, shared by every session: one source, one encoding, many senders.

A real camera encodes once and streams the same H.264 to whoever watches. The agent does
the same: a source (an RTSP camera, a file, or the agent's own encoder,
:mod:`device_sim.sources`) publishes encoded frames into an :class:`EncodedStream`, and each
viewer session sends them through its own :class:`EncodedTrack`, whose ``recv()`` returns
``av.Packet`` objects that aiortc's sender packetizes without encoding
(``RTCRtpSender._next_encoded_frame``, ``H264Encoder.pack``); every session is handed the
very same packet objects.

A new session must start at a keyframe, and an RTSP camera cannot be asked for one. So the
stream keeps the current GOP and a new track starts with it at once, paced
(:mod:`peer.gop`; a passthrough prototype without it kept a new viewer waiting 2.3 s for
the camera's next keyframe). A viewer's keyframe request (PLI/FIR) restarts its track from
the cached GOP, or, where the source can make keyframes (the agent's own encoder), asks the
source for one.

Timestamps: each frame is stamped in 1/90000 s on the stream's own timeline, which follows
the wall clock across source restarts (an RTSP reconnect, a looped file): the first frame
after :meth:`EncodedStream.restart` continues from the time it arrives, later ones keep the
source's own spacing.

Everything here runs on the event loop; sources in threads publish through
``loop.call_soon_threadsafe``.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError
from av import Packet, VideoFrame

from peer.codecs import (
    H264,
    VP8,
    ParameterSets,
    VideoCodec,
    is_h264_keyframe,
    is_vp8_keyframe,
    profile_level_id,
)
from peer.gop import VIDEO_TIME_BASE, Gop, GopTrack

logger = logging.getLogger(__name__)

TRACK_QUEUE_FRAMES = 30  # about 2 s at 15 fps: a sender further behind restarts at the GOP


class EncodedStream:
    """One camera's encoded frames (``mime``: :data:`~peer.codecs.H264` or ``VP8``).

    Sources call :meth:`publish` per frame (H.264 as an Annex B access unit, VP8 as a
    frame), :meth:`restart` when their stream starts over, :meth:`stop` when it ends for
    good. Sessions call :meth:`track`. ``make_keyframe``, when the source can, makes the
    next frame a keyframe. :attr:`codec` is known from the first keyframe on
    (:meth:`wait_codec`): for H.264 it carries the stream's profile-level-id.
    """

    def __init__(
        self, mime: str, name: str, *, make_keyframe: Callable[[], None] | None = None
    ) -> None:
        if mime not in (H264, VP8):
            raise ValueError(f"cannot stream {mime}: only H.264 and VP8")
        self.mime = mime
        self.name = name
        self.make_keyframe = make_keyframe
        self.codec: VideoCodec | None = None
        self.frames = 0
        self.keyframes = 0
        self._gop = Gop()
        self._tracks: list[EncodedTrack] = []
        self._parameter_sets = ParameterSets()
        self._offset: int | None = None  # source timestamp -> stream timestamp
        self._last_pts = -1
        self._start = time.monotonic()
        self._stopped = False
        self._has_codec = asyncio.Event()

    @property
    def sessions(self) -> int:
        """Tracks currently fed by this stream."""
        return len(self._tracks)

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def wait_codec(self, timeout_s: float) -> VideoCodec | None:
        """The stream's codec, once its first keyframe came; ``None`` after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._has_codec.wait()
        return self.codec

    def track(self) -> "EncodedTrack":
        """A new track for one session: the cached GOP at once, then every new frame."""
        if self._stopped:
            raise MediaStreamError(f"{self.name} has stopped")
        track = EncodedTrack(self)
        self._tracks.append(track)
        return track

    def publish(self, data: bytes, pts: int | None = None) -> None:
        """A frame from the source; ``pts`` in 1/90000 s on the source's own timeline."""
        if self._stopped or not data:
            return
        if self.mime == H264:
            data = self._parameter_sets.complete(data)
            keyframe = is_h264_keyframe(data)
        else:
            keyframe = is_vp8_keyframe(data)
        packet = Packet(data)
        packet.pts = self._stamp(pts)
        packet.time_base = VIDEO_TIME_BASE
        self.frames += 1
        self._gop.add(packet, keyframe)
        if keyframe:
            self.keyframes += 1
            self._learn_codec()
        for track in self._tracks:
            track._push(packet, keyframe)

    def picture(self) -> "VideoFrame | None":
        """The stream's latest frame, decoded from its cached GOP (CPU-bound: call it in a
        thread); ``None`` before the first keyframe."""
        frames = self._gop.frames()
        if not frames:
            return None
        decoder = av.CodecContext.create("h264" if self.mime == H264 else "libvpx", "r")
        latest = None
        for packet in frames:
            for frame in decoder.decode(Packet(bytes(packet))):
                latest = frame
        return latest

    def restart(self) -> None:
        """The source starts over (reconnected, looped): frames so far are no reference."""
        self._gop.clear()
        self._offset = None
        for track in self._tracks:
            track._restart_at_keyframe()

    def stop(self) -> None:
        """The source ended for good: every track ends (``MediaStreamError``)."""
        self._stopped = True
        self._gop.clear()
        for track in list(self._tracks):
            track.stop()

    def _learn_codec(self) -> None:
        if self.codec is not None and self.mime == VP8:
            return
        if self.mime == H264:
            sps = self._parameter_sets.sps
            codec = VideoCodec(H264, profile_level_id(sps) if sps else None)
        else:
            codec = VideoCodec(VP8)
        if codec != self.codec:
            logger.info("%s: %s", self.name, codec)
            self.codec = codec
        self._has_codec.set()

    def _stamp(self, pts: int | None) -> int:
        now = round((time.monotonic() - self._start) * VIDEO_CLOCK_RATE)
        if pts is None:
            stamped = now
        else:
            if self._offset is None:
                self._offset = now - pts
            stamped = pts + self._offset
        stamped = max(stamped, self._last_pts + 1)
        self._last_pts = stamped
        return stamped

    def _remove(self, track: "EncodedTrack") -> None:
        if track in self._tracks:
            self._tracks.remove(track)


class EncodedTrack(GopTrack):
    """One session's video: the stream's encoded frames (see :class:`peer.gop.GopTrack`).

    A viewer's keyframe request makes the source encode one where it can (the agent's own
    encoder); a passthrough session starts over from the cached GOP instead.
    """

    def __init__(self, stream: EncodedStream) -> None:
        super().__init__(stream._gop, stream.name, TRACK_QUEUE_FRAMES)
        self.stream = stream

    @property
    def codec(self) -> VideoCodec | None:
        return self.stream.codec

    def request_keyframe(self) -> None:
        if self.readyState == "live" and self.stream.make_keyframe is not None:
            if self._answer_request():  # at most one per KEYFRAME_REQUEST_INTERVAL_S
                self.restarts += 1
                self.stream.make_keyframe()
        else:
            super().request_keyframe()

    def _left(self) -> None:
        self.stream._remove(self)
