"""The Notifications screen (#/notifications) in headless Chromium against a real cloud:
push on this device (on, a test notification, off), kinds and quiet hours per camera,
webhooks (added with their secret shown once, their deliveries, deleted), and the error
states (no push in this browser, a server error).

Chromium's push service is not reachable from the loopback-only test (Chromium subscribes
through Google's servers), so the page's ``PushManager`` is replaced by one that returns a
subscription whose endpoint is the test's receiver and whose keys the test holds; everything
else is real: the permission, the VAPID key from the cloud, the subscription registered and
deleted through the API, the cloud's encrypted push to the endpoint (decrypted here as a
browser would), and that payload shown by the app's service worker.
"""

import asyncio
import base64
import functools
import http.server
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import http_ece  # type: ignore[import-untyped]
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.e2e.cluster import account, device_of
from tests.servers import cloud_process
from tests.web.test_pwa import (
    CHROMIUM,
    FLAGS,
    cloud_env,
    notifications,
    open_app,
    registration_id,
    sign_in,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Received(http.server.BaseHTTPRequestHandler):
    """Records every POST (a push service's or a webhook endpoint's) and answers 201."""

    def __init__(self, posts: list[dict[str, Any]], *args: Any) -> None:
        self.posts = posts
        super().__init__(*args)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.posts.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    posts: list[dict[str, Any]] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Received, posts))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", posts
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("notify-screen")
    with cloud_process(cloud_env(mongodb_url, tmp), tmp / "cloud.log") as url:
        yield url


@pytest.fixture
async def browser_context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, headless=True
        )
        try:
            yield context
        finally:
            await context.close()


# The browser's push service stands in for FCM: subscribe() returns the test's endpoint and
# keys, remembers the applicationServerKey it was given, and unsubscribe() forgets it.
FAKE_PUSH = """(subscription) => {
  let current = null;
  const make = (key) => ({
    endpoint: subscription.endpoint,
    expirationTime: null,
    options: { applicationServerKey: key.buffer, userVisibleOnly: true },
    toJSON() {
      return { endpoint: this.endpoint, expirationTime: null, keys: subscription.keys };
    },
    async unsubscribe() { current = null; window.__unsubscribed = true; return true; },
  });
  PushManager.prototype.subscribe = async function (options) {
    const key = new Uint8Array(options.applicationServerKey);
    window.__subscribedWith = btoa(String.fromCharCode(...key))
      .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
    current = make(key);
    return current;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
}"""


class Subscriber:
    """The keys a browser makes for a subscription (RFC 8291), and its endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.private = ec.generate_private_key(ec.SECP256R1())
        point = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.auth = secrets.token_bytes(16)
        self.keys = {"p256dh": b64url(point), "auth": b64url(self.auth)}

    def decrypt(self, body: bytes) -> dict[str, Any]:
        plain = http_ece.decrypt(
            body, private_key=self.private, auth_secret=self.auth, version="aes128gcm"
        )
        decoded: dict[str, Any] = json.loads(plain)
        return decoded


async def screen(context: BrowserContext, cloud: str, who: Any) -> Page:
    page = await open_app(context, cloud)
    await sign_in(page, who)
    await page.reload()  # the app reads its session when it starts
    await page.get_by_role("navigation", name="Sections").get_by_role("link", name="Alerts").click()
    await expect(page.get_by_role("heading", name="Notifications")).to_be_visible()
    return page


async def posted(posts: list[dict[str, Any]], path: str) -> dict[str, Any]:
    for _ in range(150):
        for post in posts:
            if post["path"] == path:
                return post
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing was POSTed to {path}: {[p['path'] for p in posts]}")


async def test_push_on_this_device_a_test_notification_and_off_again(
    cloud: str,
    browser_context: BrowserContext,
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    base, posts = receiver
    subscriber = Subscriber(base + "/push/" + secrets.token_hex(6))
    await browser_context.grant_permissions(["notifications"], origin=cloud)
    await browser_context.add_init_script(
        f"({FAKE_PUSH})({json.dumps({'endpoint': subscriber.endpoint, 'keys': subscriber.keys})})"
    )
    async with httpx.AsyncClient(base_url=cloud) as http:
        who = await account(http, "push")
        page = await screen(browser_context, cloud, who)
        state = page.locator(".push-state")
        await expect(state).to_have_attribute("data-state", "off")
        await page.get_by_role("button", name="Turn on for this device").click()
        await expect(state).to_have_attribute("data-state", "on")
        await expect(page.locator("#notice")).to_contain_text("on for this device")

        vapid = (await http.get("/api/v1/push/vapid", headers=who.headers)).json()
        assert await page.evaluate("window.__subscribedWith") == vapid["public_key"]
        listed = (await http.get("/api/v1/push/subscriptions", headers=who.headers)).json()
        assert [s["endpoint"] for s in listed["subscriptions"]] == [subscriber.endpoint]

        # the test notification: encrypted to this device's keys, shown by the worker
        await page.get_by_role("button", name="Send a test notification").click()
        await expect(page.locator("#notice")).to_contain_text("Test notification sent")
        push = await posted(posts, "/push/" + subscriber.endpoint.rsplit("/", 1)[1])
        assert push["headers"]["content-encoding"] == "aes128gcm"
        assert push["headers"]["authorization"].startswith("vapid ")
        payload = subscriber.decrypt(push["body"])
        assert payload["state"] == "test"
        cdp = await browser_context.new_cdp_session(page)
        registration = await registration_id(cdp, cloud)
        await cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": cloud, "registrationId": registration, "data": json.dumps(payload)},
        )
        [shown] = await notifications(page, 1, payload["body"])
        assert shown["title"] == payload["title"]

        await page.get_by_role("button", name="Turn off on this device").click()
        await expect(state).to_have_attribute("data-state", "off")
        assert await page.evaluate("window.__unsubscribed") is True
        listed = (await http.get("/api/v1/push/subscriptions", headers=who.headers)).json()
        assert listed["subscriptions"] == []


async def test_kinds_and_quiet_hours_per_camera_are_saved(
    cloud: str, browser_context: BrowserContext
) -> None:
    async with httpx.AsyncClient(base_url=cloud) as http:
        who = await account(http, "prefs")
        device = await device_of(http, who)
        page = await screen(browser_context, cloud, who)
        form = page.get_by_role("form", name="Porch")
        await expect(form.get_by_label("Every kind")).to_be_checked()  # nothing chosen yet
        await form.get_by_label("Every kind").uncheck()
        await form.get_by_label("Person").check()
        await form.get_by_label("Quiet hours").check()
        await form.get_by_label("From", exact=True).fill("22:00")
        await form.get_by_label("To", exact=True).fill("06:30")
        await form.get_by_role("button", name="Save").click()
        await expect(page.locator("#notice")).to_contain_text("Saved for “Porch”")
        saved = (await http.get("/api/v1/notifications/preferences", headers=who.headers)).json()
        [mine] = [p for p in saved["preferences"] if p["device_id"] == device.id]
        assert mine["kinds"] == ["person"]
        zone = await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
        assert mine["quiet_hours"] == {"start": "22:00", "end": "06:30", "timezone": zone}

        # shown as saved on the next visit; every kind again clears the choice
        await page.reload()
        form = page.get_by_role("form", name="Porch")
        await expect(form.get_by_label("Person")).to_be_checked()
        await expect(form.get_by_label("Quiet hours")).to_be_checked()
        await form.get_by_label("Every kind").check()
        await form.get_by_label("Quiet hours").uncheck()
        await form.get_by_role("button", name="Save").click()
        await expect(page.locator("#notice")).to_contain_text("Saved for “Porch”")
        saved = (await http.get("/api/v1/notifications/preferences", headers=who.headers)).json()
        [mine] = [p for p in saved["preferences"] if p["device_id"] == device.id]
        assert (mine["kinds"], mine["quiet_hours"]) == (None, None)


async def test_a_webhook_is_added_with_its_secret_shown_once_and_deleted(
    cloud: str, browser_context: BrowserContext, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = receiver
    async with httpx.AsyncClient(base_url=cloud) as http:
        who = await account(http, "hooks")
        page = await screen(browser_context, cloud, who)
        hooks = page.get_by_role("list", name="Webhooks")
        await expect(hooks).to_contain_text("No webhooks.")
        adding = page.get_by_role("form", name="Add a webhook")
        await adding.get_by_label("Endpoint URL").fill("not a url")
        await adding.get_by_role("button", name="Add").click()
        await expect(adding.locator(".error")).to_contain_text("full URL")

        await adding.get_by_label("Endpoint URL").fill(base + "/hook")
        await adding.get_by_label("Person").check()
        await adding.get_by_role("button", name="Add").click()
        secret = page.locator(".secret-value")
        await expect(secret).to_have_text(re.compile(r"^whsec_\S{20,}$"))
        await expect(page.locator(".secret")).to_contain_text("shown only this once")
        await expect(hooks).to_contain_text(base + "/hook")
        await expect(hooks).to_contain_text("Person")
        [hook] = (await http.get("/api/v1/webhooks", headers=who.headers)).json()["webhooks"]
        assert (hook["url"], hook["kinds"]) == (base + "/hook", ["person"])
        assert "secret" not in hook  # shown once, in the answer to the POST only

        await hooks.get_by_role("button", name="Deliveries").click()
        await expect(page.get_by_role("list", name="Recent deliveries")).to_be_visible()

        await page.reload()
        await expect(page.locator(".secret")).to_be_hidden()  # not shown again
        hooks = page.get_by_role("list", name="Webhooks")
        await hooks.get_by_role("button", name="Delete").click()
        await page.locator("#confirm").get_by_role("button", name="Delete").click()
        await expect(hooks).to_contain_text("No webhooks.")
        assert (await http.get("/api/v1/webhooks", headers=who.headers)).json()["webhooks"] == []


async def test_no_push_in_this_browser_and_a_server_error_are_said_plainly(
    cloud: str, browser_context: BrowserContext
) -> None:
    async with httpx.AsyncClient(base_url=cloud) as http:
        who = await account(http, "errors")
    await browser_context.grant_permissions(["notifications"], origin=cloud)
    page = await screen(browser_context, cloud, who)
    await page.route(
        "**/api/v1/push/vapid",
        lambda route: route.fulfill(
            status=503,
            json={"error": {"code": "service_unavailable", "message": "push is down"}},
            headers={"Retry-After": "5"},
        ),
    )
    await page.get_by_role("button", name="Turn on for this device").click()
    await expect(page.locator(".push-card .error")).to_have_text("Push is down")
    await expect(page.locator(".push-state")).to_have_attribute("data-state", "off")

    await browser_context.add_init_script("delete window.PushManager")
    await page.reload()
    state = page.locator(".push-state")
    await expect(state).to_have_attribute("data-state", "unsupported")
    await expect(state).to_contain_text("cannot receive push notifications")
    await expect(page.get_by_role("button", name="Turn on for this device")).to_be_hidden()
