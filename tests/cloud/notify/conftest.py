"""What the notification suites share: the receivers, a connected relay, reports, settings."""

import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from cloud.notify.notifier import Notifier
from tests.cloud.notify.receivers import PushService, WebhookReceiver
from tests.conftest import RELAY_SECRET, Account, ActivatedDevice
from tests.peers import Peer, connect

RELAY = {"Authorization": f"Bearer relay-notify:{RELAY_SECRET}"}


def jpeg() -> str:
    picture = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(picture, (10, 10), (30, 40), (0, 140, 255), -1)
    ok, encoded = cv2.imencode(".jpg", picture)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


def report(device_id: str, thread: str, state: str, **extra: Any) -> dict[str, Any]:
    started = extra.pop("started_at", datetime.now(UTC) - timedelta(seconds=5))
    if state == "end":
        extra.setdefault("ended_at", (started + timedelta(seconds=12)).isoformat())
    return {
        "device_id": device_id,
        "thread_id": thread,
        "kind": extra.pop("kind", "person"),
        "state": state,
        "score": extra.pop("score", 0.8),
        "box": [0.1, 0.2, 0.3, 0.4],
        "started_at": started.isoformat(),
        **extra,
    }


async def post_event(
    client: httpx.AsyncClient, device: ActivatedDevice, thread: str, state: str, **extra: Any
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/relays/events", json=report(device.id, thread, state, **extra), headers=RELAY
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def subscribe(
    client: httpx.AsyncClient, who: Account, service: PushService, name: str | None = None
) -> tuple[Any, dict[str, Any]]:
    browser, subscription = service.subscribe(name)
    r = await client.post("/api/v1/push/subscriptions", json=subscription, headers=who.headers)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return browser, created


@pytest.fixture
async def relay(ws_base: str) -> AsyncIterator[Peer]:
    peer = await connect(ws_base, "/ws/v1/relay", f"relay-notify:{RELAY_SECRET}")
    assert (await peer.recv())["type"] == "welcome"
    yield peer
    await peer.socket.close()


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@contextlib.contextmanager
def notify_settings(app: Starlette, **changes: Any) -> Iterator[Notifier]:
    """The running app's routes and outbox worker with some settings changed."""
    ctx = app.state.context
    notifier: Notifier = app.state.notifier
    before = ctx.settings
    changed = dataclasses.replace(before, **changes)
    ctx.settings = changed
    notifier.configure(changed)
    try:
        yield notifier
    finally:
        ctx.settings = before
        notifier.configure(before)


@pytest.fixture
async def paused(app: Starlette) -> AsyncIterator[None]:
    """The app's outbox worker stopped for the test (started again after it)."""
    box = app.state.notifier.outbox
    await box.stop()
    try:
        yield
    finally:
        box.start()


@pytest.fixture
def fast(app: Starlette) -> Iterator[Notifier]:
    """Retries within a second, no cooldown: what most tests want."""
    with notify_settings(app, notify_retry_schedule_s=(0.2, 0.4), notify_cooldown_s=0) as n:
        yield n
