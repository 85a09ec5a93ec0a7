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
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote

import ifaddr
from wsdiscovery import QName
from wsdiscovery.actions import NS_ACTION_PROBE_MATCH, constructProbe
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage

from device_sim.onvif_media import Device, query_streams
from device_sim.redaction import password_kept_out_of_logs

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.255.250"
WS_DISCOVERY_PORT = 3702
ONVIF_NETWORK_NS = "http://www.onvif.org/ver10/network/wsdl"
NVT_TYPE = QName(ONVIF_NETWORK_NS, "NetworkVideoTransmitter", "dn")
ONVIF_SCOPE = "onvif://www.onvif.org/"
# When to send the probe again within the timeout (SOAP-over-UDP repeats a multicast
# message; cameras answer one MessageID once).
PROBE_REPEATS_S = (0.0, 0.25, 0.75)
MAX_DATAGRAM = 0xFFFF
Target = tuple[int, tuple[Any, ...]]  # (address family, socket address) of a unicast probe


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
