"""Event clips: the seconds of a camera's video around an event thread, as the camera encoded
them (issue 12 item 2).

A relay node keeps the last seconds of each analysed camera's encoded packets
(:class:`PreRoll`); an event thread's clip (:class:`ClipRecorder`) starts from there, takes
the live packets until the thread ends plus a post-roll (or a length cap), and is uploaded
while the thread runs, so that it plays before the event ends. :class:`relay.remux.ClipMuxer` puts
the packets into a file without decoding or encoding them: H.264 into MP4, VP8 into WebM. Pure
media: no HTTP (``upload`` is injected), no clock but the packets' ``pts`` (1/90000 s, as
:class:`relay.media.Fanout` stamps them) and the uploader's pacing.

The muxing and the files it makes are :mod:`relay.remux`'s.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from av import Packet

from relay.remux import CLOCK_RATE, ClipError, ClipMuxer, Codec, Entry

logger = logging.getLogger(__name__)

MAX_PREROLL_BYTES = 32 * 1024 * 1024  # about 2 min of 2 Mbit/s
MAX_PREROLL_FRAMES = 3600  # 2 min at 30 fps
FINAL_RETRY_FOR_S = 120.0  # the final upload is tried again for this long (an outage)
FINAL_RETRY_FIRST_S = 1.0  # between tries: 1 s, 2 s, 4 s... up to FINAL_RETRY_MAX_S
FINAL_RETRY_MAX_S = 10.0

Upload = Callable[[bytes, bool, str], Awaitable[None]]


class UploadRefused(Exception):
    """The cloud refused an upload for good (a 4xx such as a removed camera): trying the
    same again cannot help."""


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
        ``final=True`` (the complete file; retried with backoff for :data:`FINAL_RETRY_FOR_S`,
    so that it outlives a cloud or database outage, unless it is refused for good). One
        upload is in flight at a time, in a task the recorder owns; packet intake never waits
        for it, an upload that starts late takes the newest clip, and the final upload does
        not wait for a non-final one in flight: it cancels it. A failed or timed-out
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
        self._refused = False  # the cloud refused an upload for good
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
        tries, each within ``upload_timeout_s``); cancel it if it takes longer still."""
        self._finish("closed")
        limit = self.settings.upload_timeout_s * 2 + FINAL_RETRY_FOR_S + FINAL_RETRY_MAX_S
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
                    if await self._send_unless_finished(data):
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
        give_up = loop.time() + FINAL_RETRY_FOR_S
        pause = FINAL_RETRY_FIRST_S
        while not await self._send(final, final=True):
            if self._refused or loop.time() + pause > give_up:
                logger.error(
                    "ClipRecorder(%s) final upload of %d bytes abandoned after %d failures",
                    self.name,
                    len(final),
                    self.failed_uploads,
                )
                return
            await asyncio.sleep(pause)
            pause = min(FINAL_RETRY_MAX_S, pause * 2)

    async def _send_unless_finished(self, data: bytes) -> bool:
        """A non-final upload, abandoned when the clip finishes meanwhile: the final upload
        replaces it at once instead of waiting behind it (the cloud never lets a non-final
        upload replace a final one, and a half-sent body is never stored)."""
        sending = asyncio.create_task(self._send(data, final=False))
        finishing = asyncio.create_task(self._finished.wait())
        try:
            await asyncio.wait((sending, finishing), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled: nothing is left running
            finishing.cancel()
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
                logger.info("ClipRecorder(%s) dropped an upload in flight", self.name)
        return not sending.cancelled() and sending.result()

    async def _send(self, data: bytes, final: bool) -> bool:
        try:
            async with asyncio.timeout(self.settings.upload_timeout_s):
                await self._upload(data, final, self.muxer.content_type)
        except Exception as exc:  # the next upload carries the data again
            self.failed_uploads += 1
            self._refused = isinstance(exc, UploadRefused)
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
