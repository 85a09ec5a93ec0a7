"""The two video codecs the relay forwards, VP8 and H.264: keyframes, parameter sets, and
which one a connection negotiated.

H.264 frames arrive from aiortc's depacketizer as an Annex B byte stream (each NAL unit
behind a ``00 00 00 01`` start code, ``aiortc/codecs/h264.py``) and leave through its
``H264Encoder.pack``, which splits the same stream again: they are forwarded as they are.
A frame is a keyframe when it holds an IDR slice (NAL type 5, ITU-T H.264 table 7-1); a
decoder joining there also needs the sequence and picture parameter sets (types 7 and 8),
which cameras usually repeat before each IDR but some send only once: :class:`ParameterSets`
keeps the latest and puts them ahead of a keyframe that lacks them.

H.264 profiles: a camera's answer names the profile its source produces (RFC 6184
``profile-level-id``: the three bytes after the SPS's NAL header). aiortc's codec table knows
only Baseline and Constrained Baseline (``aiortc.codecs.CODECS``, filled at import) and
answers with its own entry's parameters, so a Main or High stream would find no common codec.
Importing this module adds Main (``4d001f``) and High (``64001f``) entries to that table (a
documented override of aiortc's module-level list, checked by tests/peer/test_codecs.py), so
every aiortc peer of the process offers and accepts them; :func:`with_profile_level_id` then
puts the stream's own level into the answer (offers and answers match H.264 by profile; with
``level-asymmetry-allowed`` the levels may differ).
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiortc.codecs
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
)
from aiortc.sdp import SessionDescription, parse_h264_profile_level_id

VP8 = "video/vp8"
H264 = "video/h264"
FORWARDED = (H264, VP8)  # the relay's preference towards a camera

DEFAULT_PROFILE_LEVEL_ID = "42e01f"  # RFC 6184: Constrained Baseline 3.1 when absent
MAIN, HIGH = "4d001f", "64001f"

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


def profile_level_id(sps: bytes) -> str:
    """The RFC 6184 ``profile-level-id`` of an SPS NAL unit (header byte included)."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise ValueError("not an H.264 sequence parameter set")
    return sps[1:4].hex()


@dataclass(frozen=True)
class VideoCodec:
    """A video codec as negotiated: the mime type, and for H.264 its profile-level-id."""

    mime: str
    profile_level_id: str | None = None

    def __str__(self) -> str:
        if self.mime == H264:
            return f"H.264 ({self.profile_level_id or DEFAULT_PROFILE_LEVEL_ID})"
        return self.mime.removeprefix("video/").upper()

    def takes(self, other: "VideoCodec") -> bool:
        """Whether a stream of ``other`` may be sent where this codec was negotiated: the same
        mime type and, for H.264, the same profile (levels may differ: level-asymmetry)."""
        if self.mime != other.mime:
            return False
        return self.mime != H264 or _h264_profile(self) == _h264_profile(other)

    def capability(self) -> RTCRtpCodecCapability:
        """aiortc's capability to prefer for this codec (for H.264: of the same profile).

        Raises :class:`ValueError` when aiortc cannot send it (e.g. H.264 High 4:4:4).
        """
        for capability in capabilities(self.mime):
            profile_level_id = capability.parameters.get("profile-level-id")
            if self.mime != H264 or self.takes(VideoCodec(H264, str(profile_level_id))):
                return capability
        raise ValueError(f"aiortc cannot send {self}")


def _h264_profile(codec: VideoCodec) -> object:
    profile = (codec.profile_level_id or DEFAULT_PROFILE_LEVEL_ID)[:4]
    try:
        return parse_h264_profile_level_id(profile + "1f")[0]  # the level plays no part
    except ValueError:
        return codec.profile_level_id  # unknown to aiortc: only the very same one matches


def on_keyframe_request(sender: RTCRtpSender, request: Callable[[], None]) -> None:
    """Call ``request`` when the viewer of ``sender`` asks for a keyframe (PLI/FIR).

    aiortc's sender answers PLI/FIR by flagging its encoder (``RTCRtpSender._send_keyframe``),
    which pre-encoded packets never use; this replaces that private method on the instance.
    Raises :class:`RuntimeError` if aiortc no longer has it.
    """
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise RuntimeError("aiortc's RTCRtpSender no longer has _send_keyframe")
    setattr(sender, "_send_keyframe", request)  # noqa: B010 (a method)


def _add_h264_profile(profile_level_id: str) -> None:
    """Add an H.264 entry (packetization mode 1, with RTX) to aiortc's codec table."""
    table = getattr(aiortc.codecs, "CODECS", None)
    if not isinstance(table, dict) or not isinstance(table.get("video"), list):
        raise RuntimeError("aiortc.codecs.CODECS is no longer a table of codecs by kind")
    video: list[RTCRtpCodecParameters] = table["video"]
    if any(c.parameters.get("profile-level-id") == profile_level_id for c in video):
        return
    payload_type = max(c.payloadType or 0 for c in video) + 1
    video += [
        RTCRtpCodecParameters(
            mimeType="video/H264",
            clockRate=90000,
            payloadType=payload_type,
            rtcpFeedback=[
                RTCRtcpFeedback(type="nack"),
                RTCRtcpFeedback(type="nack", parameter="pli"),
                RTCRtcpFeedback(type="goog-remb"),
            ],
            parameters={
                "level-asymmetry-allowed": "1",
                "packetization-mode": "1",
                "profile-level-id": profile_level_id,
            },
        ),
        RTCRtpCodecParameters(
            mimeType="video/rtx",
            clockRate=90000,
            payloadType=payload_type + 1,
            parameters={"apt": payload_type},
        ),
    ]


def with_profile_level_id(sdp: str, codec: VideoCodec) -> str:
    """``sdp`` whose H.264 formats of ``codec``'s profile carry its profile-level-id."""
    if codec.mime != H264 or codec.profile_level_id is None:
        return sdp
    h264 = set(re.findall(r"^a=rtpmap:(\d+) H264/", sdp, flags=re.M | re.I))

    def rename(match: re.Match[str]) -> str:
        payload_type, current = match.group(1), match.group(3)
        if payload_type in h264 and codec.takes(VideoCodec(H264, current)):
            return f"{match.group(1)}{match.group(2)}{codec.profile_level_id}"
        return match.group(0)

    return re.sub(
        r"(?<=^a=fmtp:)(\d+)( .*?profile-level-id=)([0-9a-fA-F]{6})", rename, sdp, flags=re.M
    )


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
    prefer_exactly(pc, [c for mime in mimes for c in capabilities(mime)])


def prefer_exactly(pc: RTCPeerConnection, codecs: list[RTCRtpCodecCapability]) -> None:
    """Offer or answer only ``codecs``, in that order, on every transceiver of ``pc``."""
    for transceiver in pc.getTransceivers():
        transceiver.setCodecPreferences(codecs)


def offered_codecs(sdp: str) -> list[VideoCodec]:
    """The video codecs an SDP lists (its first video section), in its order of preference;
    H.264 only where it may be sent in packetization mode 1 (one entry per profile-level-id)."""
    description = SessionDescription.parse(sdp)
    media = next((m for m in description.media if m.kind == "video"), None)
    if media is None:
        return []
    found: list[VideoCodec] = []
    for codec in media.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == "video/rtx":
            continue
        if mime == H264:
            if str(codec.parameters.get("packetization-mode")) != "1":
                continue
            level_id = str(codec.parameters.get("profile-level-id", DEFAULT_PROFILE_LEVEL_ID))
            entry = VideoCodec(H264, level_id.lower())
        else:
            entry = VideoCodec(mime)
        if entry not in found:
            found.append(entry)
    return found


_add_h264_profile(MAIN)
_add_h264_profile(HIGH)
