"""How many sent RTP packets an aiortc sender keeps to answer a NACK with.

aiortc's ``RTCRtpSender`` (1.16) keeps the last ``RTP_HISTORY_SIZE`` = 128 packets it sent
(``aiortc/rtp.py``). ``RTCRtpSender._retransmit`` reads that value from the
``aiortc.rtcrtpsender`` module each time it is called, and a NACK for an older packet goes
unanswered. That is enough for a live stream of a few dozen packets a second, but not for a
GOP catch-up (:mod:`peer.gop`): a joining viewer is sent the whole cached GOP within 250 ms.
A 2 s GOP at 1-2 Mbit/s is 200-400 packets. When a packet early in that burst is lost, the
viewer's NACK reaches the sender one round trip later. With 150 ms round trip, more than 128
packets have been sent by then, so the packet is no longer in the history, and the viewer
cannot decode past the hole until its jitter buffer gives up on it (512 packets later) or
the next keyframe. tests/peer/test_lossy_link.py shows it: one packet lost early in a
~500-packet catch-up, 150 ms round trip, is never sent again with aiortc's 128 (the viewer
shows nothing), and is with ours. (The NAT lab's 320x240 synthetic stream is not such a
case: its GOP is ~10 KB, ~30 packets; docs/benchmarks.md, "Connectivity".)

:func:`raise_history` (run when :mod:`peer.gop` is imported, which every process that sends
a :class:`peer.gop.GopTrack` does: the relay's fan-out and the agent's streams) raises that
module global to :data:`RTP_HISTORY_PACKETS`. The setting covers the whole process. It also
covers senders that already exist, because the value is read at call time. Each sender's
history fills up to that many packets: at most ~1.2 MB per sender with full-size (1,200-byte)
packets, ~0.2 MB for the lab's 320x240 stream.
"""

from types import ModuleType

import aiortc.rtcrtpsender

RTP_HISTORY_PACKETS = 1024  # a 2 s GOP at up to ~4 Mbit/s, sent within one round trip
HISTORY_NAME = "aiortc.rtcrtpsender.RTP_HISTORY_SIZE"  # the hook (aiortc pinned for it)


def raise_history(
    packets: int = RTP_HISTORY_PACKETS, module: ModuleType = aiortc.rtcrtpsender
) -> int:
    """Make every aiortc sender in the process keep at least ``packets`` sent packets for
    retransmission. A larger value already set is kept. Returns the value in force.

    Raises :class:`RuntimeError` naming :data:`HISTORY_NAME` when aiortc no longer has that
    module global as an int (aiortc changed, and the hook would silently do nothing), and
    :class:`ValueError` unless ``packets`` is positive. ``module`` is for tests.
    """
    if packets < 1:
        raise ValueError("packets must be positive")
    current = getattr(module, "RTP_HISTORY_SIZE", None)
    if type(current) is not int:
        raise RuntimeError(
            f"aiortc changed: {HISTORY_NAME} is {current!r}, not the int that "
            "RTCRtpSender._retransmit reads (peer/retransmission.py)"
        )
    if current < packets:
        module.RTP_HISTORY_SIZE = packets  # type: ignore[attr-defined]
    return max(current, packets)


def history_packets() -> int:
    """The sender history now in force in this process."""
    value: int = vars(aiortc.rtcrtpsender)["RTP_HISTORY_SIZE"]
    return value
