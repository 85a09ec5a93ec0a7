"""Webhooks (docs/protocol.md, "Notifications"): a user registers a URL and gets a secret,
once; every event state change of the cameras they may see is POSTed to it, signed as
Standard Webhooks says, from the outbox (at least once, retried with backoff).

Signing: ``webhook-id`` is the delivery's id (the same on every try, so a receiver can drop
repeats), ``webhook-timestamp`` the try's time (unix seconds) and ``webhook-signature``
``v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``. An endpoint that has failed
every try for ``NOTIFY_RETRY_FOR_S`` (24 h) is disabled, its unsent deliveries dead; the
deliveries listing says why.
"""

import base64
import hashlib
import hmac
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

import httpx
from beanie import PydanticObjectId
from starlette.requests import Request
from starlette.responses import Response

from cloud.context import context, require_user, user
from cloud.devices.access import parse_id
from cloud.errors import Conflict, Invalid, NotFound
from cloud.http import Endpoint, parse_body, reply
from cloud.notify.addresses import RefusedAddress, check, describe
from cloud.notify.models import Delivery, Notification, Webhook
from cloud.notify.outbox import ROUND_S, SEND_TIMEOUT_S, Outbox, Outcome, Recent, next_delay, now
from cloud.settings import Settings
from protocol.notify import (
    Attempt,
    DeliveryList,
    DeliveryOut,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)

log = logging.getLogger(__name__)

MAX_WEBHOOKS_PER_USER = 20
MAX_LISTED = 100
SECRET_PREFIX = "whsec_"
USER_AGENT = "VisionConnect-Webhooks/1"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def message_id(delivery_id: object) -> str:
    return f"msg_{delivery_id}"


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign(secret, msg_id, at, body),
    }


def webhook_out(doc: Webhook) -> WebhookOut:
    return WebhookOut(
        id=str(doc.id),
        url=doc.url,
        kinds=doc.kinds,
        created_at=doc.created_at,
        enabled=doc.enabled,
        disabled_reason=doc.disabled_reason,
        failing_since=doc.failing_since,
    )


class WebhookSender:
    """Sends a notification's delivery to its webhook with httpx, to the address checked
    for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outbox: Outbox | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(SEND_TIMEOUT_S), follow_redirects=False, trust_env=False
        )
        self.recent: Recent[Webhook] = Recent()

    async def close(self) -> None:
        await self._client.aclose()

    async def prefetch(self, ids: list[Any]) -> None:
        """Read the webhooks of a round's deliveries not read just now, in one query."""
        if missing := self.recent.missing(ids):
            self.recent.refresh(missing, await Webhook.find({"_id": {"$in": missing}}).to_list())

    async def __call__(self, notification: Notification, delivery: Delivery) -> Outcome:
        hook = self.recent.get(delivery.target_id, ROUND_S) or await Webhook.get(delivery.target_id)
        if hook is None:
            return Outcome(False, error="the webhook was deleted", retry=False)
        if not hook.enabled:
            return Outcome(
                False, error=f"the webhook is disabled: {hook.disabled_reason}", retry=False
            )
        outcome = await self._post(hook, delivery.id, notification.body(delivery))
        await self._note(hook, notification, delivery, outcome)
        return outcome

    async def _post(self, hook: Webhook, delivery_id: Any, body: str) -> Outcome:
        try:
            target = await check(hook.url, self.settings)
        except RefusedAddress as exc:
            return Outcome(False, error=str(exc))
        url, extensions = hook.url, {}
        sent = headers(hook.secret, message_id(delivery_id), body)
        if target.address is not None:  # connect to the address checked, not a new lookup
            parts = httpx.URL(hook.url)
            url = str(parts.copy_with(host=target.address))
            sent["host"] = parts.netloc.decode()
            extensions = {"sni_hostname": target.host}
        try:
            answer = await self._client.post(
                url, content=body.encode(), headers=sent, extensions=extensions
            )
        except httpx.HTTPError as exc:
            return Outcome(False, error=describe(exc) or type(exc).__name__)
        if 200 <= answer.status_code < 300:
            return Outcome(True, status_code=answer.status_code)
        return Outcome(False, status_code=answer.status_code, error=f"HTTP {answer.status_code}")

    async def _note(
        self, hook: Webhook, notification: Notification, delivery: Delivery, outcome: Outcome
    ) -> None:
        """Track the endpoint's health: disable it after failing for NOTIFY_RETRY_FOR_S, or
        when a delivery gives up having failed every try since it was made."""
        collection = Webhook.get_pymongo_collection()
        # (``hook`` may be the copy kept in self.recent: it is kept up to date too)
        if outcome.delivered:
            if hook.failing_since is not None:
                hook.failing_since = None
                await collection.update_one({"_id": hook.id}, {"$set": {"failing_since": None}})
            return
        at = now()
        if hook.failing_since is None:
            hook.failing_since = at
            await collection.update_one(
                {"_id": hook.id, "failing_since": None}, {"$set": {"failing_since": at}}
            )
            return
        window = timedelta(seconds=self.settings.notify_retry_for_s)
        retry_at = at + timedelta(seconds=next_delay(self.settings, len(delivery.attempts) + 1))
        gives_up = retry_at > notification.created_at + window
        first_try = delivery.attempts[0]["at"] if delivery.attempts else at
        if at - hook.failing_since < window and not (gives_up and hook.failing_since <= first_try):
            return
        hours = self.settings.notify_retry_for_s / 3600
        reason = (
            f"every delivery failed for {hours:g} h (since {hook.failing_since:%Y-%m-%d %H:%M} "
            f"UTC); the last: {outcome.error or outcome.status_code}"
        )
        await collection.update_one(
            {"_id": hook.id}, {"$set": {"enabled": False, "disabled_reason": reason}}
        )
        assert hook.id is not None
        self.recent.forget(hook.id)
        if self.outbox is not None:
            await self.outbox.kill_target(hook.id, f"the webhook is disabled: {reason}")
        log.warning("webhook %s of user %s disabled: %s", hook.id, hook.user_id, reason)


# routes -----------------------------------------------------------------------------------


async def create_webhook(request: Request) -> Response:
    principal = user(request)
    body = await parse_body(request, WebhookIn)
    try:
        await check(body.url, context(request).settings)
    except RefusedAddress as exc:
        raise Invalid(f"url: {exc}") from None
    if await Webhook.find(Webhook.user_id == principal.user_id).count() >= MAX_WEBHOOKS_PER_USER:
        raise Conflict(f"you have {MAX_WEBHOOKS_PER_USER} webhooks, the most one account may")
    doc = Webhook(
        user_id=principal.user_id,
        url=body.url,
        kinds=sorted(set(body.kinds)) if body.kinds else None,
        secret=new_secret(),
        created_at=now(),
    )
    await doc.insert()
    log.info("webhook %s created by user %s", doc.id, principal.user_id)
    return reply(WebhookCreated(**webhook_out(doc).model_dump(), secret=doc.secret), 201)


async def list_webhooks(request: Request) -> Response:
    docs = await Webhook.find(Webhook.user_id == user(request).user_id).sort("created_at").to_list()
    return reply(WebhookList(webhooks=[webhook_out(d) for d in docs]))


async def _own_webhook(request: Request) -> Webhook:
    doc = await Webhook.get(parse_id(request.path_params["webhook_id"], "webhook"))
    if doc is None or doc.user_id != user(request).user_id:
        raise NotFound("no such webhook")
    return doc


async def delete_webhook(request: Request) -> Response:
    doc = await _own_webhook(request)
    await doc.delete()
    assert doc.id is not None
    request.app.state.notifier.webhooks.recent.forget(doc.id)
    await outbox(request).kill_target(doc.id, "the webhook was deleted")
    return reply(None, 204)


def delivery_out(notification: Notification, delivery: Delivery) -> DeliveryOut:
    settled = delivery.status in ("delivered", "dead")
    return DeliveryOut(
        id=message_id(delivery.id),
        type=notification.type,
        event_id=str(notification.event_id) if notification.event_id else None,
        status=delivery.status,
        created_at=notification.created_at,
        attempts=[Attempt.model_validate(a) for a in delivery.attempts],
        next_attempt_at=None if settled else delivery.next_attempt_at,
        last_error=delivery.last_error,
    )


async def list_deliveries(request: Request) -> Response:
    hook = await _own_webhook(request)
    # (channel: the index on deliveries.target_id holds webhook notifications only)
    docs = (
        await Notification.find({"channel": "webhook", "deliveries.target_id": hook.id})
        .sort("-created_at", "-_id")
        .limit(MAX_LISTED)
        .to_list()
    )
    rows = [delivery_out(n, d) for n in docs for d in n.deliveries if d.target_id == hook.id]
    return reply(DeliveryList(webhook=webhook_out(hook), deliveries=rows))


def outbox(request: Request) -> Outbox:
    box: Outbox = request.app.state.notifier.outbox
    return box


async def webhooks_of(users: list[PydanticObjectId]) -> list[Webhook]:
    return await Webhook.find({"user_id": {"$in": users}, "enabled": True}).to_list()


TAG = "notifications"
HOOK = "/api/v1/webhooks/{webhook_id}"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/webhooks",
        create_webhook,
        "Register a webhook: event state changes of the cameras you may see, signed "
        "(Standard Webhooks); the secret is shown only in this answer",
        TAG,
        status=201,
        body=WebhookIn,
        response=WebhookCreated,
        errors=(409, 422),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        "/api/v1/webhooks",
        list_webhooks,
        "Your webhooks",
        TAG,
        response=WebhookList,
        auth=require_user,
    ),
    Endpoint(
        "DELETE",
        HOOK,
        delete_webhook,
        "Delete a webhook (its unsent deliveries are dropped)",
        TAG,
        status=204,
        errors=(404,),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        HOOK + "/deliveries",
        list_deliveries,
        "A webhook's last 100 deliveries: each try, its answer or error, the next try",
        TAG,
        response=DeliveryList,
        errors=(404,),
        auth=require_user,
    ),
]
