"""The Stats screen (#/stats) in headless Chromium against a real cloud: the owner's cameras,
events per day, sessions by route, time to first frame and storage, as GET /api/v1/stats
gives them; a viewer of a shared camera sees none of its owner's figures."""

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from bson import ObjectId
from playwright.async_api import BrowserContext, Page, async_playwright, expect
from pymongo import MongoClient

from tests.e2e.cluster import account, device_of
from tests.servers import cloud_process
from tests.web.test_pwa import CHROMIUM, FLAGS, cloud_env, sign_in


@pytest.fixture(scope="module")
def cloud(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("stats-screen")
    env = cloud_env(mongodb_url, tmp)
    with cloud_process(env, tmp / "cloud.log") as url:
        yield url, env["MONGODB_DATABASE"]


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


async def open_stats(context: BrowserContext, url: str, who: object) -> tuple[Page, list[str]]:
    page = context.pages[0] if context.pages else await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url + "/")
    await sign_in(page, who)  # type: ignore[arg-type]
    await page.reload()  # signed in: the cameras; the Stats tab from there
    await page.locator('#tabs a[data-tab="stats"]').click()
    await expect(page.locator(".stats-body")).not_to_have_attribute("aria-busy", "true")
    return page, problems


@pytest.mark.timeout(120)
async def test_the_owner_sees_their_stats_and_a_viewer_of_the_camera_none_of_them(
    cloud: tuple[str, str], mongodb_url: str, browser_context: BrowserContext
) -> None:
    url, database = cloud
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        owner = await account(http, "owner")
        friend = await account(http, "friend")
        device = await device_of(http, owner)
        shared = await http.post(
            f"/api/v1/devices/{device.id}/shares",
            json={"email": friend.email, "role": "viewer"},
            headers=owner.headers,
        )
        assert shared.status_code in (200, 201), shared.text
    now = datetime.now(UTC)
    with MongoClient(mongodb_url) as client:
        db = client[database]
        for n, (kind, ago) in enumerate([("motion", 0), ("motion", 0), ("person", 1)]):
            started = now - timedelta(days=ago, minutes=1)
            db["events"].insert_one(
                {
                    "device_id": ObjectId(device.id),
                    "relay_id": "relay-x",
                    "thread_id": f"t{n}-{secrets.token_hex(3)}",
                    "kind": kind,
                    "state": "end",
                    "score": 0.9,
                    "started_at": started,
                    "updated_at": started,
                    "acknowledged": False,
                    "has_snapshot": False,
                    "source": "live",
                    "expires_at": now + timedelta(days=7),
                }
            )
        db["sessions"].insert_one(
            {
                "session_id": "s-" + secrets.token_hex(4),
                "device_id": ObjectId(device.id),
                "viewer_id": friend.id,
                "viewer_role": "user",
                "route": "relay",
                "created_at": now - timedelta(minutes=3),
                "viewer_stats": {
                    "route": "relay",
                    "local_candidate_type": "host",
                    "remote_candidate_type": "host",
                    "protocol": "udp",
                    "ice_ms": 90,
                    "ttff_ms": 1400,
                    "reported_at": now,
                },
            }
        )

    page, problems = await open_stats(browser_context, url, owner)
    await expect(page.locator('#tabs a[data-tab="stats"]')).to_have_class("active")
    await expect(page.locator('[data-stat="online"] .stats-value')).to_have_text("0 of 1")
    await expect(page.locator('[data-stat="events"] .stats-value')).to_have_text("3")
    days = page.locator(".stats-day")
    await expect(days).to_have_count(7)
    today = days.last
    await expect(today).to_have_attribute("data-total", "2")
    await expect(today.locator(".stats-day-kinds")).to_have_text("Motion 2")
    await expect(days.nth(5).locator(".stats-day-kinds")).to_have_text("Person 1")
    await expect(page.locator('.stats-routes [data-route="relay"] strong')).to_have_text("1")
    await expect(page.locator('.stats-routes [data-route="p2p"] strong')).to_have_text("0")
    await expect(page.locator('[data-stat="ttff"] .stats-value')).to_have_text("1.4")
    await expect(page.locator('[data-stat="storage"] .stats-value')).to_contain_text("0 B of 10")
    assert problems == []

    # The friend watches the camera but owns none: the owner's figures are not theirs.
    await page.evaluate("sessionStorage.clear()")
    page, problems = await open_stats(browser_context, url, friend)
    await expect(page.locator('[data-stat="online"] .stats-value')).to_have_text("0 of 0")
    await expect(page.locator('[data-stat="events"] .stats-value')).to_have_text("0")
    await expect(page.locator('.stats-routes [data-route="relay"] strong')).to_have_text("0")
    await expect(page.locator('[data-stat="ttff"] .stats-value')).to_have_text("\u2013")
    assert problems == []
