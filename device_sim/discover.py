"""LAN discovery of ONVIF cameras: a WS-Discovery probe, then ONVIF Media for stream URIs.

:func:`probe` sends one WS-Discovery Probe for ``dn:NetworkVideoTransmitter`` to the
multicast group 239.255.255.250:3702 through every IPv4 address of the machine, or the ones
given (loopback included: a camera simulated on this host answers too), and, for networks
without multicast, straight to given hosts; it collects the ProbeMatches that answer it until
the timeout. The SOAP messages are wsdiscovery's (built and parsed by the library); the UDP
exchange is this module's own socket, because wsdiscovery's threaded daemon (2.1.2) cannot
be used for it: it never reads the socket its unicast probes leave from (so their answers
are lost), its IPv6 thread dies with a traceback on an IPv4 destination, and it skips
loopback addresses, the only ones of a hermetic test network.

:func:`query_streams` then asks each camera, with the given credentials, for its media
profiles and their RTSP URIs (onvif-zeep-async: GetServices or GetCapabilities, GetProfiles,
GetStreamUri), with a WS-Security password digest: the password never travels in clear, and
it never appears in output or logs (:func:`redact`, :meth:`Device.scrubbed`). A camera that
refuses the credentials or whose service fails keeps its place in the result, with the
reason in plain words.
"""

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import selectors
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import ifaddr
from wsdiscovery import QName
from wsdiscovery.actions import NS_ACTION_PROBE_MATCH, constructProbe
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage

log = logging.getLogger(__name__)

MEDIA_NS = "http://www.onvif.org/ver10/media/wsdl"
MULTICAST_GROUP = "239.255.255.250"
WS_DISCOVERY_PORT = 3702
ONVIF_NETWORK_NS = "http://www.onvif.org/ver10/network/wsdl"
NVT_TYPE = QName(ONVIF_NETWORK_NS, "NetworkVideoTransmitter", "dn")
ONVIF_SCOPE = "onvif://www.onvif.org/"
# When to send the probe again within the timeout (SOAP-over-UDP repeats a multicast
# message; cameras answer one MessageID once).
PROBE_REPEATS_S = (0.0, 0.25, 0.75)
MAX_DATAGRAM = 0xFFFF
QUERY_TIMEOUT_S = 10.0  # per camera, for all of its ONVIF requests
REDACTED = "***"
CREDENTIAL_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "pass", "psw", "token"})
Target = tuple[int, tuple[Any, ...]]  # (address family, socket address) of a unicast probe


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
        data = _scrub_all(asdict(self), password)
        streams = data.pop("streams")
        return Device(**data, streams=None if streams is None else [Stream(**s) for s in streams])


def scope_value(scopes: Iterable[str], kind: str) -> str | None:
    """The URL-decoded value of the first ``onvif://www.onvif.org/KIND/VALUE`` scope."""
    prefix = f"{ONVIF_SCOPE}{kind}/"
    for scope in scopes:
        if scope.lower().startswith(prefix.lower()):
            return unquote(scope[len(prefix) :]) or None
    return None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT`` (port 3702 by default); ValueError if not."""
    host, port = text, WS_DISCOVERY_PORT
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not HOST[:PORT]: {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"not HOST[:PORT]: {text!r}")
    return host, port


def _interface_addresses() -> list[str]:
    """Every IPv4 address of this machine's interfaces, each a way out for multicast."""
    addresses: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in addresses:
                addresses.append(ip.ip)
    return addresses


class AddressError(OSError):
    """A ``--address`` host that does not resolve."""


def _resolve(targets: Sequence[tuple[str, int]]) -> list[Target]:
    """Socket addresses of the unicast targets; AddressError names a host that does not resolve."""
    resolved: list[Target] = []
    for host, port in targets:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise AddressError(f"cannot resolve {host}: {exc.strerror}") from exc
        family, _, _, _, sockaddr = infos[0]
        resolved.append((int(family), tuple(sockaddr)))
    return resolved


class _Prober:
    """The probe's sockets: one per address family, sending and receiving on one port."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.sockets: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()

    def socket_for(self, family: int) -> socket.socket:
        if family not in self.sockets:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            self.sockets[family] = sock
            self.selector.register(sock, selectors.EVENT_READ)
        return self.sockets[family]

    def send(self, multicast_via: Sequence[str], unicast: Sequence[Target]) -> int:
        """Send the probe; returns through how many ways it went out."""
        sent = 0
        if multicast_via:
            sock = self.socket_for(socket.AF_INET)
            for address in multicast_via:
                try:
                    sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)
                    )
                    sock.sendto(self.message, (MULTICAST_GROUP, WS_DISCOVERY_PORT))
                    sent += 1
                except OSError as exc:  # an interface that is down or has no multicast
                    log.debug("no multicast probe through %s: %s", address, exc)
        for family, sockaddr in unicast:
            try:
                self.socket_for(family).sendto(self.message, sockaddr)
                sent += 1
            except OSError as exc:
                log.warning("cannot send the probe to %s: %s", sockaddr[0], exc)
        return sent

    def receive(self, until: float) -> list[tuple[bytes, str]]:
        """Datagrams that arrive before the monotonic time ``until``, with their senders."""
        received: list[tuple[bytes, str]] = []
        while (left := until - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data, sender = sock.recvfrom(MAX_DATAGRAM)
                except OSError as exc:  # e.g. ICMP port unreachable from a unicast target
                    log.debug("probe socket: %s", exc)
                    continue
                received.append((data, str(sender[0])))
            if received:
                break
        return received

    def close(self) -> None:
        self.selector.close()
        for sock in self.sockets.values():
            sock.close()


def probe(
    timeout_s: float,
    unicast: Sequence[tuple[str, int]] = (),
    interfaces: Sequence[str] | None = None,
) -> list[Device]:
    """The ONVIF cameras that answer a WS-Discovery probe within ``timeout_s`` seconds.

    The probe goes to the multicast group through each local IPv4 address of ``interfaces``
    (None: every one of this machine's, ``[]``: no multicast), and to each ``(host, port)`` of
    ``unicast``. Answers are kept if they relate to this probe and announce a
    ``dn:NetworkVideoTransmitter``, one per endpoint reference, in the order they came.
    Raises :class:`AddressError` if a unicast host does not resolve. Blocking: run it in a
    thread from async code.
    """
    targets = _resolve(unicast)
    envelope = constructProbe([NVT_TYPE], [])
    message_id = envelope.getMessageId()
    message = createSOAPMessage(envelope).encode()
    if interfaces is None:
        interfaces = _interface_addresses()
    prober = _Prober(message)
    devices: dict[str, Device] = {}
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        for offset in PROBE_REPEATS_S:
            if started + offset >= deadline:
                break
            for data, sender in prober.receive(started + offset):
                _add_matches(devices, data, sender, message_id)
            if prober.send(interfaces, targets) == 0 and offset == 0.0:
                log.warning("the probe went nowhere: no interface or address took it")
        while time.monotonic() < deadline:
            for data, sender in prober.receive(deadline):
                _add_matches(devices, data, sender, message_id)
    finally:
        prober.close()
    return list(devices.values())


def _add_matches(devices: dict[str, Device], data: bytes, sender: str, message_id: str) -> None:
    try:
        envelope = parseSOAPMessage(data, sender)
    except Exception as exc:  # a malformed answer is the sender's problem, not the probe's
        log.debug("unreadable answer from %s: %s", sender, exc)
        return
    if envelope is None or envelope.getAction() != NS_ACTION_PROBE_MATCH:
        return
    if envelope.getRelatesTo() != message_id:
        return
    for match in envelope.getProbeResolveMatches():
        types = [str(t.getFullname()) for t in match.getTypes()]
        if NVT_TYPE.getFullname() not in types:
            continue
        endpoint = str(match.getEPR())
        if endpoint not in devices:
            scopes = [str(s.getValue()) for s in match.getScopes()]
            devices[endpoint] = Device(
                endpoint=endpoint,
                address=sender,
                name=scope_value(scopes, "name"),
                hardware=scope_value(scopes, "hardware"),
                xaddrs=[str(x) for x in match.getXAddrs()],
                scopes=scopes,
                types=types,
            )


def redact(uri: str, password: str | None = None) -> str:
    """``uri`` with the password of its user info and credential query values as ``***``.

    The given ``password`` is replaced wherever else it appears, too.
    """
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}:{REDACTED}@{hostport}"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in CREDENTIAL_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if k.lower() in CREDENTIAL_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
        uri = urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        pass  # not a URL: only the literal password goes
    return scrub(uri, password)


def scrub(text: str, password: str | None) -> str:
    """``text`` with ``password`` replaced by ``***``: as is, percent-encoded, XML-escaped
    and as in a ``bytes`` repr (the forms it takes in URIs and in logged SOAP messages)."""
    if not password:
        return text
    forms = {
        password,
        quote(password, safe=""),
        escape(password, {'"': "&quot;", "'": "&apos;"}),
        repr(password.encode())[2:-1],
    }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


class _ScrubFilter(logging.Filter):
    """Takes the password out of every record a handler writes (message and traceback)."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage(), self.password)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.password)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.password)
        return True


@contextmanager
def password_kept_out_of_logs(password: str | None) -> Iterator[None]:
    """While inside, the root logger's handlers write no ``password``.

    At DEBUG level onvif-zeep-async logs every SOAP message in full, and a camera may put
    the password into the stream URIs it returns.
    """
    if not password:
        yield
        return
    handlers = list(logging.getLogger().handlers)
    scrubber = _ScrubFilter(password)
    for handler in handlers:
        handler.addFilter(scrubber)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(scrubber)


def _scrub_all(value: Any, password: str) -> Any:
    """``value`` (JSON-like) with :func:`scrub` applied to each of its strings."""
    if isinstance(value, str):
        return scrub(value, password)
    if isinstance(value, list):
        return [_scrub_all(v, password) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_all(v, password) for k, v in value.items()}
    return value


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


async def discover(
    timeout_s: float,
    unicast: Sequence[tuple[str, int]] = (),
    user: str | None = None,
    password: str | None = None,
    interfaces: Sequence[str] | None = None,
) -> list[Device]:
    """Probe for ONVIF cameras (see :func:`probe`), then, with credentials, ask each for its
    stream URIs (see :func:`query_streams`)."""
    devices = await asyncio.to_thread(probe, timeout_s, unicast, interfaces)
    if user is not None and password is not None:
        await asyncio.gather(*(query_streams(d, user, password) for d in devices))
    return devices


def format_table(devices: Sequence[Device], timeout_s: float) -> str:
    """The human-readable listing: one block per camera, one line per stream."""
    if not devices:
        return f"no ONVIF device answered within {timeout_s:g} s"
    lines = [f"{len(devices)} ONVIF device{'s' if len(devices) != 1 else ''} answered"]
    for device in devices:
        lines.append("")
        title = device.name or device.endpoint
        if device.hardware:
            title += f" ({device.hardware})"
        lines.append(f"{title}  at {device.address}")
        lines.append(f"  endpoint  {device.endpoint}")
        for xaddr in device.xaddrs or ["(none announced)"]:
            lines.append(f"  xaddr     {xaddr}")
        if device.error is not None:
            lines.append(f"  streams   not listed: {device.error}")
        elif device.streams is None:
            lines.append("  streams   not listed: give --user and --password to ask the camera")
        elif not device.streams:
            lines.append("  streams   none: the camera has no media profile")
        else:
            width = max(len(s.profile) for s in device.streams)
            for s in device.streams:
                video = " ".join(x for x in (s.resolution, s.encoding) if x) or "-"
                lines.append(f"  stream    {s.profile:<{width}}  {video:<14}  {s.uri or s.error}")
    return "\n".join(lines)


def probe_address(text: str) -> tuple[str, int]:
    """argparse type of ``--address``: ``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT``."""
    try:
        return parse_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {text!r}") from None


def interface_address(text: str) -> str:
    """argparse type of ``--interface``: an IPv4 address of this machine."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}") from None


def seconds(text: str) -> float:
    """argparse type of ``--timeout``: a positive number of seconds, at most an hour."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds in (0, 3600]: {text!r}")
    return value


async def command(args: argparse.Namespace) -> int:
    """``python -m device_sim discover``: 0 when the search ran (found or not), 2 on bad
    arguments, 1 when no probe could be sent at all."""
    if (args.user is None) != (args.password is None):
        print("discover: give --user and --password together", file=sys.stderr)
        return 2
    try:
        with password_kept_out_of_logs(args.password):
            devices = await discover(
                args.timeout, args.address, args.user, args.password, args.interface or None
            )
    except AddressError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"discover: cannot send the probe: {exc}", file=sys.stderr)
        return 1
    devices = [d.scrubbed(args.password) for d in devices]
    if args.json:
        document = {"timeout_s": args.timeout, "devices": [asdict(d) for d in devices]}
        print(json.dumps(document, indent=2, ensure_ascii=False))
        if not devices:
            print(format_table(devices, args.timeout), file=sys.stderr)
    else:
        print(format_table(devices, args.timeout))
    return 0
