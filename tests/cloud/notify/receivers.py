"""Real receivers on loopback for the notification suites and bench/notify.py.

:class:`PushService` speaks RFC 8030 as a browser vendor's push service does: it accepts a
POST to a subscription's endpoint only with a VAPID ``Authorization: vapid t=<JWT>, k=<key>``
(RFC 8292) whose ES256 signature verifies with ``k``, whose ``aud`` is the endpoint's origin
and whose ``exp`` is in the next 24 h, and with an ``aes128gcm`` body (RFC 8188/8291) that it
decrypts with the subscription's private key and auth secret, as the browser would. The
verification is written here against ``cryptography`` (not with the sender's libraries).

:class:`WebhookReceiver` records every POST and answers what the test scripts.
"""

import asyncio
import base64
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece  # type: ignore[import-untyped]
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.servers import free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class VapidError(ValueError):
    pass


def verify_vapid(header: str, origin: str) -> dict[str, Any]:
    """The claims of a valid RFC 8292 ``vapid t=..., k=...`` header for ``origin``."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(f"scheme {scheme!r}, not vapid")
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    token, key = parts["t"], parts["k"]
    head_b64, claims_b64, signature_b64 = token.split(".")
    head = json.loads(unb64url(head_b64))
    if head.get("alg") != "ES256":
        raise VapidError(f"alg {head.get('alg')!r}")
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    raw = unb64url(signature_b64)
    if len(raw) != 64:
        raise VapidError("the signature is not 64 bytes (r || s)")
    der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VapidError("the JWT signature does not verify") from None
    claims: dict[str, Any] = json.loads(unb64url(claims_b64))
    if claims.get("aud") != origin:
        raise VapidError(f"aud {claims.get('aud')!r}, not {origin!r}")
    if not time.time() < claims["exp"] <= time.time() + 86_400:
        raise VapidError("exp is not within the next 24 h")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https://")):
        raise VapidError("no sub")
    claims["k"] = key
    return claims


@dataclass
class Browser:
    """One subscription's keys, as the browser keeps them."""

    name: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))
    answer: int = 201  # what the push service answers for it (410: unsubscribed)

    def keys(self) -> dict[str, str]:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"p256dh": b64url(point), "auth": b64url(self.auth)}


@dataclass
class PushMessage:
    browser: str
    payload: dict[str, Any]
    claims: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.time() at receipt


class PushService:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.browsers: dict[str, Browser] = {}
        self.messages: list[PushMessage] = []
        self.refused: list[str] = []  # why requests were refused (a failed check)
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def subscribe(self, name: str | None = None) -> tuple[Browser, dict[str, Any]]:
        """A new browser and its PushSubscription JSON."""
        browser = Browser(name or secrets.token_hex(8))
        self.browsers[browser.name] = browser
        return browser, {
            "endpoint": f"{self.origin}/push/{browser.name}",
            "keys": browser.keys(),
            "expirationTime": None,
        }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push/{name}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        browser = self.browsers.get(request.match_info["name"])
        if browser is None:
            return web.Response(status=404)
        body = await request.read()
        try:
            claims = verify_vapid(request.headers.get("Authorization", ""), self.origin)
            if request.headers.get("Content-Encoding") != "aes128gcm":
                raise VapidError("Content-Encoding is not aes128gcm")
            if not request.headers.get("TTL", "").isdigit():
                raise VapidError("no TTL header")
            plain = http_ece.decrypt(
                body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
            )
        except Exception as exc:  # every failed check is a refusal the test sees
            self.refused.append(f"{type(exc).__name__}: {exc}")
            return web.Response(status=400, text=str(exc))
        if browser.answer >= 300:
            return web.Response(status=browser.answer)
        self.messages.append(
            PushMessage(browser.name, json.loads(plain), claims, dict(request.headers), time.time())
        )
        self.arrived.set()
        return web.Response(
            status=201, headers={"Location": f"{self.origin}/m/{len(self.messages)}"}
        )

    def of(self, browser: Browser) -> list[PushMessage]:
        return [m for m in self.messages if m.browser == browser.name]

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[PushMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self.messages


@dataclass
class Hit:
    hook: str
    body: bytes
    headers: dict[str, str]
    status: int
    at: float


class WebhookReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.hits: list[Hit] = []
        self.failures: dict[str, int] = {}  # hook -> how many more requests answer 500
        self._runner: web.AppRunner | None = None

    def url(self, hook: str) -> str:
        return f"{self.base}/hook/{hook}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{name}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        status = 200
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            status = 500
        self.hits.append(
            Hit(name, await request.read(), dict(request.headers), status, time.time())
        )
        return web.Response(status=status)

    def of(self, hook: str, status: int | None = None) -> list[Hit]:
        return [h for h in self.hits if h.hook == hook and (status is None or h.status == status)]
