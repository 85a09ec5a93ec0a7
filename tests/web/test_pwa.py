"""The installable app in Debian's Chromium (headless, driven by Playwright): the manifest
passes Chromium's own installability checks, the service worker registers and caches the
shell, a push delivered through the DevTools protocol shows a notification that the next
push with the same tag replaces, and without a network the app opens on its offline state.

Chromium runs on loopback next to a real cloud (``python -m cloud``): service workers and
push need a secure context, which ``http://127.0.0.1`` is. It runs with a profile of its own
(a persistent context), as a person's browser does: an off-the-record profile is not
installable (``in-incognito``). Flags: those of the other browser tests, nothing that
relaxes service workers, push or notifications.
"""

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, CDPSession, Page, async_playwright, expect

from cloud.app import WEB_DIR
from tests.conftest import Account
from tests.e2e.cluster import account
from tests.servers import cloud_process

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHELL_LIST = re.compile(r"const SHELL = \[(.*?)\];", re.S)
VERSION = re.compile(r'const VERSION = "([^"]+)";')


def cloud_env(mongodb_url: str, tmp: Path) -> dict[str, str]:
    return {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": "pwa_" + secrets.token_hex(4),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
    }


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("pwa-cloud")
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


def shell() -> tuple[str, list[str]]:
    source = (WEB_DIR / "sw.js").read_text()
    listed = SHELL_LIST.search(source)
    version = VERSION.search(source)
    assert listed is not None
    assert version is not None
    return version.group(1), re.findall(r'"([^"]+)"', listed.group(1))


async def open_app(context: BrowserContext, url: str) -> Page:
    """The app's page, once its service worker controls it and has cached the shell."""
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(url + "/")
    version, paths = shell()
    cached = await page.evaluate(
        """async (version) => {
          await navigator.serviceWorker.ready;
          if (!navigator.serviceWorker.controller) {
            await new Promise((resolve) =>
              navigator.serviceWorker.addEventListener('controllerchange', resolve, {once: true}));
          }
          const cache = await caches.open(version);
          return (await cache.keys()).map((r) => new URL(r.url).pathname);
        }""",
        version,
    )
    assert sorted(cached) == sorted(paths)
    return page


async def sign_in(page: Page, who: Account) -> None:
    """Put the tokens where the app keeps them (sessionStorage), as its sign-in does."""
    session = {
        "access": who.tokens["access_token"],
        "refresh": who.tokens["refresh_token"],
        "expiresAt": int(1000 * (await page.evaluate("Date.now() / 1000 + 600"))),
        "email": who.email,
    }
    await page.evaluate(
        "(s) => sessionStorage.setItem('visionconnect.session', JSON.stringify(s))", session
    )


# served -----------------------------------------------------------------------------------


def test_the_worker_caches_every_file_of_the_app() -> None:
    """A module missing from SHELL would be missing offline: the list names every file."""
    _, paths = shell()
    static = WEB_DIR / "static"
    files = {f"/static/{p.relative_to(static)}" for p in static.rglob("*") if p.is_file()}
    assert set(paths) == files | {"/", "/manifest.webmanifest"}
    assert len(paths) == len(set(paths))


async def test_the_manifest_and_the_worker_are_served_from_the_root(cloud: str) -> None:
    async with httpx.AsyncClient(base_url=cloud) as http:
        manifest = await http.get("/manifest.webmanifest")
        assert manifest.status_code == 200
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        body = manifest.json()
        assert body["display"] == "standalone"
        assert (body["start_url"], body["scope"], body["id"]) == ("/", "/", "/")
        assert body["theme_color"]
        assert body["background_color"]
        sizes = {i["sizes"] for i in body["icons"] if i["type"] == "image/png"}
        assert {"192x192", "512x512"} <= sizes
        for icon in body["icons"]:
            assert (await http.get(icon["src"])).status_code == 200, icon
        worker = await http.get("/sw.js")
        assert worker.status_code == 200
        assert worker.headers["content-type"].startswith("text/javascript")
        assert worker.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in worker.headers["content-security-policy"]
        index = (await http.get("/")).text
        assert '<link rel="manifest" href="/manifest.webmanifest">' in index


# in Chromium -------------------------------------------------------------------------------


async def test_chromium_finds_the_app_installable_with_its_worker_running(
    cloud: str, browser_context: BrowserContext
) -> None:
    page = await open_app(browser_context, cloud)
    cdp = await browser_context.new_cdp_session(page)
    manifest = await cdp.send("Page.getAppManifest")
    assert manifest["url"] == cloud + "/manifest.webmanifest"
    assert manifest.get("errors", []) == []
    installability = await cdp.send("Page.getInstallabilityErrors")
    assert installability["installabilityErrors"] == []
    scope = await page.evaluate("navigator.serviceWorker.controller.scriptURL")
    assert scope == cloud + "/sw.js"


async def registration_id(cdp: CDPSession, origin: str) -> str:
    """The service worker registration of ``origin``, from ServiceWorker.enable's events."""
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def registrations(params: dict[str, Any]) -> None:
        for r in params["registrations"]:
            if r["scopeURL"] == origin + "/" and not r["isDeleted"] and not found.done():
                found.set_result(r["registrationId"])

    cdp.on("ServiceWorker.workerRegistrationUpdated", registrations)
    await cdp.send("ServiceWorker.enable")
    return await asyncio.wait_for(found, 10)


NOTIFICATIONS = """async () => {
  const registration = await navigator.serviceWorker.ready;
  return (await registration.getNotifications()).map(
    (n) => ({title: n.title, body: n.body, tag: n.tag, data: n.data}));
}"""


async def notifications(page: Page, count: int, body: str) -> list[dict[str, Any]]:
    """The notifications shown, once there are ``count`` and the last has ``body``."""
    shown: list[dict[str, Any]] = []
    for _ in range(100):
        shown = await page.evaluate(NOTIFICATIONS)
        if len(shown) == count and shown[-1]["body"] == body:
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"wanted {count} notification(s) ending with {body!r}, saw {shown}")


def payload(tag: str, state: str, body: str) -> str:
    return json.dumps(
        {
            "title": "Person at Front door",
            "body": body,
            "tag": tag,
            "image": None,
            "renotify": state == "end",
            "event_id": "e1",
            "device_id": "d1",
            "kind": "person",
            "state": state,
            "url": "/#/events",
        }
    )


async def test_a_push_shows_a_notification_that_the_next_push_of_its_thread_replaces(
    cloud: str, browser_context: BrowserContext
) -> None:
    await browser_context.grant_permissions(["notifications"], origin=cloud)
    page = await open_app(browser_context, cloud)
    assert await page.evaluate("Notification.permission") == "granted"
    cdp = await browser_context.new_cdp_session(page)
    registration = await registration_id(cdp, cloud)

    async def deliver(data: str) -> None:
        await cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": cloud, "registrationId": registration, "data": data},
        )

    await deliver(payload("thread-1", "new", "Seen at 06:01"))
    [first] = await notifications(page, 1, "Seen at 06:01")
    assert (first["title"], first["tag"]) == ("Person at Front door", "thread-1")
    assert first["data"]["url"] == "/#/events"

    await deliver(payload("thread-1", "end", "Seen 06:01-06:03"))
    [replaced] = await notifications(page, 1, "Seen 06:01-06:03")  # one, with the new body
    assert replaced["tag"] == "thread-1"

    await deliver(payload("thread-2", "new", "Another one"))  # another thread: its own
    shown = await notifications(page, 2, "Another one")
    assert sorted(n["tag"] for n in shown) == ["thread-1", "thread-2"]


async def test_without_a_network_the_app_opens_on_its_offline_state(
    mongodb_url: str, tmp_path: Path, browser_context: BrowserContext
) -> None:
    """Offline twice: the browser's network cut (set_offline), then the server gone."""
    with cloud_process(cloud_env(mongodb_url, tmp_path), tmp_path / "cloud.log") as url:
        async with httpx.AsyncClient(base_url=url) as http:
            who = await account(http, "pwa")
        page = await open_app(browser_context, url)
        await sign_in(page, who)
        await page.reload()
        await expect(page.locator("#tabs")).to_be_visible()
        await expect(page.locator("#offline")).to_be_hidden()

        # the signed-in app has used the API: nothing of it went into the cache
        version, paths = shell()
        cached = await page.evaluate(
            """async (v) => (await (await caches.open(v)).keys()).map((r) => r.url)""", version
        )
        assert sorted(cached) == sorted(url + p for p in paths)

        await browser_context.set_offline(True)
        await page.reload()
        await expect(page.locator("#offline")).to_be_visible()
        api = await page.evaluate(
            "fetch('/api/v1/me').then((r) => `HTTP ${r.status}`, (e) => e.name)"
        )
        assert api == "TypeError"  # the network's failure: never an answer from a cache
        await expect(page.locator("#offline")).to_contain_text("You are offline")
        await expect(page.locator("#tabs")).to_be_visible()  # the app, not an error page
        assert await page.title() == "VisionConnect"
        await browser_context.set_offline(False)
        await expect(page.locator("#offline")).to_be_hidden(timeout=15000)
    # the cloud has stopped: its address refuses connections
    await page.reload()
    await expect(page.locator("#offline")).to_be_visible()
    await expect(page.locator(".brand")).to_have_text("VisionConnect")
    await expect(page.locator("#tabs")).to_be_visible()
