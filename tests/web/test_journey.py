"""The browser app end to end: Debian's Chromium, driven by Playwright, on a phone-sized screen.

Real processes only: a cloud, redis-server and a relay node (``tests/web/stack.py``), the
camera simulator scanning the QR code the page shows. Chromium runs in a network namespace
of its own, a phone on its own network (``tests/web/network.py``); whether a direct path to
the camera exists depends only on the ICE host addresses the simulator offers.

Each step saves a screenshot into the test's temporary folder; with
``UPDATE_SCREENSHOTS=1`` also into ``docs/screenshots/`` (the README shows them), so that an
ordinary run leaves the working tree as it was.
"""

import asyncio
import base64
import io
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.conftest import PASSWORD, camera_key, unique_email
from tests.servers import ROOT, redis_server, stop
from tests.web.network import HOST_ADDRESS, PhoneNetwork, phone_network, unavailable
from tests.web.stack import camera, cloud_at, onboard_camera, relay_node, wait_relay_online

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # stock otherwise: host candidates behind mDNS names, none on loopback
PHONE_SCREEN = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 1,
    "is_mobile": True,
    "has_touch": True,
}
SCREENSHOTS = ROOT / "docs" / "screenshots"
RELAY_SECRET = "web-relay-" + secrets.token_hex(8)
RELAY_ID = "relay-web"
# the camera on the phone's network (direct path), or behind a NAT (loopback only)
SAME_LAN = ["127.0.0.1", HOST_ADDRESS]
BEHIND_NAT = ["127.0.0.1"]
# Motion episodes every 15 s (4 s each) from 15 s after the camera starts: the relayed view
# opens ~10 s after the start, so one happens while the relay watches, whatever the pace.
MOTION = [arg for start in range(15, 181, 15) for arg in ("--motion", f"{start}:4")]

# The page's codec preferences come from the browser's capabilities: without H.264 in them,
# its offer takes VP8 only. window.restoreCapabilities() undoes it.
WITHOUT_H264 = """() => {
  const original = RTCRtpReceiver.getCapabilities;
  window.restoreCapabilities = () => { RTCRtpReceiver.getCapabilities = original; };
  RTCRtpReceiver.getCapabilities = (kind) => {
    const capabilities = original.call(RTCRtpReceiver, kind);
    const codecs = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/h264");
    return { ...capabilities, codecs };
  };
}"""


@dataclass
class Stack:
    url: str
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


@pytest.fixture(scope="module")
def phone() -> Iterator[PhoneNetwork]:
    reason = unavailable()
    # make test runs the suites in a loopback-only namespace (scripts/hermetic); elsewhere
    # this suite cannot build the phone's network, and says so instead of passing silently.
    assert reason is None, f"{reason} (run: scripts/hermetic .venv/bin/pytest tests/web)"
    with phone_network() as network:
        yield network


@pytest.fixture(scope="module")
def stack(
    phone: PhoneNetwork, mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web")
    database = "web_" + secrets.token_hex(4)
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": database,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "RELAY_SECRET": RELAY_SECRET,
        "DATA_DIR": str(tmp),
        "PRESENCE_TTL_S": "3",
        "ONBOARDING_TICKETS_PER_HOUR": "1000",
    }
    with (
        redis_server() as redis_url,
        cloud_at(HOST_ADDRESS, {**env, "REDIS_URL": redis_url}, tmp / "cloud.log") as url,
        relay_node(
            url, RELAY_ID, RELAY_SECRET, ["127.0.0.1", HOST_ADDRESS], tmp / "relay.log"
        ) as relay,
    ):
        wait_relay_online(mongodb_url, database, RELAY_ID, relay)
        stack = Stack(url, tmp)
        try:
            yield stack
        finally:
            for process in stack.processes:
                stop(process)


@pytest.fixture(scope="module")
async def browser(
    phone: PhoneNetwork, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    launcher = phone.wrap(CHROMIUM, tmp_path_factory.mktemp("chromium"))
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=launcher, args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def small_png(png: bytes) -> bytes:
    """A screenshot in 256 colours: a third of the size, for committing to docs/."""
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(out, "PNG", optimize=True)
    return out.getvalue()


class Phone:
    """One person's phone: a fresh browser context with the app open."""

    def __init__(self, context: BrowserContext, page: Page, artefacts: Path, name: str) -> None:
        self.name = name
        self.context = context
        self.page = page
        self.artefacts = artefacts
        self.errors: list[str] = []
        self.console: list[str] = []
        self.offers: list[str] = []  # the SDP of every session.offer the page sent
        self.signaling: list[dict[str, Any]] = []  # every session.offer and .ice, in order
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("websocket", lambda socket: socket.on("framesent", self._sent))
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.set_default_timeout(15_000)

    @classmethod
    async def open(cls, browser: Browser, url: str, artefacts: Path, name: str) -> "Phone":
        context = await browser.new_context(**PHONE_SCREEN)  # type: ignore[arg-type]
        page = await context.new_page()
        phone = cls(context, page, artefacts, name)  # listening from the first request on
        await page.goto(url)
        return phone

    async def shot(self, name: str) -> None:
        png = small_png(await self.page.screenshot())
        (self.artefacts / f"{name}.png").write_bytes(png)
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / f"{name}.png").write_bytes(png)

    async def sign_in(self, email: str, password: str = PASSWORD) -> None:
        page = self.page
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Cameras")).to_be_visible()

    async def playing(self, timeout_s: float = 30) -> str:
        """Wait for decoded, advancing video in the live view; returns the route shown."""
        page = self.page
        await expect(page.locator(".video-box")).to_have_attribute(
            "data-phase", "playing", timeout=timeout_s * 1000
        )
        await page.wait_for_function(
            "() => { const v = document.querySelector('.video-box video');"
            " return v.videoWidth > 0 && v.currentTime > 0; }",
            timeout=10_000,
        )
        size = await page.evaluate(
            "() => { const v = document.querySelector('.video-box video');"
            " return [v.videoWidth, v.videoHeight, v.currentTime]; }"
        )
        assert size[:2] == [320, 240]
        await page.wait_for_function(
            f"() => document.querySelector('.video-box video').currentTime > {size[2]} + 0.5",
            timeout=10_000,
        )
        await expect(page.locator(".ttff")).to_contain_text("First frame")
        route = await page.locator(".route").get_attribute("data-route")
        assert route
        return route

    def _sent(self, payload: str | bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "session.offer":
            self.offers.append(message["sdp"])
        if isinstance(message, dict) and message.get("type") in ("session.offer", "session.ice"):
            self.signaling.append(message)

    def expect_full_trickle(self) -> None:
        """The latest session's offer left before gathering, with no candidate in it, and
        every candidate followed it in a session.ice, mDNS names (stock Chromium), then the
        end (null): the camera or relay that played it kept those that came right behind."""
        offer = next(m for m in reversed(self.signaling) if m["type"] == "session.offer")
        assert "a=candidate:" not in offer["sdp"]
        after = self.signaling[self.signaling.index(offer) + 1 :]
        trickled = [
            m["candidate"]
            for m in after
            if m["type"] == "session.ice" and m["session_id"] == offer["session_id"]
        ]
        assert len(trickled) >= 2, trickled
        assert trickled[-1] is None, trickled
        hosts = [c["candidate"].split()[4] for c in trickled[:-1] if " typ host" in c["candidate"]]
        assert hosts, trickled
        assert all(host.endswith(".local") for host in hosts), hosts

    async def expect_codec(self, codec: str, text: str) -> None:
        """The live view names the codec it receives (from the browser's statistics), and
        the latest offer preferred H.264 then VP8."""
        badge = self.page.locator(".live-info .codec")
        await expect(badge).to_have_attribute("data-codec", codec)
        await expect(badge).to_have_text(text)
        offered = offered_codecs(self.offers[-1])
        media = [c for c in offered if c[0] in ("H264", "VP8")]
        h264 = [c for c in media if c[0] == "H264"]
        assert h264, media
        assert media == [*h264, ("VP8", "")], media
        assert all("packetization-mode=1" in fmtp.split(";") for _, fmtp in h264), h264
        # the resiliency codecs Chromium offers by itself are still there
        assert {"rtx", "red", "ulpfec"} <= {name for name, _ in offered}, offered

    async def close(self) -> None:
        await self.context.close()
        (self.artefacts / f"console-{self.name}.log").write_text("\n".join([*self.console, ""]))
        assert self.errors == [], self.errors


SESSIONS = """async (id) => {
  const token = JSON.parse(sessionStorage.getItem('visionconnect.session')).access;
  const r = await fetch(`/api/v1/devices/${id}/sessions`,
    { headers: { Authorization: `Bearer ${token}` } });
  return (await r.json()).sessions;
}"""


def offered_codecs(sdp: str) -> list[tuple[str, str]]:
    """(name, fmtp) of the video section's payload types, in the offer's order."""
    names: dict[str, str] = {}
    fmtps: dict[str, str] = {}
    order: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m=video "):
            order = line.split()[3:]
        elif match := re.match(r"a=rtpmap:(\d+) ([^/]+)/", line):
            names[match[1]] = match[2]
        elif match := re.match(r"a=fmtp:(\d+) (.*)", line):
            fmtps[match[1]] = match[2]
    return [(names.get(pt, pt), fmtps.get(pt, "")) for pt in order]


async def register(url: str, prefix: str) -> str:
    email = unique_email(prefix)
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        created = await http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
    assert created.status_code == 201, created.text
    return email


async def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return process.poll()


PLAYABLE = """v => new Promise((ok, fail) => {
  if (v.readyState >= 2) return ok();
  v.addEventListener("loadeddata", () => ok());
  v.addEventListener("error", () => fail(new Error("the clip did not play: " + v.error?.message)));
})"""


@pytest.mark.timeout(420)
async def test_an_owner_onboards_by_qr_watches_sees_motion_and_shares_with_a_friend(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    owner = await Phone.open(browser, stack.url, tmp_path, "owner")
    page = owner.page

    # Register in the page; a weak password is refused with the API's own words.
    email = unique_email("owner")
    await page.get_by_role("link", name="Create an account").click()
    await expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("aaaaaaaaaaaa")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("form .error")).to_have_text(
        "The password needs at least 4 different characters"
    )
    await page.get_by_label("Password").fill(PASSWORD)
    await owner.shot("01-register")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Cameras")).to_be_visible()
    await expect(page.get_by_text("No cameras yet.")).to_be_visible()
    await expect(page.locator("#link-state")).to_have_attribute("data-state", "online")
    await owner.shot("02-cameras-empty")

    # Add a camera: the form gives a QR code with a countdown.
    await page.get_by_role("link", name="Add camera").click()
    await page.get_by_label("Camera name").fill("Porch")
    await page.get_by_label("Model").fill("VC 100")
    await page.get_by_label("Wi-Fi name").fill("Home")
    await page.locator("input[name=wifi_password]").fill("wifi-pass-123")
    await page.get_by_role("button", name="Show QR code").click()
    qr = page.locator("img.qr")
    await expect(qr).to_be_visible()
    await page.wait_for_function("() => document.querySelector('img.qr').naturalWidth > 0")
    await expect(page.locator(".countdown")).to_have_text(re.compile(r"^(10:00|9:[45]\d)$"))
    await owner.shot("03-qr-code")

    # The camera scans the code off the screen and activates; the page says so by itself.
    png, state = tmp_path / "qr-from-screen.png", tmp_path / "porch.json"
    await qr.screenshot(path=str(png))
    device_id = await asyncio.to_thread(onboard_camera, png, state)
    activated = page.locator(".onboarding-state[data-state=activated]")
    await expect(activated).to_contain_text("Camera connected", timeout=15_000)
    assert await activated.get_attribute("data-device-id") == device_id
    await owner.shot("04-camera-connected")

    # The camera comes online: the list's dot turns green, live.
    cam = camera(state, SAME_LAN, stack.tmp / "porch.log", *MOTION)
    stack.processes.append(cam)
    await page.get_by_role("link", name="My cameras").click()
    card = page.locator(f"li.camera[data-device-id='{device_id}']")
    await expect(card).to_have_attribute("data-online", "true", timeout=30_000)
    await expect(card.locator(".dot.online")).to_be_visible()
    await expect(card.locator(".presence")).to_have_text("Online")
    await owner.shot("05-camera-online")

    # An access token the API refuses is refreshed quietly, and the request retried: a
    # reload with a spoilt token still lists the camera, and the socket comes back.
    await page.evaluate(
        "() => { const key = 'visionconnect.session';"
        " const s = JSON.parse(sessionStorage.getItem(key));"
        " s.access = 'spoilt'; sessionStorage.setItem(key, JSON.stringify(s)); }"
    )
    await page.reload()
    await expect(card).to_have_attribute("data-online", "true")
    await expect(page.locator("#link-state")).to_have_attribute("data-state", "online")
    token = await page.evaluate(
        "() => JSON.parse(sessionStorage.getItem('visionconnect.session')).access"
    )
    assert token != "spoilt"
    # And a token about to expire is refreshed before it is used.
    before = await page.evaluate("() => sessionStorage.getItem('visionconnect.session')")
    await page.evaluate(
        "() => { const key = 'visionconnect.session';"
        " const s = JSON.parse(sessionStorage.getItem(key));"
        " s.expiresAt = Date.now() + 5000; sessionStorage.setItem(key, JSON.stringify(s)); }"
    )
    await page.reload()
    await expect(card).to_have_attribute("data-online", "true")
    after = await page.evaluate("() => sessionStorage.getItem('visionconnect.session')")
    assert json.loads(after)["refresh"] != json.loads(before)["refresh"]
    assert json.loads(after)["expiresAt"] > json.loads(before)["expiresAt"]

    # Live view, mode auto: the direct path works on the same network, in H.264 (the page
    # offers it first; Chromium's own order puts VP8 first).
    await card.get_by_role("link", name="Watch").click()
    assert await owner.playing() == "direct"
    owner.expect_full_trickle()  # the camera kept the candidates right behind the offer
    await expect(page.locator(".route")).to_have_text("Direct")
    await expect(page.locator(".route-reason")).to_have_text("Direct, same network")
    await owner.expect_codec("H264", "H.264")
    await owner.shot("06-live-direct")

    # Through the relay node, which watches for motion: an event thread arrives live and
    # updates one row (new -> update -> end).
    await page.get_by_role("radio", name="Relay").click()
    assert await owner.playing() == "relay"
    owner.expect_full_trickle()  # and so did the relay node
    await expect(page.locator(".route")).to_have_text("Relay node")
    await expect(page.locator(".route-reason")).to_have_text("Through a relay node")
    await owner.expect_codec("H264", "H.264")
    # The page told the cloud how each view connected (session.stats): the owner's list of
    # the camera's sessions says why, from the browser's own report.
    sessions = await page.evaluate(SESSIONS, device_id)
    reasons = {(s["route"], s["reason"]) for s in sessions if s["viewer_stats"]}
    assert {("p2p", "Direct, same network"), ("relay", "Through a relay node")} <= reasons
    motion = page.locator(".events li.event[data-kind=motion]")
    await expect(motion.first).to_be_visible(timeout=60_000)
    await owner.shot("07-live-relay-motion")
    await expect(motion.first).to_have_attribute("data-state", "end", timeout=30_000)
    threads = await motion.evaluate_all("rows => rows.map(r => r.dataset.threadId)")
    assert len(threads) == len(set(threads))
    await page.get_by_role("button", name="End").click()
    await expect(page.locator(".live-ended")).to_have_text("You ended the live view.")

    # A browser that would take only VP8: the relay forwards the camera's H.264 as it is, so
    # it refuses the session, and the page says why instead of showing a black picture.
    await page.evaluate(WITHOUT_H264)
    await page.get_by_role("button", name="Watch again").click()
    await expect(page.locator(".live-ended")).to_have_text(
        "This browser cannot play the video format this camera sends.", timeout=20_000
    )
    await page.evaluate("() => window.restoreCapabilities()")

    # The events tab: the snapshot (fetched with the token), and acknowledging.
    await page.get_by_role("link", name="Events").click()
    row = page.locator(f".events li.event[data-thread-id='{threads[0]}']")
    await expect(row).to_have_attribute("data-snapshot", "loaded")
    # The picture decodes after its blob URL is set, and a push re-renders the row with a
    # new img: wait for the one shown to have decoded (it never does if the JPEG is bad).
    await page.wait_for_function(
        "sel => (document.querySelector(sel)?.naturalWidth ?? 0) > 0",
        arg=f".events li.event[data-thread-id='{threads[0]}'] img",
    )
    await row.get_by_role("button", name="Mark seen").click()
    await expect(row).to_have_attribute("data-acknowledged", "true")
    await expect(row.locator(".acked")).to_have_text("✓ Seen")
    # Its clip, cut by the relay node from the camera's own H.264, plays in the row.
    await row.get_by_role("button", name="▶ Clip").click()
    clip = row.locator("video")
    await clip.evaluate(PLAYABLE)
    assert 5 < await clip.evaluate("v => v.duration") < 60  # pre-roll + thread + post-roll
    await owner.shot("08-events")

    # Manage: rename, then share with a friend.
    friend_email = await register(stack.url, "friend")
    await page.get_by_role("link", name="Cameras").click()
    await card.get_by_role("link", name="Manage").click()
    # The picture now (from the relay node analysing it), and a recording on request.
    await page.get_by_role("button", name="Snapshot").click()
    snapshot = page.locator("img.snapshot")
    await expect(snapshot).to_be_visible(timeout=10_000)
    assert await snapshot.evaluate("img => img.complete && img.naturalWidth") > 0
    await page.get_by_role("button", name="Record 1 min").click()
    await expect(page.locator(".recordings li[data-state=recording]")).to_have_count(1)
    await page.get_by_label("Camera name").fill("Front porch")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.locator(".camera-title")).to_have_text("Front porch")
    # Armed by default and analysed by the relay node; the owner disarms and arms it again.
    arming = page.locator(".arming")
    await expect(arming.locator(".analysis")).to_have_text("Armed · analysed")
    await arming.get_by_role("button", name="Disarm").click()
    await expect(arming.locator(".analysis")).to_have_text("Disarmed")
    await arming.get_by_role("button", name="Arm").click()
    await expect(arming.locator(".analysis")).to_have_text(re.compile(r"^Armed"))
    await page.get_by_label("Share with (email)").fill(friend_email)
    await page.get_by_role("button", name="Share", exact=True).click()
    share = page.locator(f".shares li[data-email='{friend_email}']")
    await expect(share).to_be_visible()
    await owner.shot("09-share")

    # The friend, on another phone, sees the camera (no managing) and watches it.
    friend = await Phone.open(browser, stack.url, tmp_path, "friend")
    await friend.sign_in(friend_email)
    shared = friend.page.locator(f"li.camera[data-device-id='{device_id}']")
    await expect(shared.locator(".camera-name")).to_have_text("Front porch")
    await expect(shared.locator(".badge")).to_have_text("Shared with you")
    await expect(shared.get_by_role("link", name="Manage")).to_have_count(0)
    await expect(shared).to_have_attribute("data-online", "true")
    await friend.shot("10-friend-cameras")
    await shared.get_by_role("link", name="Watch").click()
    assert await friend.playing() == "direct"
    await friend.expect_codec("H264", "H.264")
    await friend.shot("11-friend-live")

    # The owner stops sharing: the friend's live view ends at once, in plain words.
    await share.get_by_role("button", name="Remove").click()
    await page.locator("dialog#confirm").get_by_role("button", name="Stop sharing").click()
    await expect(share).to_have_count(0)
    await expect(friend.page.locator(".live-ended")).to_have_text(
        "Your access to this camera was removed.", timeout=10_000
    )
    await friend.shot("12-friend-access-removed")
    await friend.close()

    # The owner removes the camera: it leaves the list, and the camera is told to stop.
    await page.get_by_role("button", name="Remove camera").click()
    await page.locator("dialog#confirm").get_by_role("button", name="Remove").click()
    await expect(page.get_by_text("No cameras yet.")).to_be_visible()
    assert await wait_exit(cam, 15) == 3  # device_sim: removed from its account
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await owner.close()


@pytest.mark.timeout(240)
async def test_with_no_direct_path_the_live_view_falls_back_to_the_relay_by_itself(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    email = await register(stack.url, "natted")
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        login = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        ticket = await http.post(
            "/api/v1/onboarding",
            json={
                "device_name": "Garage",
                "camera_model": "SIM-1",
                "wifi_ssid": "Home",
                "wifi_password": "wifi-pass-456",
            },
            headers=headers,
        )
    assert ticket.status_code == 201, ticket.text
    png, state = tmp_path / "garage.png", tmp_path / "garage.json"
    png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
    device_id = await asyncio.to_thread(onboard_camera, png, state)
    cam = camera(state, BEHIND_NAT, stack.tmp / "garage.log")
    stack.processes.append(cam)

    phone = await Phone.open(browser, stack.url, tmp_path, "natted")
    page = phone.page
    await phone.sign_in(email)
    card = page.locator(f"li.camera[data-device-id='{device_id}']")
    await expect(card).to_have_attribute("data-online", "true", timeout=30_000)

    # Direct only: no candidate pair can work, and the page says so within its deadline.
    await page.goto(f"{stack.url}/#/live/{device_id}?mode=p2p")
    await expect(page.locator(".live-ended")).to_contain_text("direct connection", timeout=25_000)
    await expect(page.get_by_role("button", name="Watch again")).to_be_visible()
    await phone.shot("13-direct-impossible")

    # Auto: the direct attempt fails, the page ends it and asks for the relay by itself.
    started = time.monotonic()
    await page.get_by_role("radio", name="Auto").click()
    assert await phone.playing(timeout_s=40) == "relay"
    await expect(page.locator(".route")).to_have_text("Relay node")
    await expect(page.locator(".ttff")).to_contain_text("with the direct attempt")
    assert time.monotonic() - started < 30
    await phone.expect_codec("H264", "H.264")
    await phone.shot("14-relay-fallback")

    # The camera dies: the relay ends the view, and the page says why in plain words.
    cam.kill()
    await expect(page.locator(".live-ended")).to_have_text(
        "The camera went offline.", timeout=15_000
    )
    await expect(page.locator(".camera-head .dot")).to_have_class(re.compile(r"\boffline\b"))
    await phone.shot("15-camera-offline")
    await phone.close()


def jpeg(color: tuple[int, int, int]) -> str:
    picture = Image.new("RGB", (64, 48), color)
    out = io.BytesIO()
    picture.save(out, format="JPEG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.timeout(120)
async def test_the_event_feed_pages_filters_and_updates_one_row_per_thread_live(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    email = await register(stack.url, "events")
    relay = {"Authorization": f"Bearer {RELAY_ID}:{RELAY_SECRET}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as http:
        login = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        ticket = await http.post(
            "/api/v1/onboarding",
            json={"device_name": "Yard", "camera_model": "SIM-1", "wifi_ssid": "Home"},
            headers=headers,
        )
        _, public_key = camera_key()
        activated = await http.post(
            "/api/v1/devices/activate",
            json={
                "token": json.loads(ticket.json()["payload"])["t"],
                "device_uid": "cam-" + secrets.token_hex(8),
                "camera_model": "SIM-1",
                "firmware_version": "1.0.0",
                "public_key": public_key,
            },
        )
        assert activated.status_code == 201, activated.text
        device_id = activated.json()["device_id"]

        async def report(thread: str, kind: str, state: str, score: float, **extra: str) -> None:
            body = {
                "device_id": device_id,
                "thread_id": thread,
                "kind": kind,
                "state": state,
                "score": score,
                "started_at": extra.pop("started_at", datetime.now(UTC).isoformat()),
                **extra,
            }
            reply = await http.post("/api/v1/relays/events", json=body, headers=relay)
            assert reply.status_code == 200, reply.text

        # 25 finished threads from the last hour, 3 of them people.
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        for n in range(25):
            at = (hour_ago + timedelta(minutes=2 * n)).isoformat()
            kind = "person" if n % 10 == 3 else "motion"
            await report(f"old-{n:02d}", kind, "end", 0.5, started_at=at, ended_at=at)

        phone = await Phone.open(browser, stack.url, tmp_path, "events")
        page = phone.page
        await phone.sign_in(email)
        await page.get_by_role("link", name="Events").click()
        rows = page.locator(".events li.event")
        await expect(rows).to_have_count(20)
        await page.get_by_role("button", name="Load more").click()
        await expect(rows).to_have_count(25)
        await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
        await page.get_by_label("Kind").select_option("person")
        await expect(rows).to_have_count(3)
        await page.get_by_label("Kind").select_option("")
        await expect(rows).to_have_count(20)

        # A live thread: new, then an update with a better snapshot, then end; one row.
        started = datetime.now(UTC).isoformat()
        await report(
            "live-1", "vehicle", "new", 0.6, started_at=started, snapshot_jpeg=jpeg((200, 40, 40))
        )
        live = page.locator(".events li.event[data-thread-id='live-1']")
        await expect(live).to_have_attribute("data-state", "new")
        await expect(rows.first).to_have_attribute("data-thread-id", "live-1")
        await expect(live.locator(".badge.live")).to_have_text("happening now")
        await expect(live).to_have_attribute("data-snapshot", "loaded")
        await report(
            "live-1",
            "vehicle",
            "update",
            0.9,
            started_at=started,
            snapshot_jpeg=jpeg((40, 200, 40)),
        )
        await expect(live).to_contain_text("Confidence 90 %")
        await report(
            "live-1",
            "vehicle",
            "end",
            0.9,
            started_at=started,
            ended_at=datetime.now(UTC).isoformat(),
        )
        await expect(live).to_have_attribute("data-state", "end")
        await expect(live.locator(".badge.live")).to_have_count(0)
        await expect(rows).to_have_count(21)
        await phone.shot("16-events-feed")
        await phone.close()
