"""What an event thread's state change queues (docs/protocol.md, "Notifications").

The audience is the camera's owner and the people it is shared with, as the database has
it now (cloud.devices.access.audience), nobody else; and each delivery checks again just
before it is sent, so a revoked share or a removed camera stops what is still queued.

- Webhooks get every state change (new, update, end) their ``kinds`` allow.
- Web Push: a ``new`` push to each subscription of each user whose preference for the camera
  wants that kind now (not in quiet hours) and who had no ``new`` push of this camera within
  ``NOTIFY_COOLDOWN_S``; then an ``end`` push to the very subscriptions that got the ``new``
  (whatever the preferences say by then), same ``tag`` (the thread), so it replaces it.

Idempotency: one delivery per (event, state, target); a repeated report adds nothing.
"""

import asyncio
import hashlib
import hmac
import logging
import time
from datetime import timedelta

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.models import User
from cloud.auth.tokens import UserPrincipal
from cloud.context import user
from cloud.devices.access import Action, audience, authorize, parse_id
from cloud.devices.models import Device, Share
from cloud.errors import NotFound
from cloud.events.models import EventSnapshot, EventThread
from cloud.http import Endpoint
from cloud.media.tokens import ContentTokens
from cloud.notify import preferences
from cloud.notify.models import (
    Delivery,
    NotifyCooldown,
    NotifyPreference,
    PushSubscription,
    Webhook,
)
from cloud.notify.outbox import Outbox, Outcome, now
from cloud.notify.push import PushSender, load_vapid, payload_json
from cloud.notify.webhooks import WebhookSender, webhooks_of
from cloud.settings import Settings
from protocol.events import Event
from protocol.notify import PushPayload, WebhookBody

log = logging.getLogger(__name__)

IMAGE_PATH = "/api/v1/notifications/snapshots/{}"
ACCESS_CACHE_S = 1.0  # how long a send trusts an access check (revocation bound: 2 s)


def image_secret(settings: Settings) -> bytes:
    """The key of notification image URLs: derived from the media URL key, its own."""
    return hmac.new(settings.resolved_media_url_secret(), b"notify-image", hashlib.sha256).digest()


def title(kind: str, device_name: str) -> str:
    return f"{kind[:1].upper()}{kind[1:]} at {device_name}"


def body_text(event: Event) -> str:
    if event.state == "end":
        if event.ended_at is not None:
            seconds = max(0, round((event.ended_at - event.started_at).total_seconds()))
            return f"Ended after {seconds} s"
        return "Ended"
    return f"{event.kind[:1].upper()}{event.kind[1:]} detected"


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.vapid = load_vapid(settings)
        self.image_tokens = ContentTokens(image_secret(settings), settings.notify_image_ttl_s)
        self.push = PushSender(settings, self.vapid)
        self.webhooks = WebhookSender(settings)
        self.outbox = Outbox(settings, {"push": self.push, "webhook": self.webhooks})
        self.outbox.allowed = self.may_see
        self.push.outbox = self.webhooks.outbox = self.outbox
        self._access: dict[tuple[PydanticObjectId, PydanticObjectId], tuple[float, bool]] = {}

    def configure(self, settings: Settings) -> None:
        """Tests: change the settings the worker and senders read."""
        self.settings = self.outbox.settings = self.push.settings = settings
        self.webhooks.settings = settings

    def start(self) -> None:
        self.outbox.start()

    async def stop(self) -> None:
        await self.outbox.stop()
        await self.push.close()
        await self.webhooks.close()

    # access at send time --------------------------------------------------------------------

    async def may_see(self, delivery: Delivery) -> Outcome | None:
        """None when the delivery's user may still see its camera, else why not."""
        if delivery.device_id is None:
            return None
        key = (delivery.user_id, delivery.device_id)
        at = time.monotonic()
        cached = self._access.get(key)
        if cached is None or at - cached[0] > ACCESS_CACHE_S:
            if len(self._access) > 10_000:
                self._access.clear()
            device = await Device.get(delivery.device_id)
            ok = device is not None and (
                device.owner_id == delivery.user_id
                or await Share.find_one(
                    Share.device_id == delivery.device_id, Share.user_id == delivery.user_id
                )
                is not None
            )
            cached = self._access[key] = (at, ok)
        if cached[1]:
            return None
        return Outcome(False, error="no longer allowed to see the camera", retry=False)

    # enqueueing -----------------------------------------------------------------------------

    async def on_event(
        self, device: Device, event: Event, users: list[PydanticObjectId] | None = None
    ) -> int:
        """Queue what this state change of a thread gives (to ``users``, the camera's
        audience read just now, else read here); answers how many were added."""
        assert device.id is not None
        users = await audience(device.id) if users is None else users
        if not users:
            return 0
        deliveries = await self._webhook_deliveries(users, device, event)
        if self.vapid is not None and event.state == "new":
            deliveries += await self._new_pushes(users, device, event)
        elif self.vapid is not None and event.state == "end":
            deliveries += await self._end_pushes(device, event)
        return await self.outbox.enqueue(deliveries)

    async def _webhook_deliveries(
        self, users: list[PydanticObjectId], device: Device, event: Event
    ) -> list[Delivery]:
        hooks = [h for h in await webhooks_of(users) if h.kinds is None or event.kind in h.kinds]
        if not hooks:
            return []
        body = WebhookBody(type=f"event.{event.state}", timestamp=now(), data=event)
        text = body.model_dump_json()
        seq = time.time_ns()
        return [
            self.outbox.new(
                key=f"webhook:{hook.id}:{event.id}:{event.state}",
                channel="webhook",
                target_id=hook.id,
                user_id=hook.user_id,
                device_id=device.id,
                event_id=PydanticObjectId(event.id),
                type=body.type,
                group=f"webhook:{hook.id}:{event.id}",
                seq=seq,
                payload=text,
            )
            for hook in hooks
        ]

    async def _cooled(self, user_id: PydanticObjectId, device: Device, event_id: str) -> bool:
        """Take the user's cooldown of this camera for this event; False while another
        event's holds it."""
        cooldown = self.settings.notify_cooldown_s
        if cooldown <= 0:
            return True
        at = now()
        try:
            await NotifyCooldown.get_pymongo_collection().update_one(
                {
                    "user_id": user_id,
                    "device_id": device.id,
                    "$or": [{"until": {"$lte": at}}, {"event_id": event_id}],
                },
                {"$set": {"until": at + timedelta(seconds=cooldown), "event_id": event_id}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False
        return True

    async def _new_pushes(
        self, users: list[PydanticObjectId], device: Device, event: Event
    ) -> list[Delivery]:
        assert device.id is not None
        subs = await PushSubscription.find({"user_id": {"$in": users}}).to_list()
        if not subs:
            return []
        prefs = await preferences.preferences_of(users, device.id)
        at = now()
        chosen: set[PydanticObjectId] = set()
        for user_id in {s.user_id for s in subs}:
            if preferences.wants(prefs.get(user_id), event.kind, at) and await self._cooled(
                user_id, device, event.id
            ):
                chosen.add(user_id)
        return [self._push(s, device, event) for s in subs if s.user_id in chosen]

    async def _end_pushes(self, device: Device, event: Event) -> list[Delivery]:
        cursor = Delivery.get_pymongo_collection().find(
            {"event_id": PydanticObjectId(event.id), "channel": "push", "type": "event.new"},
            {"target_id": 1},
        )
        targets = [doc["target_id"] async for doc in cursor]
        if not targets:
            return []
        subs = await PushSubscription.find({"_id": {"$in": targets}}).to_list()
        return [self._push(s, device, event) for s in subs]

    def image_url(self, event: Event, user_id: PydanticObjectId) -> str | None:
        if event.snapshot_url is None:
            return None
        token = self.image_tokens.issue(PydanticObjectId(event.id), user_id)
        return self.settings.public_url + IMAGE_PATH.format(event.id) + "?token=" + token

    def _push(self, sub: PushSubscription, device: Device, event: Event) -> Delivery:
        payload = PushPayload(
            title=title(event.kind, device.name),
            body=body_text(event),
            tag=event.thread_id,
            image=self.image_url(event, sub.user_id),
            renotify=event.state == "new",
            event_id=event.id,
            device_id=str(device.id),
            kind=event.kind,
            state=event.state,
            url=f"/#/devices/{device.id}",
        )
        return self.outbox.new(
            key=f"push:{sub.id}:{event.id}:{event.state}",
            channel="push",
            target_id=sub.id,
            user_id=sub.user_id,
            device_id=device.id,
            event_id=PydanticObjectId(event.id),
            type=f"event.{event.state}",
            group=f"push:{sub.id}:{event.id}",
            seq=time.time_ns(),
            payload=payload_json(payload),
        )

    async def test(self, user_id: PydanticObjectId) -> int:
        subs = await PushSubscription.find(PushSubscription.user_id == user_id).to_list()
        stamp = time.time_ns()
        deliveries = []
        for sub in subs:
            payload = PushPayload(
                title="VisionConnect",
                body="Test notification: notifications reach this device",
                tag=f"test-{stamp}",
                image=None,
                renotify=True,
                event_id=None,
                device_id=None,
                kind=None,
                state="test",
                url="/#/notifications",
            )
            deliveries.append(
                self.outbox.new(
                    key=f"push:{sub.id}:test:{stamp}",
                    channel="push",
                    target_id=sub.id,
                    user_id=user_id,
                    type="test",
                    group=f"push:{sub.id}:test:{stamp}",
                    seq=stamp,
                    payload=payload_json(payload),
                )
            )
        return await self.outbox.enqueue(deliveries)

    async def user_removed(self, user_id: PydanticObjectId) -> None:
        """The account is gone: its subscriptions, webhooks, preferences, and what was
        still to be sent to it (dropped, not sent: nobody may receive it now)."""
        await Delivery.find(Delivery.user_id == user_id).delete()
        for model in (PushSubscription, Webhook, NotifyPreference, NotifyCooldown):
            await model.get_pymongo_collection().delete_many({"user_id": user_id})

    async def device_removed(self, device_id: PydanticObjectId) -> None:
        await preferences.forget_device(device_id)
        await Delivery.get_pymongo_collection().update_many(
            {"device_id": device_id, "status": {"$in": ["pending", "failed"]}},
            {"$set": {"status": "dead", "last_error": "the camera was removed"}},
        )


def notifier(request: Request) -> Notifier:
    found: Notifier = request.app.state.notifier
    return found


async def on_event(
    request: Request, device: Device, event: Event, users: list[PydanticObjectId] | None = None
) -> None:
    """The hook of ``POST /relays/events`` (cloud.events.routes)."""
    added = await notifier(request).on_event(device, event, users)
    if added:
        log.info("event %s %s: %d notifications queued", event.id, event.state, added)


async def start_notifier(settings: Settings) -> Notifier:
    found = await asyncio.to_thread(Notifier, settings)
    found.start()
    return found


# the snapshot behind a push's image URL ---------------------------------------------------


async def require_image_token(request: Request) -> UserPrincipal:
    """The authenticator of a notification's picture: the token in its URL stands in for
    the bearer header (a notification cannot send one); bad, expired or another event's: 404."""
    event_id = request.path_params["event_id"]
    token = request.query_params.get("token", "")
    user_id = notifier(request).image_tokens.verify(token, event_id)
    account = await User.get(user_id) if user_id is not None else None
    if account is None or account.id is None:
        raise NotFound("no such event")
    return UserPrincipal(account.id, account.email)


async def notification_image(request: Request) -> Response:
    """The event's JPEG; access to its camera is checked again at every fetch."""
    doc = await EventThread.get(parse_id(request.path_params["event_id"], "event"))
    if doc is None or doc.expires_at <= now():
        raise NotFound("no such event")
    try:
        await authorize(user(request), str(doc.device_id), Action.VIEW)
    except NotFound:
        raise NotFound("no such event") from None
    snapshot = await EventSnapshot.find_one(EventSnapshot.event_id == doc.id)
    if snapshot is None:
        raise NotFound("this event has no snapshot")
    return Response(snapshot.jpeg, media_type="image/jpeg")


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        IMAGE_PATH.format("{event_id}"),
        notification_image,
        "A notification's picture: the event's JPEG, by the signed URL in the push (no bearer)",
        "notifications",
        media_type="image/jpeg",
        errors=(404,),
        auth=require_image_token,
    ),
]
