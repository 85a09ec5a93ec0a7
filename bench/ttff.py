"""Time to first frame: from ``session.request`` to the first decoded frame at the viewer.

    .venv/bin/python bench/ttff.py [--sessions 20] [--keyframe-interval 250] [--joiners 20]
        [--rtsp-keyframe-s 4]

Starts a SecantusDB server, coturn (use-auth-secret, loopback), the cloud, a relay node
(``python -m relay``, ``YOLO_MODEL=none``) and, one after another, three cameras, each a
``python -m device_sim run`` process onboarded by scanning the QR code from
``/onboarding``:

1. ``--codec vp8`` 640x480 at 15 fps, a keyframe every 250 frames: the rows of sessions 1-3
   ("peer to peer", "TURN (relay-only)");
2. ``--codec h264`` (the simulator's default), the same picture and keyframe interval;
3. ``--source rtsp://...``: the agent bridging the RTSP stand-in (``tests/rtsp.py``, 1280x720
   at 15 fps, H.264 Main ~2 Mbit/s, a keyframe every 4 s), passed through.

For each camera an in-process viewer (``device_sim.viewer``, decoding) opens ``--sessions``
sessions peer to peer and as many relay-only through coturn, alternating so both see the
same machine load; every session checks its selected candidate pair (host for P2P, relay
for TURN). For the two H.264 cameras, one viewer then watches through the relay node
(``mode="relay"``: the relay opens the camera's upstream) and keeps watching while
``--joiners`` sessions join the same camera through the relay one after another, each after
a pause that lands it somewhere in the camera's GOP. The relay already has the upstream, so
a joiner waits for signaling, ICE, DTLS and its first keyframe, which the relay's fan-out
takes from the GOP it caches (``peer.gop``: the frames since the latest keyframe, paced out
over at most 250 ms), asking the camera (PLI) only when it has none. Meanwhile the first
viewer's decoded frames are sampled every 20 ms: its frame rate and longest gap over the
joins say whether joiners disturb it. Host candidates are loopback only. Targets on
loopback: p50 <= 300 ms peer to peer, <= 800 ms through TURN; none for the late joiner
(tests/e2e/test_relay.py bounds one at 1 s).

``--browser`` measures the browser app instead (``--sessions`` per route, default 20)::

    scripts/hermetic .venv/bin/python bench/ttff.py --browser [--sessions 20] [--before REV]

On the browser tests' network (``tests/web/network.py``: Chromium in a namespace of its
own, a phone on its own network, joined to the cloud's by a veth; so it must run inside the
loopback-only namespace of ``scripts/hermetic``), it starts SecantusDB, the cloud and a
relay node on the veth address and one camera (``device_sim run``, H.264 320x240, host
candidates ``127.0.0.1`` and the veth address: a camera on the phone's LAN). Debian's
headless Chromium, with stock flags (mDNS host candidates), signs in to the app and, for
each session, clicks "Watch" on the camera list (mode auto: the direct path) and, once that
plays, "End" and then "Relay" (a session through the relay node, which keeps its upstream
from the camera between viewers). Each measures from the click's event time to the first
video frame composited for the new stream (``requestVideoFrameCallback``, hooked on the
video element's ``srcObject`` by an init script), checks the route the page shows, and
also reads the page's own time to first frame (from its ``session.request``). With
``--before REV``, a second browser context gets ``cloud/web/static/js/live.js`` and the
modules split from it (``SESSION_MODULES``) as they were at git revision REV (served
through Playwright's request routing; the cloud is unchanged) and the two alternate
session by session, so before and after see the same machine load.
Target: p50 <= 300 ms on both routes.
"""

import argparse
import asyncio
import base64
import datetime
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient
from pymongo.collection import Collection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import peer.codecs  # noqa: E402, F401  (aiortc then offers H.264 Main: the stand-in streams it)
from device_sim.viewer import Viewer, Watch  # noqa: E402
from peer.network import use_host_addresses  # noqa: E402
from tests.rtsp import rtsp_camera  # noqa: E402
from tests.servers import (  # noqa: E402
    cloud_process,
    coturn_server,
    relay_process,
    secantus_server,
    stop,
)

PASSWORD = "Bench-password-42"
DATABASE = "ttff"
RELAY_ID = "bench-relay"
P2P, TURN, LATE = "peer to peer", "TURN (relay-only)", "relay node, late joiner"
TARGETS = {P2P: 300.0, TURN: 800.0}
ONLINE_TIMEOUT_S = 30.0
GOLDEN = 0.618034  # join offsets spread evenly over a GOP
BROWSER_TARGET_MS = 300.0
CHROMIUM = "/usr/bin/chromium"
SESSION_MODULES = ("live.js", "codecs.js", "sessionstats.js")  # what --before swaps
# Stock Chromium: host candidates behind mDNS names, no loopback candidates (nothing in this
# layout needs them: the phone reaches the camera and the relay on the veth address).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Click -> first composited frame of the stream set next on a <video>: the click's event time
# and a requestVideoFrameCallback registered whenever a stream is attached.
FIRST_FRAME_HOOK = """(() => {
  const marks = (window.__ttff = { click: null, frame: null });
  document.addEventListener("click", (event) => {
    marks.click = event.timeStamp;
    marks.frame = null;
  }, true);
  const property = Object.getOwnPropertyDescriptor(HTMLMediaElement.prototype, "srcObject");
  Object.defineProperty(HTMLMediaElement.prototype, "srcObject", {
    configurable: true,
    enumerable: property.enumerable,
    get() { return property.get.call(this); },
    set(stream) {
      property.set.call(this, stream);
      if (!stream || !("requestVideoFrameCallback" in this)) return;
      this.requestVideoFrameCallback(() => {
        if (marks.click !== null && marks.frame === null) marks.frame = performance.now();
      });
    },
  });
})();"""
DIRECT, RELAYED = "direct (Watch)", "relay node (Relay)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Camera:
    """One camera: its label, ``device_sim run`` arguments (the RTSP stand-in's URL is added
    once it runs), its GOP in seconds, whether late joiners come through the relay."""

    label: str
    args: list[str]
    gop_s: float
    relay: bool
    rtsp: bool = False
    device_id: str = ""
    state: Path = field(default_factory=Path)


@dataclass
class FirstViewer:
    """The relayed viewer watching while others join: its ttff and frame sampling."""

    ttff_ms: float
    frames: int = 0
    seconds: float = 0.0
    longest_gap_ms: float = 0.0


async def register(url: str) -> tuple[str, str]:
    """A new owner; returns (email, access token)."""
    email = f"bench.{secrets.token_hex(4)}@example.com"
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        tokens = (
            await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
    return email, str(tokens["access_token"])


async def onboard(url: str, token: str, tmp: Path, name: str) -> tuple[str, Path]:
    """Show a QR code, let the simulator scan it; returns (device id, state file)."""
    body = {"device_name": name, "camera_model": "SIM-1", "wifi_ssid": "Bench", "wifi_password": ""}
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        ticket = await http.post(
            "/api/v1/onboarding", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    png, state = tmp / f"qr-{name}.png", tmp / f"camera-{name}.json"
    png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
    subprocess.run(
        [sys.executable, "-m", "device_sim", "onboard", "--qr", str(png), "--state", str(state)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return json.loads(state.read_text())["device_id"], state


async def wait_online(url: str, token: str, device_id: str) -> None:
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        while True:
            listed = await http.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
            devices = listed.json()["devices"]
            if any(d["id"] == device_id and d["online"] for d in devices):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"camera {device_id} did not come online")
            await asyncio.sleep(0.2)


def wait_relay_online(mongodb_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongodb_url) as client:
        relays: Collection[dict[str, Any]] = client[DATABASE]["relays"]
        while relays.find_one({"relay_id": RELAY_ID, "online": True}) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay node did not register:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


async def direct_and_turn(viewer: Viewer, device_id: str, sessions: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {P2P: [], TURN: []}
    for _ in range(sessions):
        for label, relay_only in ((P2P, False), (TURN, True)):
            watch = await viewer.watch(device_id, relay_only=relay_only)
            assert watch.ttff_s is not None
            pair = watch.selected_pair()
            expected = "relay" if relay_only else "host"
            if pair is None or pair["local"]["type"] != expected:
                raise RuntimeError(f"{label}: unexpected candidate pair {pair}")
            results[label].append(watch.ttff_s * 1000)
            await watch.end()
            await asyncio.sleep(0.2)
    return results


async def sample(watch: Watch, first: FirstViewer, done: asyncio.Event) -> None:
    """Sample ``watch``'s decoded frames every 20 ms until ``done``: rate and longest gap."""
    start = last_change = time.monotonic()
    frames0 = last = watch.frames
    while not done.is_set():
        await asyncio.sleep(0.02)
        now = time.monotonic()
        if watch.frames != last:
            last, last_change = watch.frames, now
        first.longest_gap_ms = max(first.longest_gap_ms, (now - last_change) * 1000)
    first.frames = watch.frames - frames0
    first.seconds = time.monotonic() - start


async def late_joiners(
    viewer: Viewer, device_id: str, joiners: int, gop_s: float
) -> tuple[list[float], FirstViewer]:
    watching = await viewer.watch(device_id, mode="relay", timeout_s=30)
    if watching.route != "relay":
        raise RuntimeError(f"the first viewer's route is {watching.route}, not the relay")
    assert watching.ttff_s is not None
    first = FirstViewer(watching.ttff_s * 1000)
    await asyncio.sleep(1.0)  # the relay's upstream settles
    done = asyncio.Event()
    sampler = asyncio.create_task(sample(watching, first, done))
    times: list[float] = []
    try:
        for n in range(joiners):
            await asyncio.sleep(0.5 + min(gop_s, 4.0) * ((n * GOLDEN) % 1.0))
            watch = await viewer.watch(device_id, mode="relay", timeout_s=30)
            if watch.route != "relay":
                raise RuntimeError(f"a joiner's route is {watch.route}, not the relay")
            assert watch.ttff_s is not None
            times.append(watch.ttff_s * 1000)
            await watch.end()
    finally:
        done.set()
        await sampler
        await watching.end()
    return times, first


async def measure(
    url: str, email: str, token: str, camera: Camera, sessions: int, joiners: int
) -> tuple[dict[str, list[float]], FirstViewer | None]:
    await wait_online(url, token, camera.device_id)
    async with await Viewer.login(url, email, PASSWORD) as viewer:
        await (await viewer.watch(camera.device_id)).end()  # warm-up: imports, codecs, encoder
        results = await direct_and_turn(viewer, camera.device_id, sessions)
        first = None
        if camera.relay and joiners:
            results[LATE], first = await late_joiners(
                viewer, camera.device_id, joiners, camera.gop_s
            )
    return results, first


def camera_process(camera: Camera, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "device_sim", "run", "--state", str(camera.state), *camera.args],
            cwd=ROOT,
            env={**os.environ, "ICE_HOST_ADDRESSES": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass
class BrowserRun:
    """One version of the page: its label, and per route the click -> frame times and the
    page's own times (session.request -> frame), in ms."""

    label: str
    modules: dict[str, str]  # the session's modules (live.js and its own) to serve instead
    click: dict[str, list[float]] = field(default_factory=lambda: {DIRECT: [], RELAYED: []})
    page: dict[str, list[float]] = field(default_factory=lambda: {DIRECT: [], RELAYED: []})


async def browser_session(page: Any, click: Any, route: str, run: BrowserRun, name: str) -> None:
    """Click, wait for the first frame and the page's "playing"; record both times."""
    await page.evaluate("() => { window.__ttff.click = null; window.__ttff.frame = null; }")
    await click.click()
    await page.wait_for_function("() => window.__ttff.frame !== null", timeout=30_000)
    marks = await page.evaluate("() => window.__ttff")
    await page.locator(".video-box[data-phase=playing]").wait_for(timeout=30_000)
    shown = await page.locator(".route").get_attribute("data-route")
    if shown != route:
        raise RuntimeError(f"{run.label}: {name} played through {shown!r}, not {route!r}")
    own = await page.locator(".ttff").get_attribute("data-ms")
    run.click[name].append(float(marks["frame"]) - float(marks["click"]))
    run.page[name].append(float(own or "nan"))


async def browser_measure(
    browser: Any, url: str, email: str, device_id: str, run: BrowserRun
) -> Any:
    """A signed-in phone (browser context) for ``run``; returns its page."""
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    await context.add_init_script(FIRST_FRAME_HOOK)
    for name, body in run.modules.items():

        async def serve(route: Any, body: str = body) -> None:
            await route.fulfill(status=200, content_type="text/javascript", body=body)

        await context.route(f"**/static/js/{name}", serve)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    await page.goto(url)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    online = f"li.camera[data-device-id='{device_id}'][data-online=true]"
    await page.locator(online).wait_for(timeout=30_000)
    return page


async def browser_round(page: Any, device_id: str, run: BrowserRun | None) -> None:
    """Watch (direct), End, Relay, back to the list; ``run`` None: a warm-up."""
    scratch = BrowserRun("warm-up", {})
    target = run or scratch
    card = page.locator(f"li.camera[data-device-id='{device_id}'][data-online=true]")
    await card.wait_for()
    await browser_session(page, card.get_by_role("link", name="Watch"), "direct", target, DIRECT)
    await page.get_by_role("button", name="End").click()
    await page.locator(".video-box[data-phase=ended]").wait_for()
    relay = page.get_by_role("radio", name="Relay")
    await browser_session(page, relay, "relay", target, RELAYED)
    await page.locator("a.back").click()  # back to the camera list
    await asyncio.sleep(0.3)  # the sessions end; the relay keeps its upstream for a while


def session_modules(rev: str) -> dict[str, str]:
    """live.js and the modules split from it (a26b184), as they were at ``rev``; one
    missing there (before the split) is served as it is now, which that live.js never asks
    for."""
    found = {}
    for name in SESSION_MODULES:
        shown = subprocess.run(
            ["git", "show", f"{rev}:cloud/web/static/js/{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            found[name] = shown.stdout
    if "live.js" not in found:
        sys.exit(f"bench/ttff.py --before {rev}: no cloud/web/static/js/live.js there")
    return found


async def browser_main(sessions: int, before: str | None) -> None:
    from playwright.async_api import async_playwright

    from tests.web.network import HOST_ADDRESS, phone_network, unavailable
    from tests.web.stack import camera as camera_process_on
    from tests.web.stack import cloud_at, relay_node

    reason = unavailable()
    if reason is not None:
        sys.exit(f"bench/ttff.py --browser {reason}: scripts/hermetic .venv/bin/python ...")
    runs = [BrowserRun("current live.js", {})]
    if before is not None:
        runs.insert(0, BrowserRun(f"live.js at {before}", session_modules(before)))
    relay_secret = secrets.token_urlsafe(24)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vc-ttff-browser-") as name, ExitStack() as stack:
        tmp = Path(name)
        phone = stack.enter_context(phone_network())
        mongodb_url = stack.enter_context(secantus_server(tmp / "db"))
        env = {
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": DATABASE,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": str(tmp),
            "RELAY_SECRET": relay_secret,
        }
        url = stack.enter_context(cloud_at(HOST_ADDRESS, env, tmp / "cloud.log"))
        addresses = ["127.0.0.1", HOST_ADDRESS]
        relay = stack.enter_context(
            relay_node(url, RELAY_ID, relay_secret, addresses, tmp / "relay.log")
        )
        wait_relay_online(mongodb_url, relay, tmp / "relay.log")
        email, token = await register(url)
        device_id, state = await onboard(url, token, tmp, "browser")
        process = camera_process_on(state, addresses, tmp / "camera.log", "--fps", "15")
        stack.callback(stop, process)
        await wait_online(url, token, device_id)
        async with async_playwright() as playwright:
            launcher = phone.wrap(CHROMIUM, tmp)
            browser = await playwright.chromium.launch(
                executable_path=launcher, args=CHROMIUM_FLAGS
            )
            try:
                pages = [await browser_measure(browser, url, email, device_id, r) for r in runs]
                for page in pages:
                    await browser_round(page, device_id, None)
                for n in range(sessions):
                    for run, page in zip(runs, pages, strict=True):
                        await browser_round(page, device_id, run)
                    print(f"  {n + 1}/{sessions}", end="\r", flush=True)
                print()
            finally:
                await browser.close()
    elapsed = time.monotonic() - started

    print(
        f"browser time to first frame (Watch click -> first composited frame), "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, Chromium, "
        f"{sessions} sessions per route and version, alternating ({elapsed:.0f} s)"
    )
    print(
        f"{'live.js':<22}{'route':<21}{'p50 ms':>7}{'p95':>7}{'min':>7}{'max':>7}{'mean':>7}"
        f"{'page p50':>10}  target"
    )
    for run in runs:
        for route, values in run.click.items():
            p50 = percentile(values, 50)
            cells = [p50, percentile(values, 95), min(values), max(values)]
            cells.append(statistics.mean(values))
            verdict = "PASS" if p50 <= BROWSER_TARGET_MS else "MISS"
            text = "".join(f"{v:>7.0f}" for v in cells)
            own = percentile(run.page[route], 50)
            print(
                f"{run.label:<22}{route:<21}{text}{own:>10.0f}  "
                f"p50 <= {BROWSER_TARGET_MS:.0f}  {verdict}"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--browser", action="store_true", help="the browser app in headless Chromium"
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        help="--browser: also measure live.js as it was at this git revision",
    )
    parser.add_argument("--sessions", type=int, default=20, help="sessions per route")
    parser.add_argument(
        "--keyframe-interval", type=int, default=250, help="synthetic cameras, in frames"
    )
    parser.add_argument("--joiners", type=int, default=20, help="late joiners through the relay")
    parser.add_argument("--rtsp-keyframe-s", type=float, default=4.0, help="the stand-in's GOP")
    args = parser.parse_args()
    if args.browser:
        await browser_main(args.sessions, args.before)
        return
    use_host_addresses(["127.0.0.1"])
    kfi = str(args.keyframe_interval)
    synthetic = ["--size", "640x480", "--fps", "15", "--keyframe-interval", kfi]
    synthetic_gop_s = args.keyframe_interval / 15
    cameras = [
        Camera("VP8 640x480 synthetic", ["--codec", "vp8", *synthetic], synthetic_gop_s, False),
        Camera("H.264 640x480 synthetic", ["--codec", "h264", *synthetic], synthetic_gop_s, True),
        Camera("H.264 1280x720 RTSP passthrough", [], args.rtsp_keyframe_s, True, rtsp=True),
    ]
    secret, relay_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    results: dict[str, dict[str, list[float]]] = {}
    firsts: dict[str, FirstViewer] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vc-ttff-") as name, ExitStack() as stack:
        tmp = Path(name)
        mongodb_url = stack.enter_context(secantus_server(tmp / "db"))
        turn_port = stack.enter_context(coturn_server(secret, tmp / "coturn.log"))
        url = stack.enter_context(
            cloud_process(
                {
                    "MONGODB_URL": mongodb_url,
                    "MONGODB_DATABASE": DATABASE,
                    "JWT_SECRET": secrets.token_urlsafe(48),
                    "DATA_DIR": str(tmp),
                    "TURN_URLS": f"turn:127.0.0.1:{turn_port}?transport=udp",
                    "TURN_SECRET": secret,
                    "RELAY_SECRET": relay_secret,
                },
                tmp / "cloud.log",
            )
        )
        relay_env = {
            "CLOUD_URL": url,
            "RELAY_ID": RELAY_ID,
            "RELAY_SECRET": relay_secret,
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "YOLO_MODEL": "none",
        }
        relay = relay_process(relay_env, tmp / "relay.log")
        stack.callback(stop, relay)
        wait_relay_online(mongodb_url, relay, tmp / "relay.log")
        email, token = await register(url)
        for n, camera in enumerate(cameras):
            camera.device_id, camera.state = await onboard(url, token, tmp, f"cam{n}")
        for n, camera in enumerate(cameras):
            with ExitStack() as running:
                if camera.rtsp:
                    ip_camera = running.enter_context(
                        rtsp_camera(
                            size=(1280, 720),
                            fps=15,
                            bitrate_kbps=2000,
                            keyframe_interval_s=args.rtsp_keyframe_s,
                            profile="main",
                        )
                    )
                    camera.args = ["--source", ip_camera.url, *camera.args]
                process = camera_process(camera, tmp / f"cam{n}.log")
                running.callback(stop, process)
                print(f"  {camera.label} ...", flush=True)
                results[camera.label], first = await measure(
                    url, email, token, camera, args.sessions, args.joiners
                )
                if first is not None:
                    firsts[camera.label] = first
    elapsed = time.monotonic() - started

    print(
        f"time to first frame, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"{args.sessions} sessions per route, {args.joiners} late joiners, synthetic keyframe "
        f"interval {args.keyframe_interval} frames, RTSP GOP {args.rtsp_keyframe_s:g} s "
        f"({elapsed:.0f} s)"
    )
    print(
        f"{'camera':<33}{'route':<24}{'p50 ms':>7}{'p95':>7}{'min':>7}{'max':>7}{'mean':>7}  target"
    )
    for label, rows in results.items():
        for route, values in rows.items():
            p50 = percentile(values, 50)
            cells = [p50, percentile(values, 95), min(values), max(values)]
            cells.append(statistics.mean(values))
            target = ""
            if route in TARGETS:
                verdict = "PASS" if p50 <= TARGETS[route] else "MISS"
                target = f"p50 <= {TARGETS[route]:.0f}  {verdict}"
            text = "".join(f"{v:>7.0f}" for v in cells)
            print(f"{label:<33}{route:<24}{text}  {target}")
    for label, first in firsts.items():
        print(
            f"{label}: first relayed viewer (opens the relay's upstream) {first.ttff_ms:.0f} ms; "
            f"while the joiners came it decoded {first.frames / first.seconds:.1f} fps, "
            f"longest gap between frames {first.longest_gap_ms:.0f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
