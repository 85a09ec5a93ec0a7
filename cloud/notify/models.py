"""Notification documents: what users subscribe (push subscriptions, webhooks, preferences)
and the durable outbox of deliveries (cloud.notify.outbox)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel

Channel = Literal["push", "webhook"]
DeliveryStatus = Literal["pending", "failed", "delivered", "dead"]
CLAIMABLE: tuple[DeliveryStatus, ...] = ("pending", "failed")
KEPT_S = 7 * 86_400  # delivered and dead deliveries are tidied after a week (TTL)
EPOCH_LEASE = datetime(1970, 1, 1, tzinfo=UTC)


class PushSubscription(Document):
    """One browser's PushSubscription; its endpoint is unique (the last user to subscribe
    it owns it)."""

    user_id: Annotated[PydanticObjectId, Indexed()]
    endpoint: Annotated[str, Indexed(unique=True)]
    p256dh: str
    auth: str
    expires_at: datetime | None = None
    created_at: datetime

    class Settings:
        name = "push_subscriptions"


class Webhook(Document):
    user_id: Annotated[PydanticObjectId, Indexed()]
    url: str
    kinds: list[str] | None = None
    secret: str = ""  # whsec_<base64>: needed in clear to sign (docs/protocol.md)
    created_at: datetime
    enabled: bool = True
    disabled_reason: str | None = None
    failing_since: datetime | None = None  # the first failure since the last success

    class Settings:
        name = "webhooks"


class NotifyPreference(Document):
    """One user's choice for one camera; no document: every kind, no quiet hours."""

    user_id: PydanticObjectId
    device_id: Annotated[PydanticObjectId, Indexed()]
    kinds: list[str] | None = None
    quiet_hours: dict[str, str] | None = None  # protocol.notify.QuietHours

    class Settings:
        name = "notify_preferences"
        indexes = [IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)], unique=True)]


class NotifyCooldown(Document):
    """Until when a user gets no further ``new`` push of a camera (NOTIFY_COOLDOWN_S)."""

    user_id: PydanticObjectId
    device_id: PydanticObjectId
    until: datetime
    event_id: str | None = None  # the event that took it (its repeated report may again)

    class Settings:
        name = "notify_cooldowns"
        indexes = [
            IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)], unique=True),
            IndexModel([("until", ASCENDING)], expireAfterSeconds=3600),
        ]


class Delivery(Document):
    """One message to one target, sent at least once.

    ``key`` makes enqueueing idempotent (a relay's repeated report adds nothing); ``group``
    orders a target's messages about one event thread (``seq``): a later one waits while
    an earlier one is not settled, so an ``end`` never overtakes its ``new``. An instance
    owns a delivery while ``lease_until`` is in the future (cloud.notify.outbox).
    """

    key: Annotated[str, Indexed(unique=True)]
    channel: Channel
    target_id: PydanticObjectId  # PushSubscription or Webhook
    user_id: PydanticObjectId
    device_id: PydanticObjectId | None = None
    event_id: PydanticObjectId | None = None
    type: str  # event.new, event.update, event.end, test
    group: str
    seq: int
    payload: str  # the exact bytes sent (JSON text): the same on every try
    status: DeliveryStatus = "pending"
    created_at: datetime
    next_attempt_at: datetime
    lease_until: datetime = EPOCH_LEASE
    lease_owner: str | None = None
    attempts: list[dict[str, Any]] = []  # protocol.notify.Attempt
    last_error: str | None = None
    delivered_at: datetime | None = None
    expires_at: datetime

    class Settings:
        name = "notify_deliveries"
        indexes = [
            IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)]),
            IndexModel([("group", ASCENDING), ("seq", ASCENDING)]),
            IndexModel([("target_id", ASCENDING), ("created_at", ASCENDING)]),
            IndexModel([("event_id", ASCENDING)]),
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        ]


DOCUMENTS: list[type[Document]] = [
    PushSubscription,
    Webhook,
    NotifyPreference,
    NotifyCooldown,
    Delivery,
]
