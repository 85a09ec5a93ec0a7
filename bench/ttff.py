"""Time to first frame: from ``session.request`` to the first decoded frame at the viewer.

    .venv/bin/python bench/ttff.py [--sessions 20] [--keyframe-interval 250]

Starts a SecantusDB server, coturn (use-auth-secret, loopback), the cloud and one simulated
camera (640x480, 15 fps, a keyframe every 250 frames), then opens sessions one after another
from an in-process viewer (``device_sim.viewer``): peer to peer, then relay-only through
coturn, alternating so both see the same machine load. Host candidates are loopback only.
Targets on loopback: p50 <= 300 ms peer to peer, <= 800 ms through TURN.
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_sim.viewer import Viewer  # noqa: E402
from peer.network import use_host_addresses  # noqa: E402
from tests.servers import cloud_process, coturn_server, secantus_server, stop  # noqa: E402

PASSWORD = "Bench-password-42"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def prepare(url: str, tmp: Path) -> tuple[str, Path]:
    """Register an owner, show a QR code, let the simulator scan it; returns (email, state)."""
    email = f"bench.{secrets.token_hex(4)}@example.com"
    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        tokens = (
            await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        body = {
            "device_name": "Bench",
            "camera_model": "SIM-1",
            "wifi_ssid": "Bench",
            "wifi_password": "",
        }
        ticket = await http.post(
            "/api/v1/onboarding",
            json=body,
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    png, state = tmp / "qr.png", tmp / "camera.json"
    png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
    subprocess.run(
        [sys.executable, "-m", "device_sim", "onboard", "--qr", str(png), "--state", str(state)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return email, state


async def measure(url: str, email: str, device_id: str, sessions: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"peer to peer": [], "TURN (relay-only)": []}
    async with await Viewer.login(url, email, PASSWORD) as viewer:
        await (await viewer.watch(device_id)).end()  # warm-up: imports, codecs, first connections
        for _ in range(sessions):
            for label, relay_only in (("peer to peer", False), ("TURN (relay-only)", True)):
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions per route")
    parser.add_argument("--keyframe-interval", type=int, default=250)
    args = parser.parse_args()
    use_host_addresses(["127.0.0.1"])
    secret = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="vc-ttff-") as name:
        tmp = Path(name)
        with (
            secantus_server(tmp / "db") as mongodb_url,
            coturn_server(secret, tmp / "coturn.log") as turn_port,
            cloud_process(
                {
                    "MONGODB_URL": mongodb_url,
                    "JWT_SECRET": secrets.token_urlsafe(48),
                    "DATA_DIR": str(tmp),
                    "TURN_URLS": f"turn:127.0.0.1:{turn_port}?transport=udp",
                    "TURN_SECRET": secret,
                },
                tmp / "cloud.log",
            ) as url,
        ):
            email, state = await prepare(url, tmp)
            device_id = json.loads(state.read_text())["device_id"]
            with open(tmp / "camera.log", "ab") as log:
                camera = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "device_sim",
                        "run",
                        "--state",
                        str(state),
                        "--size",
                        "640x480",
                        "--fps",
                        "15",
                        "--keyframe-interval",
                        str(args.keyframe_interval),
                    ],
                    cwd=ROOT,
                    env={**os.environ, "ICE_HOST_ADDRESSES": "127.0.0.1"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                await asyncio.sleep(2.0)  # the camera connects
                started = time.monotonic()
                results = await measure(url, email, device_id, args.sessions)
                elapsed = time.monotonic() - started
            finally:
                stop(camera)
    targets = {"peer to peer": 300.0, "TURN (relay-only)": 800.0}
    print(
        f"time to first frame, {datetime.date.today()}, {os.cpu_count()} CPUs, "
        f"640x480@15 fps VP8, keyframe interval {args.keyframe_interval} frames, "
        f"{args.sessions} sessions per route ({elapsed:.0f} s)"
    )
    print(f"{'route':<20}{'p50 ms':>8}{'p95 ms':>8}{'min':>8}{'max':>8}{'mean':>8}   target p50")
    for label, values in results.items():
        p50 = percentile(values, 50)
        verdict = "PASS" if p50 <= targets[label] else "MISS"
        row = [p50, percentile(values, 95), min(values), max(values), statistics.mean(values)]
        cells = "".join(f"{v:>8.0f}" for v in row)
        print(f"{label:<20}{cells}   <= {targets[label]:.0f}  {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
