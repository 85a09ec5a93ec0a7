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

import httpx
from pymongo import MongoClient

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
    with MongoClient(mongodb_url) as client:
        relays = client[DATABASE]["relays"]
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions per route")
    parser.add_argument(
        "--keyframe-interval", type=int, default=250, help="synthetic cameras, in frames"
    )
    parser.add_argument("--joiners", type=int, default=20, help="late joiners through the relay")
    parser.add_argument("--rtsp-keyframe-s", type=float, default=4.0, help="the stand-in's GOP")
    args = parser.parse_args()
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
