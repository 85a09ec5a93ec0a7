"""Event clips: the seconds of a camera's video around an event thread, as the camera encoded
them (issue 12 item 2).

A relay node keeps the last seconds of each analysed camera's encoded packets
(:class:`PreRoll`); an event thread's clip (:class:`ClipRecorder`) starts from there, takes
the live packets until the thread ends plus a post-roll (or a length cap), and is uploaded
while the thread runs, so that it plays before the event ends. :class:`ClipMuxer` puts the
packets into a file without decoding or encoding them: H.264 into MP4, VP8 into WebM. Pure
media: no HTTP (``upload`` is injected), no clock but the packets' ``pts`` (1/90000 s, as
:class:`relay.media.Fanout` stamps them) and the uploader's pacing.

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

import asyncio
import contextlib
import fractions
import io
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
MAX_PREROLL_BYTES = 32 * 1024 * 1024  # about 2 min of 2 Mbit/s
MAX_PREROLL_FRAMES = 3600  # 2 min at 30 fps
FINAL_ATTEMPTS = 3

Codec = Literal["h264", "vp8"]
Entry = tuple["Packet[Any]", bool]  # an encoded frame and whether it is a keyframe
Upload = Callable[[bytes, bool, str], Awaitable[None]]

CONTENT_TYPES: dict[str, str] = {"h264": "video/mp4", "vp8": "video/webm"}


class ClipError(Exception):
    """A clip cannot be made from these packets (e.g. a keyframe without SPS/PPS)."""


class PreRoll:
    """The last ``seconds`` (at least) of one camera's encoded packets, from a keyframe.

    Fed every packet the fan-out forwards (:meth:`add`). It holds whole GOPs: the oldest is
    dropped once the next GOP's keyframe is itself ``seconds`` or more before the newest
    packet, so what is held starts at a keyframe and covers at least ``seconds`` (once that
    much has been received). Packets before the first keyframe are useless and not kept.
    Memory is bounded also when keyframes stop coming: past ``max_bytes`` or ``max_frames``
    the oldest GOPs go, and when the current GOP alone is too big everything goes until the
    next keyframe.

    Not :class:`peer.gop.Gop`, which the fan-out keeps to start a viewer at once: that holds
    only the current GOP (from the latest keyframe), this holds several seconds before it,
    since a clip shows what led to the event. The packets are the fan-out's own objects,
    shared with every viewer: read-only.
    """

    def __init__(
        self,
        seconds: float = 5.0,
        *,
        max_bytes: int = MAX_PREROLL_BYTES,
        max_frames: int = MAX_PREROLL_FRAMES,
    ) -> None:
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._gops: deque[list[Entry]] = deque()
        self._bytes = 0
        self._frames = 0

    def __len__(self) -> int:
        """The number of packets held."""
        return self._frames

    @property
    def size(self) -> int:
        """The bytes held."""
        return self._bytes

    @property
    def newest_pts(self) -> int | None:
        """The ``pts`` of the newest packet held, ``None`` when empty."""
        return self._gops[-1][-1][0].pts if self._gops else None

    @property
    def oldest_pts(self) -> int | None:
        """The ``pts`` of the oldest packet held (a keyframe), ``None`` when empty."""
        return self._gops[0][0][0].pts if self._gops else None

    def add(self, packet: "Packet[Any]", keyframe: bool) -> None:
        """The camera's next packet (``pts`` in 1/90000 s)."""
        if keyframe:
            self._gops.append([(packet, True)])
        elif self._gops:
            self._gops[-1].append((packet, False))
        else:
            return
        self._bytes += packet.size
        self._frames += 1
        newest = packet.pts or 0
        horizon = round(self.seconds * CLOCK_RATE)
        while len(self._gops) > 1 and newest - (self._gops[1][0][0].pts or 0) >= horizon:
            self._drop_oldest()
        while self._gops and (self._bytes > self.max_bytes or self._frames > self.max_frames):
            self._drop_oldest()

    def since(self, pts: int) -> list[Entry]:
        """The packets from the last keyframe at or before ``pts`` (or from the oldest
        keyframe held, if ``pts`` is older), to the newest; empty before any keyframe."""
        start = 0
        for index, gop in enumerate(self._gops):
            if (gop[0][0].pts or 0) <= pts:
                start = index
            else:
                break
        return [entry for gop in list(self._gops)[start:] for entry in gop]

    def clear(self) -> None:
        self._gops.clear()
        self._bytes = self._frames = 0

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._bytes -= sum(packet.size for packet, _ in gop)
        self._frames -= len(gop)


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


@dataclass(frozen=True)
class ClipSettings:
    """Clip timing: ``pre_roll_s`` before the thread's start (from the keyframe at or before
    it; the node's :class:`PreRoll` must hold at least that), ``post_roll_s`` after its end,
    at most ``max_clip_s`` in all; an upload every ``upload_every_s`` while it grows, each
    given ``upload_timeout_s``."""

    pre_roll_s: float = 5.0
    post_roll_s: float = 5.0
    max_clip_s: float = 120.0
    upload_every_s: float = 2.0
    upload_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if min(self.pre_roll_s, self.post_roll_s) < 0:
            raise ValueError("pre_roll_s and post_roll_s must not be negative")
        if self.max_clip_s <= 0 or self.upload_every_s <= 0 or self.upload_timeout_s <= 0:
            raise ValueError("max_clip_s, upload_every_s and upload_timeout_s must be positive")


class ClipRecorder:
    """One event thread's clip: from the pre-roll to the thread's end plus the post-roll.

    Created on the event loop when the thread opens, with the camera's codec (``"h264"`` or
    ``"vp8"``, :attr:`relay.media.Fanout.codec`), its :class:`PreRoll` and ``start_pts`` (the
    thread's start as a packet ``pts``; ``None``: the newest packet held). It starts with
    ``preroll.since(start_pts - pre_roll)``; then feed it every live packet (:meth:`add`, from
    the fan-out's listener, after the pre-roll's own ``add``). :meth:`end` when the thread
    ends: it takes ``post_roll_s`` more of the stream and finishes. A clip reaching
    ``max_clip_s`` finishes early (:attr:`reason` ``"cap"``); :meth:`close` finishes it now
    (the camera left, the node stops) and waits for the final upload.

    Uploads: ``upload(data, final, content_type)`` with the whole clip so far, every
    ``upload_every_s`` while it grows (when it grew) and once at the finish with
    ``final=True`` (the complete file; retried up to :data:`FINAL_ATTEMPTS` times). One
    upload is in flight at a time, in a task the recorder owns; packet intake never waits
    for it, and an upload that starts late takes the newest clip. A failed or timed-out
    upload is logged; the next one carries the data again. A clip with no keyframe uploads
    nothing.
    """

    def __init__(
        self,
        codec: Codec,
        preroll: PreRoll,
        upload: Upload,
        *,
        start_pts: int | None = None,
        settings: ClipSettings | None = None,
        name: str = "clip",
    ) -> None:
        self.settings = settings or ClipSettings()
        self.name = name
        self.muxer = ClipMuxer(codec)
        self.reason: str | None = None  # why it finished: "ended", "cap", "closed", "error"
        self.uploads = 0  # completed
        self.failed_uploads = 0
        self._upload = upload
        self._end_pts: int | None = None
        self._last_pts: int | None = None
        self._finished = asyncio.Event()
        self._uploaded_frames = 0
        if start_pts is None:
            start_pts = preroll.newest_pts or 0
        for packet, keyframe in preroll.since(
            start_pts - round(self.settings.pre_roll_s * CLOCK_RATE)
        ):
            self.add(packet, keyframe)
        self._task = asyncio.create_task(self._uploads(), name=f"ClipRecorder({name})")

    @property
    def finished(self) -> bool:
        """Whether the clip takes no more packets (its final upload may still be running)."""
        return self._finished.is_set()

    @property
    def done(self) -> bool:
        """Whether the final upload is over (made, failed, or nothing to upload)."""
        return self._task.done()

    def add(self, packet: "Packet[Any]", keyframe: bool) -> None:
        """The camera's next packet; ignored once finished, before the first keyframe, or
        when not newer than the last one taken (so a packet the pre-roll gave is not taken
        twice)."""
        if self._finished.is_set():
            return
        pts = packet.pts or 0
        if self._last_pts is not None and pts <= self._last_pts:
            return
        if self.muxer.first_pts is None and not keyframe:
            return
        try:
            self.muxer.add(packet, keyframe)
        except ClipError as exc:
            logger.warning("ClipRecorder(%s) cannot start at this keyframe: %s", self.name, exc)
            return
        self._last_pts = pts
        first = self.muxer.first_pts or 0
        if pts - first >= self.settings.max_clip_s * CLOCK_RATE:
            self._finish("cap")
        elif self._end_pts is not None and pts - self._end_pts >= self._post_roll_ticks:
            self._finish("ended")

    def end(self, pts: int | None = None) -> None:
        """The thread ended at ``pts`` (``None``: the newest packet taken); idempotent."""
        if self._end_pts is not None or self._finished.is_set():
            return
        self._end_pts = pts if pts is not None else (self._last_pts or 0)
        if self._last_pts is not None and self._last_pts - self._end_pts >= self._post_roll_ticks:
            self._finish("ended")

    async def wait(self) -> None:
        """Until the final upload is over."""
        await asyncio.shield(self._task)

    async def close(self) -> None:
        """Finish now and wait for the final upload (an upload in flight, then the final's
        attempts, each within ``upload_timeout_s``); cancel it if it takes longer still."""
        self._finish("closed")
        limit = self.settings.upload_timeout_s * (FINAL_ATTEMPTS + 2)
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(self._task)
        except TimeoutError:
            logger.warning("ClipRecorder(%s) final upload took over %s s", self.name, limit)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def _post_roll_ticks(self) -> int:
        return round(self.settings.post_roll_s * CLOCK_RATE)

    def _finish(self, reason: str) -> None:
        if not self._finished.is_set():
            self.reason = reason
            self._finished.set()
            logger.info(
                "ClipRecorder(%s) finished (%s): %d frames, %.1f s",
                self.name,
                reason,
                self.muxer.frames,
                self.muxer.duration_s,
            )

    async def _uploads(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.settings.upload_every_s
        due = loop.time() + every
        while not self._finished.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await self._finished.wait()
            if self._finished.is_set():
                break
            due = loop.time() + every
            if self.muxer.frames > self._uploaded_frames:
                data = self.muxer.snapshot()
                if data is not None:
                    frames = self.muxer.frames
                    if await self._send(data, final=False):
                        self._uploaded_frames = frames
                due = max(due, loop.time())
        try:
            final = await asyncio.to_thread(self.muxer.finish)
        except Exception:
            logger.exception("ClipRecorder(%s) could not finish the clip", self.name)
            self.reason = "error"
            return
        if final is None:
            logger.info("ClipRecorder(%s) has no keyframe: nothing to upload", self.name)
            return
        for attempt in range(FINAL_ATTEMPTS):
            if attempt:
                await asyncio.sleep(attempt)
            if await self._send(final, final=True):
                return

    async def _send(self, data: bytes, final: bool) -> bool:
        try:
            async with asyncio.timeout(self.settings.upload_timeout_s):
                await self._upload(data, final, self.muxer.content_type)
        except Exception as exc:  # the next upload carries the data again
            self.failed_uploads += 1
            logger.warning(
                "ClipRecorder(%s) upload of %d bytes (final=%s) failed: %r",
                self.name,
                len(data),
                final,
                exc,
            )
            return False
        self.uploads += 1
        return True


def remux(codec: Codec, entries: Sequence[Entry]) -> bytes | None:
    """The complete clip of ``entries`` (from a keyframe), in one go (blocking)."""
    muxer = ClipMuxer(codec)
    for packet, keyframe in entries:
        muxer.add(packet, keyframe)
    return muxer.finish()
