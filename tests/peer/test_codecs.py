"""Keyframes, parameter sets and negotiated codecs of the two forwarded codecs."""

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

from peer.codecs import (
    H264,
    HIGH,
    MAIN,
    VP8,
    ParameterSets,
    VideoCodec,
    is_h264_keyframe,
    is_vp8_keyframe,
    nal_units,
    offered_codecs,
    prefer,
    profile_level_id,
    with_profile_level_id,
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
        assert [c.mime for c in offered_codecs(offer.sdp)] == [H264] * 4 + [VP8]
        assert "packetization-mode=0" not in offer.sdp
        prefer(pc, (VP8,))
        assert offered_codecs((await pc.createOffer()).sdp) == [VideoCodec(VP8)]
    finally:
        await pc.close()


def test_an_sdp_without_video_lists_no_codec() -> None:
    assert offered_codecs("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n") == []


def test_the_profile_level_id_is_the_three_bytes_after_the_sps_header() -> None:
    assert profile_level_id(b"\x67\x4d\x00\x28\xaa") == "4d0028"
    assert profile_level_id(SPS) == "42c01f"
    with pytest.raises(ValueError, match=r"not an H\.264 sequence parameter set"):
        profile_level_id(PPS)


def test_h264_codecs_match_by_profile_whatever_their_levels() -> None:
    main_40 = VideoCodec(H264, "4d0028")
    assert main_40.takes(VideoCodec(H264, "4d001f"))
    assert VideoCodec(H264, "42c01f").takes(VideoCodec(H264, "42e01f"))  # both Constrained BL
    assert not main_40.takes(VideoCodec(H264, "42e01f"))
    assert not main_40.takes(VideoCodec(VP8))
    assert VideoCodec(H264, "42c03e").takes(VideoCodec(H264, "42e01f"))  # level 6.2
    assert str(main_40) == "H.264 (4d0028)"
    assert str(VideoCodec(VP8)) == "VP8"


def test_aiortc_offers_main_and_high_besides_its_baseline_profiles() -> None:
    """The override of aiortc's codec table (aiortc.codecs.CODECS) still takes effect."""
    listed = [
        c.parameters.get("profile-level-id")
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() == H264
    ]
    assert listed == ["42001f", "42e01f", MAIN, HIGH]
    assert VideoCodec(H264, "4d0028").capability().parameters["profile-level-id"] == MAIN
    with pytest.raises(ValueError, match="aiortc cannot send"):
        VideoCodec(H264, "f4001f").capability()  # High 4:4:4


async def test_an_answer_names_the_streams_own_level() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="recvonly")
        offer = (await pc.createOffer()).sdp
    finally:
        await pc.close()
    assert offered_codecs(offer)[0] == VideoCodec(VP8)
    assert VideoCodec(H264, MAIN) in offered_codecs(offer)
    renamed = with_profile_level_id(offer, VideoCodec(H264, "4d0028"))
    assert VideoCodec(H264, "4d0028") in offered_codecs(renamed)
    assert VideoCodec(H264, MAIN) not in offered_codecs(renamed)
    assert VideoCodec(H264, "42e01f") in offered_codecs(renamed)  # other profiles as they were
    assert with_profile_level_id(offer, VideoCodec(VP8)) == offer
