"""The RTSP IP-camera stand-in, pulled the way the agent pulls a real camera: PyAV and aiortc.

What FFmpeg's RTSP demuxer hands over (PyAV 18, FFmpeg's ``rtsp`` input):
- one packet per frame, Annex-B (``00 00 00 01`` before each NAL unit), ``time_base`` 1/90000;
- every keyframe packet is ``SPS PPS IDR`` (plus x264's SEI on a session's very first one), so
  a client that joins late decodes from its first keyframe; extradata is Annex-B SPS+PPS too;
- the first packet of a session has ``pts`` None; the next ones count from it as if it were 0;
- a wrong or missing password raises ``av.error.HTTPUnauthorizedError`` (an ``HTTPClientError``)
  whose ``strerror`` is "Server returned 401 Unauthorized (authorization failed)" and whose
  ``filename`` is the URL, credentials included.
"""

import asyncio
import base64
import itertools
import re
import socket
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import av.container
import cv2
import pytest
import qrcode
from aiortc.contrib.media import MediaPlayer

from tests.rtsp import RtspCamera, rtsp_camera

# analyzeduration/probesize 0: the SDP already says what the stream is, so av.open returns in
# ~0.2 s instead of reading ~2 s (a GOP) of video first; codec, size and extradata are all set.
OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32"}
START_CODE = b"\x00\x00\x00\x01"
NAL_SLICE, NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS = 1, 5, 6, 7, 8
Profile = Literal["baseline", "main", "high"]
PROFILE_IDC = {"baseline": 66, "main": 77, "high": 100}
KEYFRAME_INTERVAL_S = 1.0
FPS = 15


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B buffer (3- or 4-byte start codes)."""
    return [unit for unit in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", data) if unit]


def nal_types(data: bytes) -> list[int]:
    return [unit[0] & 0x1F for unit in nal_units(data)]


def sps_profile_idc(data: bytes) -> int:
    """profile_idc of the first SPS in an Annex-B buffer: 66 baseline, 77 main, 100 high."""
    return next(unit[1] for unit in nal_units(data) if unit[0] & 0x1F == NAL_SPS)


def open_camera(url: str) -> av.container.InputContainer:
    return av.open(url, options=OPTIONS, timeout=5)


def packets(container: av.container.InputContainer) -> Iterator[av.Packet]:
    """The video packets, without the empty one the demuxer ends with."""
    for packet in container.demux(container.streams.video[0]):
        if packet.size:
            yield packet


def drain(packets: Iterator[av.Packet]) -> str:
    """Read to the end: "EOF", or the name of the av.error that ended it."""
    try:
        for _ in packets:
            pass
    except av.error.FFmpegError as error:
        return type(error).__name__
    return "EOF"


def describe(url: str) -> tuple[int, str]:
    """An RTSP DESCRIBE by hand: the status code and the SDP."""
    address = url.removeprefix("rtsp://").split("/", 1)[0].rsplit("@", 1)[-1]
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(
            f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += conn.recv(4096)
        head, body = response.split(b"\r\n\r\n", 1)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length[1]):
            body += conn.recv(4096)
    return int(head.split()[1]), body.decode()


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspCamera]:
    with rtsp_camera(keyframe_interval_s=KEYFRAME_INTERVAL_S, fps=FPS) as camera:
        yield camera


def test_packets_are_annex_b_h264_with_sps_pps_in_every_keyframe(camera: RtspCamera) -> None:
    with open_camera(camera.url) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (1280, 720)
        assert stream.time_base == Fraction(1, 90000)
        extradata = stream.codec_context.extradata  # from the SDP's sprop-parameter-sets
        assert extradata.startswith(START_CODE)
        assert nal_types(extradata) == [NAL_SPS, NAL_PPS]
        assert sps_profile_idc(extradata) == PROFILE_IDC["main"]
        assert stream.codec_context.profile == "Main"

        seen: list[av.Packet] = []
        for packet in packets(container):
            seen.append(packet)
            if sum(p.is_keyframe for p in seen) == 3:
                break
    first, keyframes = seen[0], [p for p in seen if p.is_keyframe]
    assert first.is_keyframe  # the session started the shared encoder: it opens with an IDR
    assert first.pts in (None, 0)  # FFmpeg gives the session's first packet no pts
    for packet in seen:
        data = bytes(packet)
        assert data.startswith(START_CODE)  # Annex-B, not AVCC length prefixes
        assert packet.time_base == Fraction(1, 90000)
        types = nal_types(data)
        if packet.is_keyframe:
            assert [t for t in types if t != NAL_SEI] == [NAL_SPS, NAL_PPS, NAL_IDR]
            assert sps_profile_idc(data) == PROFILE_IDC["main"]
        else:
            assert types == [NAL_SLICE]  # one slice per frame, no parameter sets
    timed = [p.pts for p in seen[1:]]
    assert all(abs(b - a - 90000 // FPS) <= 1 for a, b in itertools.pairwise(timed))
    assert abs(keyframes[2].pts - keyframes[1].pts - KEYFRAME_INTERVAL_S * 90000) <= 1  # GOP


def test_a_late_client_decodes_from_its_first_keyframe_without_disturbing_others(
    camera: RtspCamera,
) -> None:
    with open_camera(camera.url) as first:
        watching = packets(first)
        before = [next(watching).pts for _ in range(5)][1:]
        time.sleep(0.3)  # join mid-GOP
        with open_camera(camera.url) as second:
            started = time.monotonic()
            keyframe = next(p for p in packets(second) if p.is_keyframe)
            waited = time.monotonic() - started
            assert waited < KEYFRAME_INTERVAL_S + 1
            assert bytes(keyframe).startswith(START_CODE)
            frames = second.streams.video[0].codec_context.decode(keyframe)
            assert [(f.width, f.height) for f in frames] == [(1280, 720)]
        after = [next(watching).pts for _ in range(15)]
    # One shared encoder: the first client's stream went on (a restarted pipeline starts over).
    timeline = before + after
    assert timeline == sorted(timeline)
    assert len(set(timeline)) == len(timeline)


@pytest.mark.parametrize("profile", ["baseline", "main", "high"])
def test_the_sdp_announces_the_profile_asked_for(profile: Profile) -> None:
    with rtsp_camera(profile=profile) as camera:
        status, sdp = describe(camera.url)
    assert status == 200
    assert "a=rtpmap:96 H264/90000" in sdp
    level_id = re.search(r"profile-level-id=([0-9a-fA-F]{6})", sdp)
    assert level_id is not None
    assert int(level_id[1][:2], 16) == PROFILE_IDC[profile]  # e.g. 4d401f: main, level 3.1
    sprop = re.search(r"sprop-parameter-sets=([^,;\s]+)", sdp)
    assert sprop is not None
    assert base64.b64decode(sprop[1])[1] == PROFILE_IDC[profile]


@pytest.mark.parametrize("layout", ["center", "fill"])
def test_a_qr_image_stays_readable_after_h264(
    tmp_path: Path, layout: Literal["center", "fill"]
) -> None:
    text = "visionconnect:onboard?code=ABCD-EFGH-2345&ssid=Home"
    image = tmp_path / "qr.png"
    qrcode.make(text).save(image)
    detector = cv2.QRCodeDetectorAruco()
    with (
        rtsp_camera(image=image, image_layout=layout, bitrate_kbps=2000) as camera,
        open_camera(camera.url) as container,
    ):
        for n, frame in enumerate(container.decode(container.streams.video[0])):
            decoded, _, _ = detector.detectAndDecode(frame.to_ndarray(format="bgr24"))
            if decoded or n >= 30:
                break
    assert decoded == text


@pytest.mark.parametrize("auth", ["digest", "basic"])
def test_a_wrong_or_missing_password_is_401(auth: Literal["basic", "digest"]) -> None:
    password = "p@ss:w/rd"  # percent-encoded in camera.url; FFmpeg decodes it
    with rtsp_camera(user="admin", password=password, auth=auth) as camera:
        wrong = camera.url.replace("p%40ss", "nope")
        for url in (wrong, camera.url_without_credentials):
            with pytest.raises(av.error.HTTPUnauthorizedError) as raised:
                open_camera(url)
            assert (
                raised.value.strerror == "Server returned 401 Unauthorized (authorization failed)"
            )
            assert raised.value.filename == url  # the URL, password and all: don't log str()
            assert "401" in str(raised.value)
        assert describe(camera.url_without_credentials)[0] == 401
        with open_camera(camera.url) as container:
            assert next(packets(container)).is_keyframe


def test_restart_is_a_camera_reboot_on_the_same_port() -> None:
    with rtsp_camera(keyframe_interval_s=KEYFRAME_INTERVAL_S) as camera:
        port, url = camera.port, camera.url
        with open_camera(url) as before:
            watching = packets(before)
            next(watching)
            old_pid = camera.process.pid
            camera.restart()
            assert (camera.port, camera.url) == (port, url)
            assert camera.process.pid != old_pid
            # The old session drains what was in flight, then ends (EOF); it does not hang.
            started = time.monotonic()
            assert drain(watching) == "EOF"
            assert time.monotonic() - started < 5
        with open_camera(url) as after:
            assert next(packets(after)).is_keyframe


async def test_aiortc_media_player_passes_the_packets_through(camera: RtspCamera) -> None:
    player = MediaPlayer(camera.url, decode=False, options=OPTIONS, timeout=5)
    assert player.audio is None
    assert player.video is not None
    try:
        started = time.monotonic()
        while True:
            packet = await asyncio.wait_for(player.video.recv(), 5)
            assert isinstance(packet, av.Packet)
            assert bytes(packet).startswith(START_CODE)
            assert packet.time_base == Fraction(1, 90000)
            if packet.is_keyframe:
                break
        # MediaPlayer skips packets without pts, i.e. the session's first IDR, so the first
        # keyframe it hands over is the next one, up to a keyframe interval later.
        assert time.monotonic() - started < KEYFRAME_INTERVAL_S + 1
        assert sps_profile_idc(bytes(packet)) == PROFILE_IDC["main"]
    finally:
        player.video.stop()


def test_a_camera_that_cannot_start_says_why() -> None:
    with (
        pytest.raises(RuntimeError, match="no-such-pattern"),
        rtsp_camera(pattern="no-such-pattern"),
    ):
        pass
