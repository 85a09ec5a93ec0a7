"""The cached GOP a new viewer starts from, and its pacing."""

import asyncio
import time
from typing import Any

from av import Packet

from peer.gop import CATCH_UP_S, KEYFRAME_REQUEST_INTERVAL_S, Gop, GopTrack, Pacing


def packet(pts: int) -> "Packet[Any]":
    p = Packet(bytes([pts % 256]))
    p.pts = pts
    return p


def test_the_gop_starts_at_a_keyframe_and_stops_caching_when_it_grows_too_long() -> None:
    gop = Gop(max_frames=3)
    gop.add(packet(0), keyframe=False)
    assert len(gop) == 0  # no keyframe yet: nothing to start from
    gop.add(packet(6000), keyframe=True)
    gop.add(packet(12000), keyframe=False)
    gop.add(packet(18000), keyframe=False)
    assert len(gop) == 3
    gop.add(packet(24000), keyframe=False)
    assert len(gop) == 0  # no keyframe for too long
    gop.add(packet(30000), keyframe=True)
    assert len(gop) == 1


def test_a_catch_up_is_squeezed_before_the_newest_frame_and_after_what_was_sent() -> None:
    gop = Gop()
    for n in range(4):
        gop.add(packet(n * 6000), keyframe=n == 0)
    assert [p.pts for p in gop.catch_up(after_pts=-1)] == [17997, 17998, 17999, 18000]
    assert [p.pts for p in gop.catch_up(after_pts=18000)] == [18001, 18002, 18003, 18004]
    copies = gop.catch_up(-1)
    assert [bytes(p) for p in copies] == [bytes([n * 6000 % 256]) for n in range(4)]


async def test_pacing_sends_the_first_frame_at_once_and_the_rest_within_the_bound() -> None:
    pacing = Pacing(100)
    started = time.monotonic()
    await pacing.wait()
    assert time.monotonic() - started < 0.005
    for _ in range(99):
        await pacing.wait()
    assert time.monotonic() - started < CATCH_UP_S + 0.2
    assert pacing.left == 0
    await pacing.wait()  # past the cached frames: no wait


async def test_a_burst_of_keyframe_requests_restarts_a_track_once() -> None:
    """A decoder asks again for every frame it cannot decode until the keyframe comes (aiortc:
    a PLI per failed frame, 8 in 60 ms): one restart answers them, not one each."""
    gop = Gop()
    for n in range(30):
        gop.add(packet(n * 6000), keyframe=n == 0)
    track = GopTrack(gop, "viewer", queue_frames=30)
    await track.recv()  # the sender starts it: the GOP's keyframe first

    for _ in range(8):
        track.request_keyframe()

    assert (track.restarts, track.ignored_requests) == (1, 7)
    first = await track.recv()
    assert bytes(first) == bytes(gop.catch_up(-1)[0])  # the restart sends the keyframe first
    await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL_S)
    track.request_keyframe()  # a later loss is answered again
    assert track.restarts == 2
    track.stop()
