"""Notification documents: what users subscribe (push subscriptions, webhooks, preferences)
and the durable outbox (cloud.notify.outbox): one :class:`Notification` per event state and
channel, its deliveries inside."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from beanie import Document, Indexed, PydanticObjectId
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel

Channel = Literal["push", "webhook"]
DeliveryStatus = Literal["pending", "failed", "delivered", "dead"]
NotificationStatus = Literal["open", "settled"]
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


class Delivery(BaseModel):
    """One target's delivery of a :class:`Notification`: a push subscription or a webhook,
    and how sending to it went. ``id`` is its own (a webhook's ``webhook-id`` is
    ``msg_<id>``, the same on every try)."""

    id: PydanticObjectId = Field(default_factory=PydanticObjectId)
    target_id: PydanticObjectId  # PushSubscription or Webhook
    user_id: PydanticObjectId
    body: int = 0  # the index of its payload in Notification.bodies
    status: DeliveryStatus = "pending"
    next_attempt_at: datetime | None = None  # while pending or failed
    attempts: list[dict[str, Any]] = []  # protocol.notify.Attempt
    last_error: str | None = None
    delivered_at: datetime | None = None

    @classmethod
    def to(cls, target: PushSubscription | Webhook, body: int = 0) -> "Delivery":
        assert target.id is not None
        return cls(target_id=target.id, user_id=target.user_id, body=body)


class Notification(Document):
    """One message of one channel about one event state (or one test), to every target it
    goes to, each with its own state inside (:class:`Delivery`): the outbox's unit, so a
    report costs the store one insert and one update per channel, not one per target.

    ``key`` makes enqueueing idempotent (a relay's repeated report adds nothing). An
    instance owns the whole notification while ``lease_until`` is in the future
    (cloud.notify.outbox). ``status`` is ``open`` while any delivery is pending or failed;
    ``next_attempt_at`` is then when an instance should look at it next: the earliest next
    try of its deliveries, or the end of its lease while one holds it (so a claim asks
    for open and due only). ``seq`` orders one event's notifications of a channel: a
    target's later one waits while its earlier one is unsettled, so an ``end`` never
    overtakes its ``new``.
    """

    key: Annotated[str, Indexed(unique=True)]
    channel: Channel
    device_id: PydanticObjectId | None = None
    event_id: PydanticObjectId | None = None
    type: str  # event.new, event.update, event.end, test
    seq: int
    bodies: list[str]  # the exact bytes sent (JSON text), the same on every try
    users: list[PydanticObjectId]  # the users of its deliveries (account removal)
    deliveries: list[Delivery]
    status: NotificationStatus = "open"
    created_at: datetime
    next_attempt_at: datetime
    lease_until: datetime = EPOCH_LEASE
    lease_owner: str | None = None
    expires_at: datetime

    class Settings:
        name = "notify_outbox"
        # Every query of the outbox's hot path is shaped to one of these exactly, with no
        # other field: SecantusDB (the test store) scans the whole collection for a filter
        # with a field beyond an index's, even beside _id (hence _id + lease_owner).
        indexes = [
            IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)]),
            IndexModel([("_id", ASCENDING), ("lease_owner", ASCENDING)]),
            IndexModel([("event_id", ASCENDING)]),
            IndexModel([("users", ASCENDING)]),
            IndexModel(
                [("deliveries.target_id", ASCENDING), ("created_at", ASCENDING)],
                partialFilterExpression={"channel": "webhook"},
            ),
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        ]

    def body(self, delivery: Delivery) -> str:
        return self.bodies[delivery.body]


DOCUMENTS: list[type[Document]] = [
    PushSubscription,
    Webhook,
    NotifyPreference,
    NotifyCooldown,
    Notification,
]
