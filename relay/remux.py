"""Clips put into files without decoding or encoding: H.264 into MP4, VP8 into WebM (for
:mod:`relay.clips`).

The files, as measured in headless Chromium (tests/web/test_clips_play.py) and libavformat
(tests/relay/test_clips.py):

- A growing H.264 clip is a fragmented MP4 (``empty_moov``, a fragment at least every
  :data:`FRAGMENT_S`), written into one growing buffer, so any prefix handed out is a
  playable file and an upload costs a copy of the buffer, not a remux (bench/clips.py,
  docs/benchmarks.md "Clip remuxing": 0.05 % of a core for a 720p 2 Mbit/s clip; remuxing
  from scratch at every upload, 1-2 %). Chromium plays such a prefix to its end but
  reports a wrong ``duration`` even for the complete fragmented file (2 s for a 6 s clip,
  trailer and ``mfra`` written), so the final clip is remuxed once more, from that buffer,
  into a plain MP4 whose ``moov`` (with the duration) comes first: ``faststart`` needs a
  file to reopen, so the ``moov`` space is reserved up front (``moov_size``) instead. That
  file reports the right duration.
- A VP8 clip is WebM. A prefix plays (``duration`` is ``Infinity`` until the end); closing
  the muxer writes the duration and cues, and the final file reports the right duration.
- FFmpeg's ``mp4`` muxer takes the Annex B packets as they are: with Annex B extradata it
  writes the ``avcC`` from it and turns every packet into length-prefixed NAL units
  (``movenc``); the NAL units are the camera's bytes (demuxed with ``h264_mp4toannexb``,
  only the start codes' length may differ). The stream's parameters come from FFmpeg's own
  demuxer reading the clip's first keyframe (raw H.264, or VP8 in a one-frame IVF):
  PyAV's ``add_stream("h264")`` would open a libx264 encoder and put *its* SPS/PPS (High
  profile) into the ``avcC`` instead of the camera's.

Timestamps are the packets' ``pts`` rebased to start at 0; each packet lasts until the next
one (the last as long as the one before it), so a clip is held back by one frame. Packets
must come in decode order with increasing ``pts`` (WebRTC streams have no B-frames); a
``pts`` that does not increase is moved one tick after the previous one.
"""

import fractions
import io
import logging
import struct
from collections.abc import Sequence
from typing import Any, Literal

import av
import av.error
from av import Packet
from av.container import InputContainer

logger = logging.getLogger(__name__)

CLOCK_RATE = 90000
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
FRAGMENT_S = 1.0  # a growing MP4 clip is playable up to at most this far behind its newest frame
DEFAULT_FRAME_TICKS = CLOCK_RATE // 15  # the duration of a clip's only frame

Codec = Literal["h264", "vp8"]
Entry = tuple["Packet[Any]", bool]  # an encoded frame and whether it is a keyframe

CONTENT_TYPES: dict[str, str] = {"h264": "video/mp4", "vp8": "video/webm"}


class ClipError(Exception):
    """A clip cannot be made from these packets (e.g. a keyframe without SPS/PPS)."""


def vp8_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe's header (RFC 6386 section 9.1)."""
    if len(keyframe) < 10 or keyframe[0] & 1 or keyframe[3:6] != b"\x9d\x01\x2a":
        raise ClipError("not a VP8 keyframe")
    width, height = struct.unpack("<HH", keyframe[6:10])
    return width & 0x3FFF, height & 0x3FFF


def _template(codec: Codec, keyframe: bytes) -> InputContainer:
    """FFmpeg's demuxer on the clip's first keyframe alone: its stream carries the codec
    parameters (size, and for H.264 the SPS/PPS as extradata) for the output stream."""
    if codec == "h264":
        source, format = keyframe, "h264"
    else:
        width, height = vp8_size(keyframe)
        header = struct.pack(
            "<4sHH4sHHIIII", b"DKIF", 0, 32, b"VP80", width, height, 90000, 1, 1, 0
        )
        source, format = header + struct.pack("<IQ", len(keyframe), 0) + keyframe, "ivf"
    try:
        container = av.open(io.BytesIO(source), "r", format=format)
    except av.error.FFmpegError as exc:
        raise ClipError(f"cannot read the {codec} keyframe: {exc}") from exc
    stream = container.streams.video[0] if container.streams.video else None
    if (
        stream is None
        or not stream.codec_context.width
        or (codec == "h264" and not stream.codec_context.extradata)
    ):
        container.close()
        raise ClipError(f"the {codec} keyframe does not say the stream's parameters")
    return container


class ClipMuxer:
    """One clip's packets remuxed, never decoded nor encoded: H.264 into MP4, VP8 into WebM.

    :meth:`add` the packets in order, the first a keyframe (for H.264 with its SPS/PPS, as
    the fan-out sends keyframes); :meth:`snapshot` is the clip so far, a playable file;
    :meth:`finish` the complete file. The output grows in one buffer as packets come (see
    the module docstring), so a snapshot costs a copy of it, not a remux. :meth:`finish` is
    CPU work (a remux of the whole clip for H.264): run it in a worker thread, after the
    last :meth:`add`.
    """

    def __init__(self, codec: Codec) -> None:
        if codec not in CONTENT_TYPES:
            raise ValueError(f"no clips of {codec}")
        self.codec: Codec = codec
        self.content_type = CONTENT_TYPES[codec]
        self.frames = 0  # muxed (the newest packet waits for the next one)
        self.first_pts: int | None = None
        self._buffer = io.BytesIO()
        self._output: Any = None
        self._stream: Any = None
        self._header_size = 0
        self._pending: tuple[bytes, int, bool] | None = None
        self._last_pts = -1
        self._last_ticks = DEFAULT_FRAME_TICKS
        self._end_pts = 0
        self._finished = False

    @property
    def duration_s(self) -> float:
        """The length of what was added so far (the held-back frame counted)."""
        if self.first_pts is None:
            return 0.0
        return (self._end_pts - self.first_pts + self._last_ticks) / CLOCK_RATE

    def add(self, packet: "Packet[Any]", keyframe: bool) -> None:
        """The clip's next packet (``pts`` in 1/90000 s). Raises :class:`ClipError` when the
        first is not a keyframe that says the stream's parameters."""
        if self._finished:
            raise RuntimeError("the clip is finished")
        data, pts = bytes(packet), packet.pts or 0
        if self._output is None:
            if not keyframe:
                raise ClipError("a clip starts at a keyframe")
            self._open(data)
            self.first_pts = pts
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # decode order must not go back (see the module docstring)
        self._last_pts = pts
        if self._pending is not None:
            self._mux(*self._pending, pts - self._pending[1])
        self._pending = (data, pts, keyframe)
        self._end_pts = pts

    def snapshot(self) -> bytes | None:
        """The clip so far, a playable file; ``None`` while it holds no frame yet."""
        if self._output is None or self._buffer.tell() <= self._header_size:
            return None
        return self._buffer.getvalue()

    def finish(self) -> bytes | None:
        """The complete clip (``None`` if it has no frame); nothing may be added after."""
        if self._finished:
            raise RuntimeError("the clip is finished")
        self._finished = True
        if self._output is None:
            return None
        if self._pending is not None:
            self._mux(*self._pending, self._last_ticks)
            self._pending = None
        self._output.close()
        if self.codec == "vp8":
            return self._buffer.getvalue()
        return self._moov_first(self._buffer.getvalue())

    def _open(self, keyframe: bytes) -> None:
        if self.codec == "h264":
            options = {
                "movflags": "empty_moov+default_base_moof",
                "frag_duration": str(round(FRAGMENT_S * 1e6)),
                "flush_packets": "1",
            }
            format = "mp4"
        else:
            options = {"cluster_time_limit": str(round(FRAGMENT_S * 1000)), "flush_packets": "1"}
            format = "webm"
        with _template(self.codec, keyframe) as template:
            output = av.open(self._buffer, "w", format=format, options=options)
            self._stream = output.add_stream_from_template(template.streams.video[0])
        self._stream.time_base = TIME_BASE
        output.start_encoding()
        self._output = output
        self._header_size = self._buffer.tell()

    def _mux(self, data: bytes, pts: int, keyframe: bool, ticks: int) -> None:
        assert self.first_pts is not None
        self._last_ticks = max(1, ticks)
        packet = Packet(data)
        packet.pts = packet.dts = pts - self.first_pts
        packet.duration = self._last_ticks
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        packet.stream = self._stream
        self._output.mux(packet)
        self.frames += 1

    def _moov_first(self, fragmented: bytes) -> bytes:
        """The fragmented MP4 remuxed into one whose ``moov`` (with the duration) leads."""
        # stsz, stco, stts and stss take at most ~20 bytes a sample; what is left is a free box
        reserve = 4096 + 24 * self.frames
        try:
            return _remux_mp4(fragmented, {"moov_size": str(reserve)})
        except av.error.FFmpegError:
            logger.warning("clip: moov_size %d too small; moov at the end", reserve)
            return _remux_mp4(fragmented, {})


def _remux_mp4(source: bytes, options: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with (
        av.open(io.BytesIO(source), "r", format="mp4") as input,
        av.open(buffer, "w", format="mp4", options=options) as output,
    ):
        video = input.streams.video[0]
        stream = output.add_stream_from_template(video)
        for packet in input.demux(video):
            if packet.size:
                packet.stream = stream
                output.mux(packet)
    return buffer.getvalue()


def remux(codec: Codec, entries: Sequence[Entry]) -> bytes | None:
    """The complete clip of ``entries`` (from a keyframe), in one go (blocking)."""
    muxer = ClipMuxer(codec)
    for packet, keyframe in entries:
        muxer.add(packet, keyframe)
    return muxer.finish()
