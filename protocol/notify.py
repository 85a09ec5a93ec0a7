"""Bodies of the notification API (docs/protocol.md, "Notifications"): Web Push
subscriptions and preferences, webhooks and their deliveries. Requests forbid unknown fields."""

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.events import Event, EventKind, EventState

ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
# An http(s) URL as cloud.notify.addresses.split() takes it: a host name in ASCII (IDNs in
# punycode, as browsers give them), an IPv4 address or a bracketed IPv6 one, an optional
# port 0-65535, no user name. The schema says all the server checks, so a URL the schema
# accepts is never refused as malformed.
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_IPV6 = "|".join(
    [
        rf"(?:{_H16}:){{7}}{_H16}",
        rf"(?:{_H16}:){{1,7}}:",
        *(rf"(?:{_H16}:){{1,{7 - n}}}(?::{_H16}){{1,{n}}}" for n in range(1, 7)),
        rf":(?:(?::{_H16}){{1,7}}|:)",
        rf"(?:{_H16}:){{6}}{_IPV4}",
        rf"::(?:[Ff]{{4}}:)?{_IPV4}",
    ]
)
_NAME = "[A-Za-z0-9._~%!$&'()*+,;=-]+"
_PORT = "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4}))?"


def _url(host: str) -> Any:
    return Field(min_length=8, max_length=2048, pattern=rf"^https?://{host}{_PORT}(?:[/?#]\S*)?$")


HttpUrl = Annotated[str, _url(rf"(?:{_NAME}|\[(?:{_IPV6})\])")]
# A push service's URL: no IPv6 literal (a VAPID claim's audience cannot carry one: RFC
# 8292 implementations check it as scheme://host[:port] with no colon in the host).
PushEndpoint = Annotated[str, _url(_NAME)]
Kinds = Annotated[list[EventKind], Field(min_length=1, max_length=32)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def b64url_bytes(value: str) -> bytes:
    """Unpadded (or padded) base64url, as browsers give PushSubscription keys."""
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("is not base64url") from None


# Web Push ---------------------------------------------------------------------------------


class VapidKey(BaseModel):
    public_key: str = Field(
        description="The application server key: the VAPID public key, an uncompressed P-256 "
        "point in unpadded base64url (PushManager.subscribe's applicationServerKey)"
    )


class SubscriptionKeys(_Request):
    p256dh: str = Field(
        pattern=r"^B[A-Za-z0-9_-]{86}=?$",
        description="The browser's P-256 key: an uncompressed point (65 bytes), base64url",
    )
    auth: str = Field(
        pattern=r"^[A-Za-z0-9_-]{22}(==)?$", description="The 16-byte auth secret, base64url"
    )


class PushSubscriptionIn(_Request):
    """The browser's ``PushSubscription.toJSON()``."""

    endpoint: PushEndpoint
    keys: SubscriptionKeys
    expirationTime: float | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=253_402_300_799_000,
        description="Milliseconds since the epoch, or null",
    )


class PushSubscriptionOut(BaseModel):
    id: str
    endpoint: str
    created_at: datetime
    expires_at: datetime | None


class PushSubscriptionList(BaseModel):
    subscriptions: list[PushSubscriptionOut]


class PushTestOut(BaseModel):
    queued: int = Field(description="Notifications queued: one per subscription of yours")


class PushPayload(BaseModel):
    """The JSON a push message decrypts to; the service worker shows
    ``showNotification(title, {body, tag, image, data: payload, renotify})``."""

    title: str
    body: str
    tag: str = Field(description="The event's thread_id: the end push replaces the new one")
    image: str | None = Field(description="Signed snapshot URL (no bearer needed), or null")
    renotify: bool
    event_id: str | None
    device_id: str | None
    kind: str | None
    state: EventState | Literal["test"]
    url: str = Field(description="Where the app opens: /#/devices/<id>")


# preferences ------------------------------------------------------------------------------


class QuietHours(_Request):
    """No ``new`` pushes from ``start`` to ``end`` local time (an ``end`` at or before
    ``start`` runs past midnight)."""

    start: ClockTime
    end: ClockTime
    timezone: str = Field(min_length=1, max_length=64, description="IANA name")

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone[:64]!r}") from None
        if self.start == self.end:
            raise ValueError("quiet hours must not start and end at the same time")
        return self


class PreferenceUpdate(_Request):
    kinds: list[EventKind] | None = Field(
        default=None,
        max_length=32,
        description="Kinds pushed for this camera; null: every kind; []: none",
    )
    quiet_hours: QuietHours | None = Field(default=None, description="null: none")


class PreferenceOut(BaseModel):
    device_id: str
    device_name: str
    kinds: list[str] | None
    quiet_hours: QuietHours | None


class PreferenceList(BaseModel):
    preferences: list[PreferenceOut]


# webhooks ---------------------------------------------------------------------------------


class WebhookIn(_Request):
    url: HttpUrl
    kinds: Kinds | None = Field(default=None, description="Event kinds sent; null: every kind")


class WebhookOut(BaseModel):
    id: str
    url: str
    kinds: list[str] | None
    created_at: datetime
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="whsec_<base64>: the signing key, shown only in this answer (Standard Webhooks)"
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class Attempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered")
    error: str | None
    next_attempt_at: datetime | None = Field(description="When it is tried again; null: not")


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every try")
    type: str
    event_id: str | None
    status: Literal["pending", "failed", "delivered", "dead"] = Field(
        description="pending: not tried yet; failed: tried, will be tried again; dead: given up"
    )
    created_at: datetime
    attempts: list[Attempt]
    next_attempt_at: datetime | None
    last_error: str | None


class DeliveryList(BaseModel):
    webhook: WebhookOut
    deliveries: list[DeliveryOut]


class WebhookBody(BaseModel):
    """What a webhook receives (signed with the Standard Webhooks headers)."""

    type: str = Field(examples=["event.new", "event.update", "event.end"])
    timestamp: datetime
    data: Event
