"""A camera's stream URIs from its ONVIF media service (onvif-zeep-async).

:func:`query_streams` asks a camera found by :mod:`device_sim.discover`, with the given
credentials, for its media profiles and their RTSP URIs (GetServices or GetCapabilities,
GetProfiles, GetStreamUri), with a WS-Security password digest: the password never travels in
clear and never appears in output or logs (:mod:`device_sim.redaction`). A camera that refuses
the credentials or whose service fails keeps its place in the result, with the reason in
plain words.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from device_sim.redaction import redact, scrub, scrub_all

log = logging.getLogger(__name__)

MEDIA_NS = "http://www.onvif.org/ver10/media/wsdl"
QUERY_TIMEOUT_S = 10.0  # per camera, for all of its ONVIF requests


@dataclass
class Stream:
    """One media profile of a camera and its RTSP URI (redacted), or why it has none."""

    profile: str
    token: str
    encoding: str | None = None
    resolution: str | None = None  # "WIDTHxHEIGHT"
    uri: str | None = None
    error: str | None = None


@dataclass
class Device:
    """An ONVIF camera that answered the probe; ``streams`` is None until asked for."""

    endpoint: str
    address: str  # where the answer came from
    name: str | None
    hardware: str | None
    xaddrs: list[str]
    scopes: list[str]
    types: list[str] = field(default_factory=list)
    streams: list[Stream] | None = None
    error: str | None = None

    def scrubbed(self, password: str | None) -> "Device":
        """A copy without ``password`` in any of its texts (the camera's included)."""
        if not password:
            return self
        data = scrub_all(asdict(self), password)
        streams = data.pop("streams")
        return Device(**data, streams=None if streams is None else [Stream(**s) for s in streams])


def _service_url(xaddrs: Sequence[str]) -> tuple[str, int] | None:
    """``(scheme://host, port)`` of the first HTTP(S) device service address."""
    for xaddr in xaddrs:
        try:
            parts = urlsplit(xaddr)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and parts.hostname:
            host = parts.hostname
            if ":" in host:
                host = f"[{host}]"
            return f"{parts.scheme}://{host}", port
    return None


def _reason(exc: BaseException, where: str, user: str) -> str:
    """Why a camera's ONVIF service gave no stream URIs, in plain words."""
    from aiohttp import ClientError
    from onvif.util import is_auth_error, stringify_onvif_error
    from zeep.exceptions import Fault, TransportError

    if isinstance(exc, TimeoutError):
        return f"the ONVIF service at {where} did not answer within {QUERY_TIMEOUT_S:g} s"
    if isinstance(exc, Fault):
        if is_auth_error(exc):
            return f"the camera refused the credentials of user {user!r}"
        return f"the camera's ONVIF service refused the request: {stringify_onvif_error(exc)}"
    if isinstance(exc, TransportError):
        if exc.status_code in (401, 403):
            return f"the camera refused the credentials of user {user!r}"
        return f"the ONVIF service at {where} answered HTTP {exc.status_code}"
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError | ClientError):
        return f"cannot reach the ONVIF service at {where}: {message}"
    return f"the camera's ONVIF service failed: {message}"


async def query_streams(device: Device, user: str, password: str) -> None:
    """Fill ``device.streams`` from the camera's media profiles, or ``device.error``.

    The device service is the one at ``/onvif/device_service`` on the host and port of the
    first HTTP(S) XAddr (onvif-zeep-async's fixed path, the one cameras use). Bounded by
    :data:`QUERY_TIMEOUT_S`. Never raises for what the camera does: every failure becomes
    ``device.error`` (the whole camera) or ``Stream.error`` (one profile).
    """
    # Imported here: onvif.client calls logging.basicConfig(level=INFO) when imported.
    from onvif import ONVIFCamera

    service = _service_url(device.xaddrs)
    if service is None:
        device.error = "the camera announced no HTTP address for its ONVIF service"
        return
    host, port = service
    where = f"{host}:{port}/onvif/device_service"
    camera = ONVIFCamera(host, port, user, password, no_cache=True)
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            await camera.update_xaddrs()
            if MEDIA_NS not in camera.xaddrs:
                device.error = "the camera has no ONVIF media service"
                return
            media = await camera.create_media_service()
            profiles = await media.GetProfiles()
            streams: list[Stream] = []
            for profile in profiles or []:
                streams.append(await _stream(media, profile, password))
            device.streams = streams
    except Exception as exc:  # the camera's failure, whatever it is, is reported, not raised
        log.debug("ONVIF query of %s failed", where, exc_info=True)
        device.error = scrub(_reason(exc, where, user), password)
    finally:
        try:
            await camera.close()
        except Exception as exc:  # closing a half-set-up client must not hide the result
            log.debug("closing the ONVIF client of %s: %s", where, exc)


async def _stream(media: Any, profile: Any, password: str) -> Stream:
    stream = Stream(profile=str(profile.Name or profile.token), token=str(profile.token))
    encoder = getattr(profile, "VideoEncoderConfiguration", None)
    if encoder is not None:
        stream.encoding = str(encoder.Encoding) if encoder.Encoding else None
        if encoder.Resolution is not None:
            stream.resolution = f"{encoder.Resolution.Width}x{encoder.Resolution.Height}"
    request = {
        "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
        "ProfileToken": profile.token,
    }
    try:
        answer = await media.GetStreamUri(request)
        stream.uri = redact(str(answer.Uri), password)
    except TimeoutError:
        raise  # the camera went silent: the whole camera gets the reason
    except Exception as exc:  # one profile without a URI does not hide the others
        stream.error = scrub(f"no stream URI: {exc}", password)
    return stream
