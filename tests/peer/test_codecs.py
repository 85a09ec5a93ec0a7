"""Keyframes, parameter sets and negotiated codecs of the two forwarded codecs."""

from aiortc import RTCConfiguration, RTCPeerConnection

from peer.codecs import (
    H264,
    VP8,
    ParameterSets,
    is_h264_keyframe,
    is_vp8_keyframe,
    nal_units,
    prefer,
    video_codecs,
)

SPS = b"\x67\x42\xc0\x1f\xaa"
PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65\x88\x84\x00\x33"
SLICE = b"\x41\x9a\x02\x03"


def annex_b(*units: bytes, short: bool = False) -> bytes:
    code = b"\x00\x00\x01" if short else b"\x00\x00\x00\x01"
    return b"".join(code + unit for unit in units)


def test_nal_units_are_split_on_three_and_four_byte_start_codes() -> None:
    stream = annex_b(SPS) + annex_b(PPS, short=True) + annex_b(IDR)
    assert list(nal_units(stream)) == [SPS, PPS, IDR]
    assert list(nal_units(b"")) == []
    assert list(nal_units(b"\x00\x00\x01")) == []


def test_an_h264_keyframe_is_an_access_unit_with_an_idr_slice() -> None:
    assert is_h264_keyframe(annex_b(SPS, PPS, IDR))
    assert is_h264_keyframe(annex_b(IDR))
    assert not is_h264_keyframe(annex_b(SLICE))
    assert not is_h264_keyframe(annex_b(SPS, PPS))


def test_a_keyframe_without_parameter_sets_gets_the_latest_ones_ahead() -> None:
    sets = ParameterSets()
    assert sets.complete(annex_b(IDR)) == annex_b(IDR)  # none known yet: as it came
    with_sets = annex_b(SPS, PPS, IDR)
    assert sets.complete(with_sets) == with_sets
    assert sets.complete(annex_b(SLICE)) == annex_b(SLICE)
    assert sets.complete(annex_b(IDR)) == annex_b(SPS, PPS, IDR)
    newer_pps = b"\x68\xee\x3c\x80"
    assert sets.complete(annex_b(newer_pps, IDR)) == annex_b(SPS, newer_pps, IDR)


def test_a_vp8_keyframe_has_its_p_bit_clear() -> None:
    assert is_vp8_keyframe(b"\x10\x02\x00\x9d\x01\x2a")
    assert not is_vp8_keyframe(b"\x31\x02\x00")
    assert not is_vp8_keyframe(b"")


async def test_codec_preferences_decide_what_an_offer_lists() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        prefer(pc, (H264, VP8))
        offer = await pc.createOffer()
        assert video_codecs(offer.sdp) == [H264, VP8]
        assert "packetization-mode=0" not in offer.sdp
        prefer(pc, (VP8,))
        assert video_codecs((await pc.createOffer()).sdp) == [VP8]
    finally:
        await pc.close()


def test_an_sdp_without_video_lists_no_codec() -> None:
    assert video_codecs("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n") == []
