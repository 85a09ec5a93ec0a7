"""Web Push (docs/protocol.md, "Notifications"): RFC 8030 delivery, RFC 8291 message
encryption and RFC 8292 VAPID, all through ``pywebpush`` / ``py-vapid`` / ``http-ece``.

The VAPID key pair is ``VAPID_PRIVATE_KEY`` (raw 32-byte base64url, or DER/PEM base64) in
production, where push is off without it; in development it is generated once into
``DATA_DIR/vapid-private.pem`` (every instance of one deployment reads the same file). A
push service answering 404 or 410 means the subscription is gone: it is deleted.
"""

import base64
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02  # type: ignore[import-untyped]
from pywebpush import WebPusher, WebPushException  # type: ignore[import-untyped]
from starlette.requests import Request
from starlette.responses import Response

from cloud.context import context, require_user, user
from cloud.devices.access import parse_id
from cloud.errors import Conflict, Invalid, NotFound, Unavailable
from cloud.http import Endpoint, parse_body, reply
from cloud.notify.addresses import CheckedResolver, RefusedAddress, check, checking, describe
from cloud.notify.models import Delivery, Notification, PushSubscription
from cloud.notify.outbox import ROUND_S, SEND_TIMEOUT_S, Outbox, Outcome, Recent, now
from cloud.settings import Settings, SettingsError
from protocol.notify import (
    PushPayload,
    PushSubscriptionIn,
    PushSubscriptionList,
    PushSubscriptionOut,
    PushTestOut,
    VapidKey,
)

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS_PER_USER = 50
VAPID_FILE = "vapid-private.pem"
VAPID_CLAIM_S = 12 * 3600  # a signed claim is reused for an origin until it nears this age


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def load_vapid(settings: Settings) -> Any | None:
    """The VAPID key (py_vapid.Vapid02), or None when push is off (production without one)."""
    if settings.vapid_private_key:
        try:
            return Vapid02.from_string(settings.vapid_private_key)
        except Exception as exc:
            raise SettingsError("VAPID_PRIVATE_KEY is not a P-256 private key") from exc
    if settings.production:
        log.warning("VAPID_PRIVATE_KEY is not set: Web Push is off")
        return None
    path = settings.data_dir / VAPID_FILE
    if not path.exists():
        _write_new_key(path)
    return Vapid02.from_pem(path.read_bytes())


def _write_new_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process of this deployment wrote it first
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def application_server_key(vapid: Any) -> str:
    raw: bytes = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(raw)


def subject(settings: Settings) -> str:
    if settings.vapid_subject:
        return settings.vapid_subject
    host = urlsplit(settings.public_url).hostname or "localhost"
    return f"mailto:webpush@{host if '.' in host else 'localhost'}"


class PushSender:
    """Encrypts and posts a notification's delivery to its subscription's push service."""

    def __init__(self, settings: Settings, vapid: Any) -> None:
        self.settings = settings
        self.vapid = vapid
        self.outbox: Outbox | None = None
        self._session: aiohttp.ClientSession | None = None
        self._claims: dict[str, tuple[float, dict[str, str]]] = {}
        self.recent: Recent[PushSubscription] = Recent()

    async def prefetch(self, ids: list[Any]) -> None:
        """Read the subscriptions of a round's deliveries not read just now, in one query."""
        if missing := self.recent.missing(ids):
            self.recent.refresh(
                missing, await PushSubscription.find({"_id": {"$in": missing}}).to_list()
            )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = CheckedResolver(self.settings) if checking(self.settings) else None
            connector = aiohttp.TCPConnector(resolver=resolver, limit=256)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def authorization(self, endpoint: str) -> dict[str, str]:
        """The VAPID header for the endpoint's origin (RFC 8292: aud = the origin)."""
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        at = time.time()
        cached = self._claims.get(origin)
        if cached is not None and cached[0] - at > VAPID_CLAIM_S / 2:
            return cached[1]
        expires = int(at) + VAPID_CLAIM_S
        signed: dict[str, str] = self.vapid.sign(
            {"aud": origin, "sub": subject(self.settings), "exp": expires}
        )
        self._claims[origin] = (expires, signed)
        return signed

    async def __call__(self, notification: Notification, delivery: Delivery) -> Outcome:
        if self.vapid is None:
            return Outcome(False, error="Web Push is not configured", retry=False)
        sub = self.recent.get(delivery.target_id, ROUND_S) or await PushSubscription.get(
            delivery.target_id
        )
        if sub is None:
            return Outcome(False, error="the subscription was deleted", retry=False)
        info = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}
        try:
            answer = await WebPusher(info, aiohttp_session=self.session()).send_async(
                notification.body(delivery),
                self.authorization(sub.endpoint),
                ttl=self.settings.notify_push_ttl_s,
                timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S),
            )
        except (aiohttp.ClientError, TimeoutError, RefusedAddress) as exc:
            return Outcome(False, error=describe(exc))
        except (WebPushException, ValueError, TypeError) as exc:  # keys not usable: never will be
            return Outcome(
                False, error=f"cannot encrypt to this subscription: {describe(exc)}", retry=False
            )
        status: int = answer.status
        if status in (200, 201, 202):
            return Outcome(True, status_code=status)
        if status in (404, 410):
            assert sub.id is not None
            self.recent.forget(sub.id)
            await sub.delete()
            if self.outbox is not None:
                assert sub.id is not None
                await self.outbox.kill_target(sub.id, "the push service ended the subscription")
            log.info("push subscription %s of user %s gone (%d)", sub.id, sub.user_id, status)
            return Outcome(False, status_code=status, error="subscription gone", retry=False)
        retry = status == 429 or status >= 500
        return Outcome(False, status_code=status, error=f"HTTP {status}", retry=retry)


def payload_json(payload: PushPayload) -> str:
    return json.dumps(payload.model_dump(), separators=(",", ":"))


# routes -----------------------------------------------------------------------------------


def _vapid(request: Request) -> Any:
    vapid = request.app.state.notifier.vapid
    if vapid is None:
        raise Unavailable("Web Push is not configured on this server", retry_after_s=3600)
    return vapid


async def get_vapid(request: Request) -> Response:
    return reply(VapidKey(public_key=application_server_key(_vapid(request))))


def subscription_out(doc: PushSubscription) -> PushSubscriptionOut:
    return PushSubscriptionOut(
        id=str(doc.id), endpoint=doc.endpoint, created_at=doc.created_at, expires_at=doc.expires_at
    )


async def subscribe(request: Request) -> Response:
    _vapid(request)
    principal = user(request)
    body = await parse_body(request, PushSubscriptionIn)
    try:
        await check(body.endpoint, context(request).settings)
    except RefusedAddress as exc:
        raise Invalid(f"endpoint: {exc}") from None
    expires = (
        datetime.fromtimestamp(body.expirationTime / 1000, UTC)
        if body.expirationTime is not None
        else None
    )
    existing = await PushSubscription.find_one(PushSubscription.endpoint == body.endpoint)
    if existing is None:
        count = await PushSubscription.find(PushSubscription.user_id == principal.user_id).count()
        if count >= MAX_SUBSCRIPTIONS_PER_USER:
            raise Conflict(f"you have {MAX_SUBSCRIPTIONS_PER_USER} push subscriptions, the most")
    fields = {
        "user_id": principal.user_id,
        "p256dh": body.keys.p256dh,
        "auth": body.keys.auth,
        "expires_at": expires,
    }
    await PushSubscription.get_pymongo_collection().update_one(
        {"endpoint": body.endpoint},
        {"$set": fields, "$setOnInsert": {"created_at": now()}},
        upsert=True,
    )
    doc = await PushSubscription.find_one(PushSubscription.endpoint == body.endpoint)
    assert doc is not None
    log.info("push subscription %s for user %s", doc.id, principal.user_id)
    return reply(subscription_out(doc), 201)


async def list_subscriptions(request: Request) -> Response:
    docs = (
        await PushSubscription.find(PushSubscription.user_id == user(request).user_id)
        .sort("created_at")
        .to_list()
    )
    return reply(PushSubscriptionList(subscriptions=[subscription_out(d) for d in docs]))


async def unsubscribe(request: Request) -> Response:
    doc = await PushSubscription.get(
        parse_id(request.path_params["subscription_id"], "subscription")
    )
    if doc is None or doc.user_id != user(request).user_id:
        raise NotFound("no such subscription")
    await doc.delete()
    assert doc.id is not None
    request.app.state.notifier.push.recent.forget(doc.id)
    await request.app.state.notifier.outbox.kill_target(doc.id, "the subscription was deleted")
    return reply(None, 204)


async def test_push(request: Request) -> Response:
    _vapid(request)
    queued = await request.app.state.notifier.test(user(request).user_id)
    return reply(PushTestOut(queued=queued), 202)


TAG = "notifications"
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/push/vapid",
        get_vapid,
        "The VAPID public key (PushManager.subscribe's applicationServerKey)",
        TAG,
        response=VapidKey,
        errors=(503,),
        auth=require_user,
    ),
    Endpoint(
        "POST",
        "/api/v1/push/subscriptions",
        subscribe,
        "Subscribe this browser to push notifications (its PushSubscription JSON); "
        "an endpoint already known is updated (its keys, and its user: the caller)",
        TAG,
        status=201,
        body=PushSubscriptionIn,
        response=PushSubscriptionOut,
        errors=(409, 422, 503),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        "/api/v1/push/subscriptions",
        list_subscriptions,
        "Your push subscriptions",
        TAG,
        response=PushSubscriptionList,
        auth=require_user,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/push/subscriptions/{subscription_id}",
        unsubscribe,
        "Delete a push subscription",
        TAG,
        status=204,
        errors=(404,),
        auth=require_user,
    ),
    Endpoint(
        "POST",
        "/api/v1/push/test",
        test_push,
        "Queue a test notification to each of your subscriptions",
        TAG,
        status=202,
        response=PushTestOut,
        errors=(503,),
        auth=require_user,
    ),
]
