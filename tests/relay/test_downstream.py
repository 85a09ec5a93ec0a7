"""relay.downstream: which viewer offers the relay answers, with what, and why it refuses."""

from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection

from peer import codecs
from peer.codecs import H264, VP8, VideoCodec
from protocol.messages import SessionOffer
from relay import downstream
from relay.downstream import Downstream, Refused
from relay.media import Fanout
from relay.upstream import Upstream


async def viewer_offer(*mimes: str) -> str:
    """A viewer's offer to receive video in ``mimes``."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(pc, mimes)
        offer = await pc.createOffer()
        return str(offer.sdp)
    finally:
        await pc.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream("dev-1", Fanout("dev-1"), "req-1")
    yield up
    await up.close()


def answered(up: Upstream, codec: VideoCodec) -> Upstream:
    up.codec = codec
    up.negotiated.set()
    return up


async def test_an_offer_that_takes_the_cameras_codec_is_answered_with_that_codec_only(
    upstream: Upstream,
) -> None:
    down = Downstream("s-1", "dev-1")
    offer = SessionOffer(session_id="s-1", sdp=await viewer_offer(VP8, H264))
    pc, answer = await down.answer(offer, answered(upstream, VideoCodec(VP8)))
    assert down.pc is pc
    assert codecs.offered_codecs(answer) == [VideoCodec(VP8)]
    await down.close()
    assert pc.connectionState == "closed"


async def test_an_offer_without_the_cameras_codec_is_refused_as_a_codec_mismatch(
    upstream: Upstream,
) -> None:
    down = Downstream("s-1", "dev-1")
    offer = SessionOffer(session_id="s-1", sdp=await viewer_offer(VP8))
    with pytest.raises(Refused) as refused:
        await down.answer(offer, answered(upstream, VideoCodec(H264, "42e01f")))
    assert refused.value.reason == "codec_mismatch"
    assert down.pc is None


async def test_an_offer_that_names_no_codec_is_refused_as_invalid(upstream: Upstream) -> None:
    offer = SessionOffer(session_id="s-1", sdp="not sdp")
    with pytest.raises(Refused) as refused:
        await Downstream("s-1", "dev-1").answer(offer, answered(upstream, VideoCodec(VP8)))
    assert refused.value.reason == "invalid_offer"


async def test_a_camera_that_does_not_answer_in_time_refuses_the_viewer_with_a_timeout(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downstream, "UPSTREAM_ANSWER_TIMEOUT_S", 0.01)
    offer = SessionOffer(session_id="s-1", sdp=await viewer_offer(VP8))
    with pytest.raises(Refused) as refused:
        await Downstream("s-1", "dev-1").answer(offer, upstream)
    assert refused.value.reason == "timeout"
