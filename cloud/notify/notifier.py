"""What an event thread's state change queues (docs/protocol.md, "Notifications").

The audience is the camera's owner and the people it is shared with, as the database has
it now (cloud.devices.access.audience), nobody else; and each delivery checks again just
before it is sent, so a revoked share or a removed camera stops what is still queued.

- Webhooks get every state change (new, update, end) their ``kinds`` allow.
- Web Push: a ``new`` push to each subscription of each user whose preference for the camera
  wants that kind now (not in quiet hours) and who had no ``new`` push of this camera within
  ``NOTIFY_COOLDOWN_S``; then an ``end`` push to the very subscriptions that got the ``new``
  (whatever the preferences say by then), same ``tag`` (the thread), so it replaces it.

Each state change gives at most one notification per channel (cloud.notify.models), its
deliveries inside. Idempotency: one notification per (channel, event, state); a repeated
report adds nothing.
"""

import asyncio
import hashlib
import hmac
import logging
import time
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.models import User
from cloud.auth.tokens import UserPrincipal
from cloud.context import user
from cloud.devices.access import Action, audience, authorize, parse_id
from cloud.devices.models import Device
from cloud.errors import NotFound
from cloud.events.models import EventSnapshot, EventThread
from cloud.http import Endpoint
from cloud.media.tokens import ContentTokens
from cloud.notify import preferences
from cloud.notify.models import (
    CLAIMABLE,
    Delivery,
    Notification,
    NotifyCooldown,
    NotifyPreference,
    PushSubscription,
    Webhook,
)
from cloud.notify.outbox import Outbox, now
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
        self._access: dict[PydanticObjectId, tuple[float, set[PydanticObjectId]]] = {}
        self._reading: dict[PydanticObjectId, asyncio.Future[set[PydanticObjectId]]] = {}

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

    async def may_see(self, notification: Notification) -> set[PydanticObjectId] | None:
        """Who may still see the notification's camera (None: it has none, e.g. a test)."""
        if notification.device_id is None:
            return None
        device_id = notification.device_id
        cached = self._access.get(device_id)
        if cached is not None and time.monotonic() - cached[0] <= ACCESS_CACHE_S:
            return cached[1]
        # one read for the rounds that ask at once (a report's push and webhook rounds)
        reading = self._reading.get(device_id)
        if reading is None:
            reading = self._reading[device_id] = asyncio.ensure_future(self._audience(device_id))
            reading.add_done_callback(lambda _: self._reading.pop(device_id, None))
        return await asyncio.shield(reading)

    async def _audience(self, device_id: PydanticObjectId) -> set[PydanticObjectId]:
        at = time.monotonic()
        users = set(await audience(device_id))
        if len(self._access) > 10_000:
            self._access.clear()
        self._access[device_id] = (at, users)
        return users

    # enqueueing -----------------------------------------------------------------------------

    async def on_event(
        self, device: Device, event: Event, users: list[PydanticObjectId] | None = None
    ) -> int:
        """Queue what this state change of a thread gives (to ``users``, the camera's
        audience read just now, else read here); answers how many deliveries were added."""
        assert device.id is not None
        users = await audience(device.id) if users is None else users
        if not users:
            return 0
        notifications = [await self._webhooks(users, device, event)]
        if self.vapid is not None and event.state == "new":
            notifications.append(await self._new_pushes(users, device, event))
        elif self.vapid is not None and event.state == "end":
            notifications.append(await self._end_pushes(device, event))
        return await self.outbox.enqueue([n for n in notifications if n is not None])

    async def _webhooks(
        self, users: list[PydanticObjectId], device: Device, event: Event
    ) -> Notification | None:
        hooks = [h for h in await webhooks_of(users) if h.kinds is None or event.kind in h.kinds]
        if not hooks:
            return None
        self.webhooks.recent.keep(hooks)  # the round right after reads them no more
        body = WebhookBody(type=f"event.{event.state}", timestamp=now(), data=event)
        return self.outbox.new(
            key=f"webhook:{event.id}:{event.state}",
            channel="webhook",
            type=body.type,
            bodies=[body.model_dump_json()],
            deliveries=[Delivery.to(hook) for hook in hooks],
            device_id=device.id,
            event_id=PydanticObjectId(event.id),
            seq=time.time_ns(),
        )

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
    ) -> Notification | None:
        assert device.id is not None
        subs = await PushSubscription.find({"user_id": {"$in": users}}).to_list()
        if not subs:
            return None
        prefs = await preferences.preferences_of(users, device.id)
        at = now()
        chosen: set[PydanticObjectId] = set()
        for user_id in {s.user_id for s in subs}:
            if preferences.wants(prefs.get(user_id), event.kind, at) and await self._cooled(
                user_id, device, event.id
            ):
                chosen.add(user_id)
        return self._pushes([s for s in subs if s.user_id in chosen], device, event)

    async def _end_pushes(self, device: Device, event: Event) -> Notification | None:
        """To the very subscriptions the thread's ``new`` push went to (still there)."""
        new = await Notification.get_pymongo_collection().find_one(
            {"key": f"push:{event.id}:new"}, {"deliveries.target_id": 1}
        )
        if new is None:
            return None
        targets = [d["target_id"] for d in new["deliveries"]]
        subs = await PushSubscription.find({"_id": {"$in": targets}}).to_list()
        return self._pushes(subs, device, event)

    def image_url(self, event: Event, user_id: PydanticObjectId) -> str | None:
        if event.snapshot_url is None:
            return None
        token = self.image_tokens.issue(PydanticObjectId(event.id), user_id)
        return self.settings.public_url + IMAGE_PATH.format(event.id) + "?token=" + token

    def _pushes(
        self, subs: list[PushSubscription], device: Device, event: Event
    ) -> Notification | None:
        """One push notification of ``event`` to ``subs``: one body per user (the picture's
        URL is the user's own)."""
        if not subs:
            return None
        self.push.recent.keep(subs)  # the round right after reads them no more
        bodies: list[str] = []
        index: dict[PydanticObjectId, int] = {}
        for user_id in dict.fromkeys(s.user_id for s in subs):
            index[user_id] = len(bodies)
            payload = PushPayload(
                title=title(event.kind, device.name),
                body=body_text(event),
                tag=event.thread_id,
                image=self.image_url(event, user_id),
                renotify=event.state == "new",
                event_id=event.id,
                device_id=str(device.id),
                kind=event.kind,
                state=event.state,
                url=f"/#/devices/{device.id}",
            )
            bodies.append(payload_json(payload))
        return self.outbox.new(
            key=f"push:{event.id}:{event.state}",
            channel="push",
            type=f"event.{event.state}",
            bodies=bodies,
            deliveries=[Delivery.to(s, index[s.user_id]) for s in subs],
            device_id=device.id,
            event_id=PydanticObjectId(event.id),
            seq=time.time_ns(),
        )

    async def test(self, user_id: PydanticObjectId) -> int:
        subs = await PushSubscription.find(PushSubscription.user_id == user_id).to_list()
        stamp = time.time_ns()
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
        notification = self.outbox.new(
            key=f"push:test:{user_id}:{stamp}",
            channel="push",
            type="test",
            bodies=[payload_json(payload)],
            deliveries=[Delivery.to(s) for s in subs],
            seq=stamp,
        )
        return await self.outbox.enqueue([notification])

    async def user_removed(self, user_id: PydanticObjectId) -> None:
        """The account is gone: its subscriptions, webhooks, preferences, and what was
        sent or still to be sent to it (dropped, not sent: nobody may receive it now)."""
        collection = Notification.get_pymongo_collection()
        await collection.delete_many({"users": [user_id]})  # it alone
        async for shared in collection.find({"users": user_id}):
            # others' too: its deliveries are dead and what was only theirs is blanked
            theirs = [i for i, d in enumerate(shared["deliveries"]) if d["user_id"] == user_id]
            others = {d["body"] for d in shared["deliveries"] if d["user_id"] != user_id}
            fields: dict[str, Any] = {}
            for i in theirs:
                delivery = shared["deliveries"][i]
                if delivery["status"] in CLAIMABLE:
                    fields |= {
                        f"deliveries.{i}.status": "dead",
                        f"deliveries.{i}.next_attempt_at": None,
                        f"deliveries.{i}.last_error": "the account was removed",
                    }
                if delivery["body"] not in others:
                    fields[f"bodies.{delivery['body']}"] = ""
            await collection.update_one(
                {"_id": shared["_id"]}, {"$set": fields, "$pull": {"users": user_id}}
            )
        for model in (PushSubscription, Webhook, NotifyPreference, NotifyCooldown):
            await model.get_pymongo_collection().delete_many({"user_id": user_id})

    async def device_removed(self, device_id: PydanticObjectId) -> None:
        await preferences.forget_device(device_id)
        await self.outbox.kill({"device_id": device_id}, "the camera was removed")


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
