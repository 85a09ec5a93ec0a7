"""The current GOP of an encoded stream, and the viewer track that starts from it at once
(the agent's :mod:`device_sim.stream` and the relay's :mod:`relay.media`).

A viewer must start at a keyframe. Waiting for the source's next one costs up to a whole
keyframe interval (an IP camera's is often 2-4 s, and it cannot be asked for one), and
asking a camera for one (PLI) disturbs every other viewer of it. So whoever fans a stream
out keeps every frame since the latest keyframe (:class:`Gop`) and starts a new viewer with
them (:meth:`Gop.catch_up`): their timestamps squeezed one tick apart just after what that
viewer was sent last (and, for a new viewer, just before the newest frame), so it decodes
the GOP and shows the newest picture instead of replaying seconds of the past.

They are paced (:class:`Pacing`): sent at once, a 2 s GOP at 2 Mbit/s (~500 RTP packets)
overflowed the receiver's socket buffer even on loopback, and the lost packets were older
than aiortc's retransmission history, so the picture stayed broken until the next keyframe.

Keyframe requests are answered at most once per :data:`KEYFRAME_REQUEST_INTERVAL_S`, as
libwebrtc's sender does (300 ms): a decoder that lost its reference asks again for every
frame it cannot decode until the keyframe reaches it, a round trip later. aiortc's receiver
sends a PLI per failed frame: 8 within 60 ms when a session's first packet was lost on a
5 % loss link (tests/peer/test_lossy_link.py's setting), and each one restarted the whole
GOP catch-up (or, from the agent's encoder, made another keyframe for every session).

Importing this module raises aiortc's sender history for the whole process
(:mod:`peer.retransmission`): a catch-up sends more packets within one round trip than
aiortc's 128, and a packet lost early in it could not be sent again.
"""

import asyncio
import fractions
import logging
import time
from typing import Any

from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError, MediaStreamTrack
from av import Packet

from peer import retransmission

retransmission.raise_history()  # every sender of a GopTrack: the relay's and the agent's

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
MAX_GOP_FRAMES = 600  # 40 s at 15 fps: a stream without keyframes for longer is not cached
CATCH_UP_S = 0.25  # a GOP is paced out over at most this long
CATCH_UP_GAP_S = 0.008  # and at most this between two of its frames
POLL_S = 1.0  # the longest a track's wait goes without re-checking that it is live
KEYFRAME_REQUEST_INTERVAL_S = 0.3  # requests sooner after an answered one are ignored


class Gop:
    """The frames of a stream since its latest keyframe (``av.Packet`` with ``pts``)."""

    def __init__(self, max_frames: int = MAX_GOP_FRAMES) -> None:
        self.max_frames = max_frames
        self._frames: list[Packet[Any]] = []

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, packet: "Packet[Any]", keyframe: bool) -> None:
        """The stream's next frame (kept as it is: callers treat packets as read-only)."""
        if keyframe:
            self._frames = [packet]
        elif self._frames and len(self._frames) < self.max_frames:
            self._frames.append(packet)
        else:
            self._frames = []  # no keyframe yet, or for too long: nothing to start from

    def clear(self) -> None:
        self._frames = []

    def frames(self) -> list["Packet[Any]"]:
        """The cached frames, from the keyframe (read-only)."""
        return list(self._frames)

    def catch_up(self, after_pts: int) -> list["Packet[Any]"]:
        """Copies of the cached frames stamped one tick apart, ending at the newest frame's
        ``pts`` but never at or before ``after_pts`` (what the viewer was sent last)."""
        frames = self._frames
        if not frames:
            return []
        newest = frames[-1].pts or 0
        first = max(after_pts + 1, newest - len(frames) + 1)
        copies = []
        for n, cached in enumerate(frames):
            copy = Packet(bytes(cached))
            copy.pts = first + n
            copy.time_base = VIDEO_TIME_BASE
            copies.append(copy)
        return copies


class Pacing:
    """Spreads ``frames`` cached frames over at most :data:`CATCH_UP_S`; the first goes at
    once. Call :meth:`wait` before handing each of them to the sender."""

    def __init__(self, frames: int) -> None:
        self.left = frames
        self.gap_s = min(CATCH_UP_GAP_S, CATCH_UP_S / max(1, frames))
        self._first = True

    async def wait(self) -> None:
        if self.left <= 0:
            return
        self.left -= 1
        if self._first:
            self._first = False
            return
        await asyncio.sleep(self.gap_s)


class GopTrack(MediaStreamTrack):
    """One viewer's video: a stream's encoded frames as ``av.Packet`` objects, which aiortc's
    sender packetizes without encoding (``RTCRtpSender._next_encoded_frame``).

    It starts when its sender first asks for a frame (the viewer's connection is up): from
    the stream's cached GOP, paced, or, when none is cached, at the stream's next keyframe
    (:meth:`_no_gop` may ask for one). A viewer's keyframe request (:meth:`request_keyframe`)
    and a sender more than ``queue_frames`` behind start it over the same way. The stream
    calls :meth:`_push` with every frame (shared with every other viewer: read-only) and
    :meth:`_restart_at_keyframe` when it starts over. Stopping the track (aiortc does when
    the connection closes) ends :meth:`recv` and calls :meth:`_left`. :attr:`packets` counts
    what the sender took, :attr:`restarts` the times the track started over,
    :attr:`ignored_requests` the keyframe requests that came within
    :data:`KEYFRAME_REQUEST_INTERVAL_S` of an answered one (the module docstring says why).
    """

    kind = "video"

    def __init__(self, gop: Gop, name: str, queue_frames: int) -> None:
        super().__init__()
        self.name = name
        self.packets = 0
        self.restarts = 0
        self.ignored_requests = 0
        self._answered_at: float | None = None  # the last keyframe request answered
        self._gop = gop
        self._queue_frames = queue_frames
        # bounded by _push (queue_frames), not by the queue, so a full queue is a decision
        self._queue: asyncio.Queue[Packet[Any] | None] = asyncio.Queue()
        self._started = False
        self._needs_keyframe = True
        self._last_pts = -1
        self._catch_up = Pacing(0)  # the queue may hold these on top of queue_frames

    @property
    def waiting_for_keyframe(self) -> bool:
        """Whether the track waits for a keyframe to (re)start."""
        return self._needs_keyframe

    async def recv(self) -> "Packet[Any]":
        """The next encoded frame; raises ``MediaStreamError`` once the track is stopped."""
        if not self._started and self.readyState == "live":
            self._started = True
            self._start()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            try:
                async with asyncio.timeout(POLL_S):
                    packet = await self._queue.get()
            except TimeoutError:
                continue
            if packet is None:
                raise MediaStreamError
            await self._catch_up.wait()
            self.packets += 1
            self._last_pts = packet.pts or 0
            return packet

    def request_keyframe(self) -> None:
        """The viewer lost its reference (PLI/FIR): start over (see the class docstring)."""
        if self.readyState == "live" and self._answer_request():
            self.restarts += 1
            self._start()

    def stop(self) -> None:
        if self.readyState != "live":
            return
        super().stop()
        self._queue.put_nowait(None)
        self._left()

    # for the stream

    def _push(self, packet: "Packet[Any]", keyframe: bool) -> None:
        if not self._started or self.readyState != "live":
            return
        if self._needs_keyframe:
            if not keyframe:
                return
            self._needs_keyframe = False
        if self._queue.qsize() >= self._queue_frames + self._catch_up.left:
            # the sender fell behind: what it has not sent is useless once a frame is missing
            self.restarts += 1
            logger.warning("%s: the sender fell behind; starting over from the GOP", self.name)
            self._start()  # the stream's GOP ends with this packet
            return
        self._queue.put_nowait(packet)

    def _restart_at_keyframe(self) -> None:
        self._needs_keyframe = True

    # for subclasses

    def _answer_request(self) -> bool:
        """Whether to answer a keyframe request now: not within
        :data:`KEYFRAME_REQUEST_INTERVAL_S` of the last one answered, whose keyframe is on its
        way (counted in :attr:`ignored_requests`)."""
        now = time.monotonic()
        if self._answered_at is not None and now - self._answered_at < KEYFRAME_REQUEST_INTERVAL_S:
            self.ignored_requests += 1
            return False
        self._answered_at = now
        return True

    def _no_gop(self) -> None:
        """Nothing is cached to start from: e.g. ask the source for a keyframe."""

    def _left(self) -> None:
        """The track stopped: e.g. unsubscribe it from its stream."""

    def _start(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        catch_up = self._gop.catch_up(self._last_pts)
        self._catch_up = Pacing(len(catch_up))
        for packet in catch_up:
            self._queue.put_nowait(packet)
        self._needs_keyframe = not catch_up
        if not catch_up:
            self._no_gop()
