"""Live video end to end with real processes: cloud, redis-server, coturn, the simulator.

The test process itself is the viewer (``device_sim.viewer``), with host candidates on
loopback only; the whole suite runs in a loopback-only network namespace (``make test``).
"""

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from device_sim.viewer import Viewer, WatchError
from peer.network import use_host_addresses
from tests.conftest import PASSWORD, unique_email
from tests.servers import ROOT, cloud_process, coturn_server, redis_server, stop

TURN_SECRET = "e2e-turn-secret-" + secrets.token_hex(8)
SIM_ENV = {"ICE_HOST_ADDRESSES": "127.0.0.1"}


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


@dataclass
class Stack:
    url: str
    turn_port: int
    tmp: Path


def cloud_env(
    mongodb_url: str, tmp: Path, redis_url: str, turn_port: int, secret: str
) -> dict[str, str]:
    return {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": "video_" + secrets.token_hex(4),
        "REDIS_URL": redis_url,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
        "TURN_URLS": f"turn:127.0.0.1:{turn_port}?transport=udp",
        "TURN_SECRET": secret,
        "ONBOARDING_TICKETS_PER_HOUR": "1000",
    }


@pytest.fixture(scope="module")
def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("video")
    with (
        redis_server() as redis_url,
        coturn_server(TURN_SECRET, tmp / "coturn.log") as turn_port,
        cloud_process(
            cloud_env(mongodb_url, tmp, redis_url, turn_port, TURN_SECRET), tmp / "cloud.log"
        ) as url,
    ):
        yield Stack(url, turn_port, tmp)


class Owner:
    def __init__(self, url: str, email: str, headers: dict[str, str]) -> None:
        self.url, self.email, self.headers = url, email, headers

    @classmethod
    async def register(cls, url: str) -> "Owner":
        email = unique_email("owner")
        async with httpx.AsyncClient(base_url=url, timeout=15) as http:
            await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
            tokens = (
                await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            ).json()
        return cls(url, email, {"Authorization": f"Bearer {tokens['access_token']}"})

    async def qr_png(self, path: Path) -> None:
        body = {
            "device_name": "Garden",
            "camera_model": "SIM-1",
            "wifi_ssid": "Home",
            "wifi_password": "wifi-secret-77",
        }
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as http:
            ticket = await http.post("/api/v1/onboarding", json=body, headers=self.headers)
        assert ticket.status_code == 201, ticket.text
        path.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))

    async def online(self, count: int = 1, timeout: float = 30) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as http:
            while True:
                devices = (await http.get("/api/v1/devices", headers=self.headers)).json()[
                    "devices"
                ]
                if sum(bool(d["online"]) for d in devices) >= count:
                    return list(devices)
                assert time.monotonic() < deadline, (
                    f"{count} cameras did not come online: {devices}"
                )
                await asyncio.sleep(0.3)


def simulator(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "device_sim", "--log-level", "INFO", *args],
            cwd=ROOT,
            env={**os.environ, **SIM_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def onboarded_camera(stack: Stack, owner: Owner, name: str) -> Path:
    """The owner shows a QR code; the simulator scans the PNG and activates."""
    png, state = stack.tmp / f"{name}.png", stack.tmp / f"{name}.json"
    await owner.qr_png(png)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "device_sim", "onboard", "--qr", str(png), "--state", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert state.stat().st_mode & 0o777 == 0o600
    assert "wifi-secret-77" not in state.read_text()
    return state


@pytest.fixture
async def owner(stack: Stack) -> Owner:
    return await Owner.register(stack.url)


@pytest.mark.timeout(180)
async def test_a_new_user_onboards_by_qr_and_watches_peer_to_peer_and_through_turn(
    stack: Stack, owner: Owner
) -> None:
    state = await onboarded_camera(stack, owner, "garden")
    device_id = json.loads(state.read_text())["device_id"]
    camera = simulator(
        "run", "--state", str(state), "--size", "320x240", log=stack.tmp / "garden.log"
    )
    try:
        devices = await owner.online()
        assert devices[0]["id"] == device_id
        async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
            watch = await viewer.watch(device_id)
            assert watch.ttff_s is not None
            first = await watch.peer.first_frame(5)
            assert (first.width, first.height) == (320, 240)
            pair = watch.selected_pair()
            assert pair is not None
            assert pair["local"]["type"] == "host"
            assert pair["local"]["address"] == "127.0.0.1"
            frames = watch.frames
            await asyncio.sleep(1.0)
            assert watch.frames > frames  # still playing
            await watch.end()

            relayed = await viewer.watch(device_id, relay_only=True)
            pair = relayed.selected_pair()
            assert pair is not None
            assert pair["local"]["type"] == "relay"
            assert relayed.frames >= 1
            await relayed.end()
    finally:
        stop(camera)


@pytest.mark.timeout(180)
async def test_killing_the_camera_mid_stream_tells_the_viewer_and_a_restarted_one_plays_again(
    stack: Stack, owner: Owner
) -> None:
    state = await onboarded_camera(stack, owner, "porch")
    device_id = json.loads(state.read_text())["device_id"]
    log = stack.tmp / "porch.log"
    camera = simulator("run", "--state", str(state), "--size", "320x240", log=log)
    try:
        await owner.online()
        async with await Viewer.login(stack.url, owner.email, PASSWORD) as viewer:
            watch = await viewer.watch(device_id)
            camera.send_signal(signal.SIGKILL)
            camera.wait()
            assert await asyncio.wait_for(watch.ended, 10) == "device_offline"
            camera = simulator("run", "--state", str(state), "--size", "320x240", log=log)
            await owner.online()
            again = await viewer.watch(device_id)
            assert again.frames >= 1
            await again.end()
    finally:
        stop(camera)
    # A clean stop on SIGTERM: the simulator says so and exits 0.
    assert camera.returncode == 0, log.read_text()[-2000:]


@pytest.mark.timeout(180)
async def test_a_wrong_turn_secret_ends_the_session_with_a_clear_reason_in_time(
    mongodb_url: str, tmp_path: Path
) -> None:
    with (
        redis_server() as redis_url,
        coturn_server(TURN_SECRET, tmp_path / "coturn.log") as turn_port,
        cloud_process(
            cloud_env(mongodb_url, tmp_path, redis_url, turn_port, "not-the-turn-secret"),
            tmp_path / "cloud.log",
        ) as url,
    ):
        stack = Stack(url, turn_port, tmp_path)
        owner = await Owner.register(url)
        state = await onboarded_camera(stack, owner, "shed")
        device_id = json.loads(state.read_text())["device_id"]
        camera = simulator(
            "run", "--state", str(state), "--connect-timeout", "5", log=tmp_path / "shed.log"
        )
        try:
            await owner.online()
            async with await Viewer.login(url, owner.email, PASSWORD) as viewer:
                started = time.monotonic()
                with pytest.raises(WatchError) as failed:
                    await viewer.watch(
                        device_id, relay_only=True, connect_timeout_s=5, timeout_s=20
                    )
                assert failed.value.reason == "ice_failed"
                assert "relay" in str(failed.value)
                assert time.monotonic() - started < 15
        finally:
            stop(camera)


@pytest.mark.timeout(300)
async def test_a_fleet_of_200_cameras_connects_and_all_show_online(
    stack: Stack, owner: Owner
) -> None:
    log = stack.tmp / "fleet.log"
    with open(log, "ab") as out:
        fleet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "device_sim",
                "fleet",
                "--count",
                "200",
                "--cloud",
                stack.url,
                "--email",
                owner.email,
                "--password",
                PASSWORD,
                "--state-dir",
                str(stack.tmp / "fleet"),
                "--duration",
                "240",
            ],
            cwd=ROOT,
            env={**os.environ, **SIM_ENV},
            stdout=subprocess.PIPE,
            stderr=out,
        )
    try:
        devices = await owner.online(200, timeout=200)
        assert len(devices) == 200
        assert all(d["online"] for d in devices)
    finally:
        fleet.send_signal(signal.SIGINT)
        output, _ = fleet.communicate(timeout=60)
    summary = json.loads(output.decode().strip().splitlines()[-1])
    assert summary["cameras"] == summary["connected"] == 200
    assert summary["errors"] == 0
    assert fleet.returncode == 0
