"""The two video codecs the relay forwards, VP8 and H.264: keyframes, parameter sets, and
which one a connection negotiated.

H.264 frames arrive from aiortc's depacketizer as an Annex B byte stream (each NAL unit
behind a ``00 00 00 01`` start code, ``aiortc/codecs/h264.py``) and leave through its
``H264Encoder.pack``, which splits the same stream again: they are forwarded as they are.
A frame is a keyframe when it holds an IDR slice (NAL type 5, ITU-T H.264 table 7-1); a
decoder joining there also needs the sequence and picture parameter sets (types 7 and 8),
which cameras usually repeat before each IDR but some send only once: :class:`ParameterSets`
keeps the latest and puts them ahead of a keyframe that lacks them.
"""

from collections.abc import Iterator

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

VP8 = "video/vp8"
H264 = "video/h264"
FORWARDED = (H264, VP8)  # the relay's preference towards a camera

START_CODE = b"\x00\x00\x00\x01"
NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8


def is_vp8_keyframe(frame: bytes) -> bool:
    """Whether a depacketized VP8 frame is a keyframe (RFC 6386 section 9.1: P bit clear)."""
    return bool(frame) and not frame[0] & 1


def nal_units(stream: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B stream (3- or 4-byte start codes), headers included."""
    at = stream.find(b"\x00\x00\x01")
    while at >= 0:
        start = at + 3
        at = stream.find(b"\x00\x00\x01", start)
        end = len(stream) if at < 0 else at - (stream[at - 1] == 0)
        if end > start:
            yield stream[start:end]


def is_h264_keyframe(frame: bytes) -> bool:
    """Whether an Annex B access unit holds an IDR slice."""
    return any(unit[0] & 0x1F == NAL_IDR for unit in nal_units(frame))


class ParameterSets:
    """The latest SPS and PPS of one H.264 stream, to start a decoder at any IDR."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def complete(self, frame: bytes) -> bytes:
        """``frame``, with the latest SPS/PPS ahead if it is a keyframe that lacks them.

        Remembers the parameter sets ``frame`` carries.
        """
        types = set()
        for unit in nal_units(frame):
            kind = unit[0] & 0x1F
            types.add(kind)
            if kind == NAL_SPS:
                self.sps = unit
            elif kind == NAL_PPS:
                self.pps = unit
        if NAL_IDR not in types or {NAL_SPS, NAL_PPS} <= types:
            return frame
        missing = [u for k, u in ((NAL_SPS, self.sps), (NAL_PPS, self.pps)) if k not in types]
        return b"".join(START_CODE + unit for unit in missing if unit is not None) + frame


def capabilities(mime: str) -> list[RTCRtpCodecCapability]:
    """aiortc's video codecs of one type; H.264 only in packetization mode 1 (RFC 6184)."""
    return [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() == mime
        and (mime != H264 or c.parameters.get("packetization-mode") == "1")
    ]


def prefer(pc: RTCPeerConnection, mimes: tuple[str, ...]) -> None:
    """Offer or answer only ``mimes``, in that order, on every transceiver of ``pc``."""
    codecs = [c for mime in mimes for c in capabilities(mime)]
    for transceiver in pc.getTransceivers():
        transceiver.setCodecPreferences(codecs)


def video_codecs(sdp: str) -> list[str]:
    """The video codecs an SDP lists (its first video section), lower-case mime types, in
    its order of preference; H.264 only where it may be sent in packetization mode 1."""
    description = SessionDescription.parse(sdp)
    media = next((m for m in description.media if m.kind == "video"), None)
    if media is None:
        return []
    found = []
    for codec in media.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == H264 and str(codec.parameters.get("packetization-mode")) != "1":
            continue
        if mime not in found:
            found.append(mime)
    return found
