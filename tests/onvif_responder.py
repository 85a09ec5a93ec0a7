"""A stand-in ONVIF camera on loopback for the discovery tests.

It announces itself with wsdiscovery's own publisher (a ``dn:NetworkVideoTransmitter`` whose
XAddr is this camera's device service) and serves an ONVIF device and media service over
HTTP with canned SOAP answers: GetServices, GetCapabilities, GetProfiles and GetStreamUri.
Every request must carry a WS-Security UsernameToken with a password digest
(``base64(sha1(nonce + created + password))``) for the camera's user; anything else gets the
fault real cameras send, ``env:Sender / ter:NotAuthorized``, with HTTP 400.

The publisher answers unicast probes sent to 127.0.0.1:3702 and, unless told not to, joins
the WS-Discovery group on 127.0.0.1 (wsdiscovery itself skips loopback addresses, the only
ones a hermetic network namespace has) to answer multicast probes sent through loopback.
"""

import base64
import hashlib
import ipaddress
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

from wsdiscovery import QName, Scope
from wsdiscovery.publishing import ThreadedWSPublishing
from wsdiscovery.udp import UNICAST_UDP_REPEAT

ONVIF_NETWORK_NS = "http://www.onvif.org/ver10/network/wsdl"
DEVICE_NS = "http://www.onvif.org/ver10/device/wsdl"
MEDIA_NS = "http://www.onvif.org/ver10/media/wsdl"
SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
DEVICE_PATH = "/onvif/device_service"
MEDIA_PATH = "/onvif/media_service"


@dataclass(frozen=True)
class Profile:
    """A media profile: ``encoding``/``width``/``height`` absent for a profile without video."""

    token: str
    name: str
    stream_uri: str
    encoding: str | None = None
    width: int = 0
    height: int = 0


@dataclass
class Seen:
    """What the camera was asked: ``(operation, authorized)`` per request."""

    requests: list[tuple[str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, operation: str, authorized: bool) -> None:
        with self.lock:
            self.requests.append((operation, authorized))


class _Publisher(ThreadedWSPublishing):  # type: ignore[misc]
    """wsdiscovery's publisher, answering on IPv4 only.

    wsdiscovery 2.1.2 queues every unicast reply on both its IPv4 and its IPv6 networking
    thread; the IPv6 thread dies on an IPv4 destination ("Address family for hostname not
    supported"), with a traceback, after which it sends nothing.
    """

    def sendUnicastMessage(
        self,
        env: Any,
        host: str,
        port: int,
        initialDelay: int = 0,
        unicast_num: int = UNICAST_UDP_REPEAT,
    ) -> None:
        if ipaddress.ip_address(host).version == 4:
            self._networkingThread_v4.addUnicastMessage(env, host, port, initialDelay, unicast_num)
        elif self._networkingThread_v6 is not None:
            self._networkingThread_v6.addUnicastMessage(env, host, port, initialDelay, unicast_num)


def _envelope(body: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<env:Envelope xmlns:env="{SOAP_NS}" xmlns:tt="http://www.onvif.org/ver10/schema"'
        f' xmlns:tds="{DEVICE_NS}" xmlns:trt="{MEDIA_NS}"'
        f' xmlns:ter="http://www.onvif.org/ver10/error">'
        f"<env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


NOT_AUTHORIZED = _envelope(
    "<env:Fault><env:Code><env:Value>env:Sender</env:Value>"
    "<env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code>"
    '<env:Reason><env:Text xml:lang="en">Sender not Authorized</env:Text></env:Reason>'
    "</env:Fault>"
)


def _fault(reason: str) -> bytes:
    return _envelope(
        "<env:Fault><env:Code><env:Value>env:Receiver</env:Value>"
        "<env:Subcode><env:Value>ter:ActionNotSupported</env:Value></env:Subcode></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{escape(reason)}</env:Text></env:Reason>'
        "</env:Fault>"
    )


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security UsernameToken Profile 1.0 digest: base64(sha1(nonce + created + password))."""
    digest = hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    return base64.b64encode(digest).decode()


class OnvifResponder:
    """A discoverable ONVIF camera at 127.0.0.1: start it, probe it, stop it.

    With ``multicast`` it joins the WS-Discovery group on loopback; without, it answers only
    probes sent to 127.0.0.1:3702, as a camera across a network that drops multicast.
    ``media_fails`` makes every media service request fail with a receiver fault.
    """

    def __init__(
        self,
        *,
        user: str,
        password: str,
        scopes: list[str],
        profiles: list[Profile],
        multicast: bool = True,
        media_fails: bool = False,
    ) -> None:
        self.user = user
        self.password = password
        self.scopes = scopes
        self.profiles = profiles
        self.multicast = multicast
        self.media_fails = media_fails
        self.endpoint = uuid.uuid4().urn
        self.seen = Seen()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self.port: int = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._publisher = _Publisher(uuid_=self.endpoint)

    @property
    def xaddr(self) -> str:
        return f"http://127.0.0.1:{self.port}{DEVICE_PATH}"

    def start(self) -> None:
        self._http_thread.start()
        self._publisher.start()
        if self.multicast:
            self._publisher.addSourceAddr(ipaddress.ip_address("127.0.0.1"))
        self._publisher.publishService(
            [QName(ONVIF_NETWORK_NS, "NetworkVideoTransmitter", "dn")],
            [Scope(s) for s in self.scopes],
            [self.xaddr],
        )

    def stop(self) -> None:
        self._publisher.stop()
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(timeout=5)

    def authorized(self, envelope: ET.Element) -> bool:
        token = envelope.find(f".//{{{WSSE_NS}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE_NS}}}Username")
        password = token.find(f"{{{WSSE_NS}}}Password")
        nonce = token.findtext(f"{{{WSSE_NS}}}Nonce")
        created = token.findtext(f"{{{WSU_NS}}}Created")
        if user != self.user or password is None or not nonce or not created:
            return False
        if password.get("Type") != PASSWORD_DIGEST:
            return False  # a camera may refuse plain-text passwords; this one does
        expected = password_digest(base64.b64decode(nonce), created, self.password)
        return password.text == expected

    def answer(self, path: str, operation: str, request: ET.Element) -> tuple[int, bytes]:
        base = f"http://127.0.0.1:{self.port}"
        if path == DEVICE_PATH and operation == "GetServices":
            services = "".join(
                f"<tds:Service><tds:Namespace>{ns}</tds:Namespace>"
                f"<tds:XAddr>{base}{p}</tds:XAddr>"
                "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version>"
                "</tds:Service>"
                for ns, p in ((DEVICE_NS, DEVICE_PATH), (MEDIA_NS, MEDIA_PATH))
            )
            return 200, _envelope(f"<tds:GetServicesResponse>{services}</tds:GetServicesResponse>")
        if path == DEVICE_PATH and operation == "GetCapabilities":
            return 200, _envelope(
                "<tds:GetCapabilitiesResponse><tds:Capabilities>"
                f"<tt:Device><tt:XAddr>{base}{DEVICE_PATH}</tt:XAddr></tt:Device>"
                f"<tt:Media><tt:XAddr>{base}{MEDIA_PATH}</tt:XAddr></tt:Media>"
                "</tds:Capabilities></tds:GetCapabilitiesResponse>"
            )
        if path == MEDIA_PATH and self.media_fails:
            return 500, _fault("media service unavailable: encoder busy")
        if path == MEDIA_PATH and operation == "GetProfiles":
            profiles = "".join(self._profile_xml(p) for p in self.profiles)
            return 200, _envelope(f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>")
        if path == MEDIA_PATH and operation == "GetStreamUri":
            token = request.findtext(f".//{{{MEDIA_NS}}}ProfileToken")
            for profile in self.profiles:
                if profile.token == token:
                    return 200, _envelope(
                        "<trt:GetStreamUriResponse><trt:MediaUri>"
                        f"<tt:Uri>{escape(profile.stream_uri)}</tt:Uri>"
                        "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
                        "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
                        "<tt:Timeout>PT0S</tt:Timeout>"
                        "</trt:MediaUri></trt:GetStreamUriResponse>"
                    )
            return 400, _fault(f"no profile {token}")
        return 400, _fault(f"{operation} is not supported at {path}")

    @staticmethod
    def _profile_xml(profile: Profile) -> str:
        encoder = ""
        if profile.encoding is not None:
            encoder = (
                '<tt:VideoEncoderConfiguration token="enc-' + profile.token + '">'
                f"<tt:Name>{profile.name} encoder</tt:Name><tt:UseCount>1</tt:UseCount>"
                f"<tt:Encoding>{profile.encoding}</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{profile.width}</tt:Width>"
                f"<tt:Height>{profile.height}</tt:Height></tt:Resolution>"
                "<tt:Quality>5</tt:Quality>"
                "<tt:RateControl><tt:FrameRateLimit>15</tt:FrameRateLimit>"
                "<tt:EncodingInterval>1</tt:EncodingInterval>"
                "<tt:BitrateLimit>2048</tt:BitrateLimit></tt:RateControl>"
                "<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>"
                "<tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address>"
                "<tt:Port>0</tt:Port><tt:TTL>1</tt:TTL><tt:AutoStart>false</tt:AutoStart>"
                "</tt:Multicast><tt:SessionTimeout>PT60S</tt:SessionTimeout>"
                "</tt:VideoEncoderConfiguration>"
            )
        return (
            f'<trt:Profiles token="{profile.token}" fixed="true">'
            f"<tt:Name>{escape(profile.name)}</tt:Name>{encoder}</trt:Profiles>"
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    envelope = ET.fromstring(body)
                except ET.ParseError:
                    self._reply(400, _fault("not XML"))
                    return
                request = envelope.find(f"{{{SOAP_NS}}}Body/*")
                if request is None:
                    self._reply(400, _fault("no SOAP body"))
                    return
                operation = request.tag.rpartition("}")[2]
                authorized = camera.authorized(envelope)
                camera.seen.add(operation, authorized)
                if not authorized:
                    self._reply(400, NOT_AUTHORIZED)
                    return
                self._reply(*camera.answer(self.path, operation, request))

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
