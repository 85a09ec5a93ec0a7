"""The camera's onboarding: read the QR code, make a key, activate with the cloud."""

import secrets
import time
import urllib.parse
from pathlib import Path

import av
import av.error
import cv2
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.identity import public_key_b64
from device_sim.state import CameraState
from protocol.errors import ProtocolError
from protocol.qr import QrPayload, decode_qr_payload


class OnboardingError(Exception):
    """The QR code could not be read, or the cloud refused the activation."""


def read_qr(image_path: Path) -> QrPayload:
    """Decode a QR code image as a camera does (OpenCV's ArUco-based detector)."""
    image = cv2.imread(str(image_path))
    if image is None:
        raise OnboardingError(f"{image_path} is not an image")
    text, _, _ = cv2.QRCodeDetectorAruco().detectAndDecode(image)
    if not text:
        raise OnboardingError(f"no QR code found in {image_path}")
    return decode_qr_payload(text)


SCAN_EVERY_S = 0.2  # looking costs ~30 ms per 720p picture: a few looks a second


def scan_qr(location: str, timeout_s: float = 300.0) -> QrPayload:
    """Read the onboarding QR code off a video source's pictures, as a camera does when the
    owner holds the phone in front of its lens: ``rtsp://…`` (over TCP), ``/dev/videoN`` or
    a file. Blocking (run it in a thread). Raises :class:`OnboardingError` when the source
    cannot be read or no valid code was seen within ``timeout_s``; a QR code that is not a
    VisionConnect code is skipped (the owner may be showing the wrong one).
    """
    from device_sim.redaction import redact
    from device_sim.sources import describe_failure

    url = urllib.parse.urlsplit(location)
    options = {"rtsp_transport": "tcp"} if url.scheme in ("rtsp", "rtsps") else {}
    fmt = "v4l2" if location.startswith("/dev/video") else None
    detector = cv2.QRCodeDetectorAruco()
    deadline = time.monotonic() + timeout_s
    looked = 0.0
    try:
        with av.open(location, format=fmt, options=options, timeout=(10.0, 10.0)) as source:
            video = next((s for s in source.streams if s.type == "video"), None)
            if video is None:
                raise OnboardingError(f"{redact(location)} has no video")
            while time.monotonic() < deadline:
                for frame in source.decode(video=0):
                    if time.monotonic() >= deadline:
                        break
                    if time.monotonic() - looked < SCAN_EVERY_S:
                        continue
                    looked = time.monotonic()
                    text, _, _ = detector.detectAndDecode(frame.to_ndarray(format="bgr24"))
                    if text:
                        try:
                            return decode_qr_payload(text)
                        except ProtocolError:
                            continue
                else:
                    source.seek(0)  # a file: look again from its start
    except av.error.FFmpegError as exc:
        raise OnboardingError(describe_failure(exc, redact(location), url.password)) from exc
    raise OnboardingError(f"no onboarding QR code seen by {redact(location)} in {timeout_s:g} s")


def new_device_uid() -> str:
    return "SIM-" + secrets.token_hex(6).upper()


async def activate(
    payload: QrPayload,
    *,
    device_uid: str | None = None,
    firmware_version: str = "sim-1.0",
    key: Ed25519PrivateKey | None = None,
    http: httpx.AsyncClient | None = None,
) -> CameraState:
    """Claim the QR token with a fresh Ed25519 key; the Wi-Fi credentials stay on the camera."""
    key = key or Ed25519PrivateKey.generate()
    uid = device_uid or new_device_uid()
    body = {
        "token": payload.t,
        "device_uid": uid,
        "camera_model": payload.m,
        "firmware_version": firmware_version,
        "public_key": public_key_b64(key),
    }
    client = http or httpx.AsyncClient(timeout=15)
    try:
        response = await client.post(payload.u + "/api/v1/devices/activate", json=body)
    except httpx.HTTPError as exc:
        raise OnboardingError(f"cannot reach the cloud at {payload.u}: {exc}") from exc
    finally:
        if http is None:
            await client.aclose()
    if response.status_code != 201:
        try:
            error = response.json()["error"]
            why = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            why = response.text[:200]
        raise OnboardingError(f"activation refused ({response.status_code}) {why}")
    data = response.json()
    return CameraState(
        cloud_url=payload.u,
        device_id=data["device_id"],
        device_uid=uid,
        device_name=data["device_name"],
        camera_model=payload.m,
        firmware_version=firmware_version,
        signaling_url=data["signaling_url"],
        private_key=CameraState.encode_key(key),
    )
