"""The current GOP of an encoded stream, to start a new viewer at once (agent and relay).

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
"""

import asyncio
import fractions
from typing import Any

from aiortc.mediastreams import VIDEO_CLOCK_RATE
from av import Packet

VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
MAX_GOP_FRAMES = 600  # 40 s at 15 fps: a stream without keyframes for longer is not cached
CATCH_UP_S = 0.25  # a GOP is paced out over at most this long
CATCH_UP_GAP_S = 0.008  # and at most this between two of its frames


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
