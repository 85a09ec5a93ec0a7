"""The camera's VP8 keyframes: aiortc's encoder with a maximum keyframe interval.

aiortc 1.16 (``aiortc/codecs/vpx.py``): every RTP sender creates its own ``Vp8Encoder`` on
its first frame, and a fresh libvpx context always starts with a keyframe, so each session
starts with one. Afterwards aiortc sends a keyframe on PLI/FIR from the receiver, when it
re-creates the context (resolution change, or a REMB bitrate change of more than 10 %), and
otherwise only every 3000 frames: ``gop_size = 3000`` is hard-coded in
``Vp8Encoder.encode``, which also creates the libvpx context lazily inside that same call,
so no option or attribute can change it. :class:`Vp8KeyframeEncoder` adds the interval by
asking for a keyframe (aiortc's own ``force_keyframe`` path, i.e. libvpx's
``VPX_EFLAG_FORCE_KF``) once ``keyframe_interval - 1`` frames have followed the last one.
"""

from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from av.frame import Frame

from device_sim.media import check_keyframe_interval


def is_vp8_keyframe(payload: bytes) -> bool:
    """Whether the first RTP payload of a VP8 frame starts a keyframe (RFC 7741 section 4.3)."""
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    return bool(
        descriptor.partition_start and descriptor.partition_id == 0 and data and not data[0] & 1
    )


class Vp8KeyframeEncoder(Vp8Encoder):
    """aiortc's VP8 encoder with a maximum keyframe interval, in frames.

    ``keyframe_interval=None`` keeps aiortc's behaviour (a keyframe every 3000 frames). With
    ``N``, frame ``k`` after a keyframe is forced to be one when ``k == N``; keyframes from
    elsewhere (the first frame, PLI/FIR, a re-created context) restart the count. Counts what
    it produced in :attr:`frames` and :attr:`keyframes` (read them from any thread).
    """

    def __init__(self, keyframe_interval: int | None = None) -> None:
        super().__init__()
        self.keyframe_interval = check_keyframe_interval(keyframe_interval)
        self.frames = 0
        self.keyframes = 0
        self._since_keyframe = 0

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        due = (
            self.keyframe_interval is not None
            and self._since_keyframe >= self.keyframe_interval - 1
        )
        payloads, timestamp = super().encode(frame, force_keyframe or due)
        if payloads:
            self.frames += 1
            if is_vp8_keyframe(payloads[0]):
                self.keyframes += 1
                self._since_keyframe = 0
            else:
                self._since_keyframe += 1
        return payloads, timestamp
