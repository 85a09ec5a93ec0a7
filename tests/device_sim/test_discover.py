"""``python -m device_sim discover`` against a stand-in ONVIF camera on loopback.

The camera (tests/onvif_responder.py) is real on the wire: wsdiscovery's publisher answers
the probe over UDP, its device and media services answer SOAP over HTTP and check the
WS-Security password digest. The command runs as a subprocess, as a user runs it, and every
probe stays on loopback: multicast only through ``--interface 127.0.0.1``.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from device_sim.redaction import redact
from tests.onvif_responder import OnvifResponder, Profile
from tests.servers import ROOT

USER = "admin"
PASSWORD = "Tr0ub4dor-and-3"
WRONG_PASSWORD = "guessed-Hunter2"
SCOPES = [
    "onvif://www.onvif.org/type/video_encoder",
    "onvif://www.onvif.org/name/Caf%C3%A9%20door",
    "onvif://www.onvif.org/hardware/SIM-1",
]
PROFILES = [
    Profile("main", "MainStream", "rtsp://127.0.0.1:8554/main", "H264", 1920, 1080),
    # Some cameras put the credentials into the URI they hand out.
    Profile("sub", "SubStream", f"rtsp://{USER}:{PASSWORD}@127.0.0.1:8554/sub", "JPEG", 640, 360),
]
ON_LOOPBACK = ["--interface", "127.0.0.1"]


def discover(*args: str, log_level: str = "WARNING") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sim", "--log-level", log_level, "discover", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def camera(*, multicast: bool = True, media_fails: bool = False) -> Iterator[OnvifResponder]:
    responder = OnvifResponder(
        user=USER,
        password=PASSWORD,
        scopes=SCOPES,
        profiles=PROFILES,
        multicast=multicast,
        media_fails=media_fails,
    )
    responder.start()
    try:
        yield responder
    finally:
        responder.stop()


@pytest.fixture
def onvif_camera() -> Iterator[OnvifResponder]:
    """A camera that answers probes sent to the multicast group through loopback."""
    yield from camera()


@pytest.fixture
def unicast_camera() -> Iterator[OnvifResponder]:
    """A camera that only answers probes sent to it, as across a network without multicast."""
    yield from camera(multicast=False)


@pytest.fixture
def failing_camera() -> Iterator[OnvifResponder]:
    """A camera whose media service fails every request."""
    yield from camera(multicast=False, media_fails=True)


def test_a_multicast_probe_finds_the_camera_and_reads_its_scopes(
    onvif_camera: OnvifResponder,
) -> None:
    result = discover("--timeout", "2", "--json", *ON_LOOPBACK)

    assert result.returncode == 0, result.stderr
    [device] = json.loads(result.stdout)["devices"]
    assert device["endpoint"] == onvif_camera.endpoint
    assert device["xaddrs"] == [onvif_camera.xaddr]
    assert device["name"] == "Café door"
    assert device["hardware"] == "SIM-1"
    assert "http://www.onvif.org/ver10/network/wsdl:NetworkVideoTransmitter" in device["types"]
    assert device["streams"] is None  # without credentials the camera is not asked
    assert onvif_camera.seen.requests == []


def test_a_unicast_probe_finds_the_camera_and_lists_its_stream_uris(
    unicast_camera: OnvifResponder,
) -> None:
    result = discover(
        "--timeout", "2", "--address", "127.0.0.1", *ON_LOOPBACK,
        "--user", USER, "--password", PASSWORD,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Café door (SIM-1)" in out
    assert unicast_camera.xaddr in out
    assert "MainStream  1920x1080 H264  " in out
    assert "rtsp://127.0.0.1:8554/main" in out
    assert f"rtsp://{USER}:***@127.0.0.1:8554/sub" in out
    assert PASSWORD not in out + result.stderr
    assert "Traceback" not in result.stderr
    operations = [op for op, authorized in unicast_camera.seen.requests if authorized]
    assert operations.count("GetProfiles") == 1
    assert operations.count("GetStreamUri") == len(PROFILES)


def test_debug_logs_keep_the_password_out(unicast_camera: OnvifResponder) -> None:
    result = discover(
        "--timeout", "2", "--address", "127.0.0.1", *ON_LOOPBACK,
        "--user", USER, "--password", PASSWORD, log_level="DEBUG",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "GetStreamUriResponse" in result.stderr  # the camera's answers are in the log...
    assert f"{USER}:***@127.0.0.1:8554/sub" in result.stderr  # ...the URI with its password
    assert PASSWORD not in result.stdout + result.stderr


def test_without_multicast_the_camera_needs_its_address(unicast_camera: OnvifResponder) -> None:
    result = discover("--timeout", "1", "--json", *ON_LOOPBACK)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["devices"] == []


def test_a_refused_password_is_reported_in_plain_words(unicast_camera: OnvifResponder) -> None:
    result = discover(
        "--timeout", "2", "--address", "127.0.0.1:3702", *ON_LOOPBACK,
        "--user", USER, "--password", WRONG_PASSWORD,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Café door (SIM-1)" in result.stdout
    assert f"not listed: the camera refused the credentials of user '{USER}'" in result.stdout
    assert "rtsp://" not in result.stdout
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert unicast_camera.seen.requests  # it was asked, and said no to every request
    assert not any(authorized for _, authorized in unicast_camera.seen.requests)


def test_a_failing_media_service_is_reported_in_json(failing_camera: OnvifResponder) -> None:
    result = discover(
        "--timeout", "2", "--address", "127.0.0.1", *ON_LOOPBACK,
        "--user", USER, "--password", PASSWORD, "--json",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    [device] = json.loads(result.stdout)["devices"]
    assert device["streams"] is None
    assert device["error"].startswith("the camera's ONVIF service refused the request: ")
    assert "media service unavailable: encoder busy" in device["error"]
    assert "Traceback" not in result.stderr


def test_nothing_answering_is_said_quickly() -> None:
    started = time.monotonic()
    result = discover("--timeout", "0.5", "--address", "127.0.0.1", *ON_LOOPBACK)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no ONVIF device answered within 0.5 s"
    assert time.monotonic() - started < 10  # interpreter start included
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "-1"],
        ["--timeout", "soon"],
        ["--address", "camera:http"],
        ["--interface", "eth0"],
        ["--user", USER],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = discover("--timeout", "0.2", *ON_LOOPBACK, *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("rtsp://192.0.2.7:554/main", "rtsp://192.0.2.7:554/main"),
        (f"rtsp://admin:{PASSWORD}@192.0.2.7/sub", "rtsp://admin:***@192.0.2.7/sub"),
        ("rtsp://admin:other@192.0.2.7/sub", "rtsp://admin:***@192.0.2.7/sub"),
        (
            f"rtsp://192.0.2.7/live?user=admin&password={PASSWORD}&ch=1",
            "rtsp://192.0.2.7/live?user=admin&password=***&ch=1",
        ),
        (f"not a URL {PASSWORD}", "not a URL ***"),
    ],
)
def test_stream_uris_lose_their_passwords(uri: str, redacted: str) -> None:
    assert redact(uri, PASSWORD) == redacted
