"""Metrics and JSON logs end to end, with real processes: the cloud (``python -m cloud``,
``LOG_FORMAT=json``), redis-server, a relay node (YOLO on ONNX Runtime, ``METRICS_PORT``), a
simulated camera with a motion episode, a loopback push service and webhook endpoint.

One journey (onboarding by QR, a wrong password then sign-ins, a share, a live session direct
and one through the relay node, an event with its pushes and webhooks, the event stream with
``?access_token=``) moves every metric of ``/metrics`` on the cloud and the relay node, read
with prometheus-client's parser; then every log line of the cloud and the relay node is a JSON
object, the journey's request id is on its lines, and no line of any process holds a password,
the Wi-Fi password, an access or refresh token, the onboarding token or a secret.
"""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from device_sim.viewer import Viewer
from peer.network import use_host_addresses
from tests.cloud.notify.receivers import PushService, WebhookReceiver
from tests.conftest import PASSWORD, unique_email
from tests.e2e.cluster import start_redis
from tests.e2e.test_live_video import SIM_ENV
from tests.servers import ROOT, free_port, relay_process, start_cloud, stop

RELAY_SECRET = "relay-secret-" + secrets.token_hex(8)
WIFI_PASSWORD = "wifi-secret-" + secrets.token_hex(4)
ONNX = ROOT / ".venv" / "models" / "yolo11n-random.onnx"
REQUEST_ID = "metrics-journey-" + secrets.token_hex(4)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module", autouse=True)
def loopback_candidates() -> None:
    use_host_addresses(["127.0.0.1"])


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have)
    )


@dataclass
class Stack:
    url: str
    relay_metrics: str
    tmp: Path
    redis: subprocess.Popen[bytes]
    jwt_secret: str

    async def scrape(self) -> Samples:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{self.url}/metrics")
            assert r.status_code == 200, r.text
            return parse(r.text)

    async def scrape_relay(self) -> Samples:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{self.relay_metrics}/metrics")
            assert r.status_code == 200, r.text
            return parse(r.text)


@pytest.fixture
def stack(tmp_path: Path, mongodb_url: str) -> Iterator[Stack]:
    assert ONNX.is_file(), "scripts/install-yolo makes the test models"
    redis_port = free_port()
    redis = start_redis(redis_port)
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    jwt_secret = secrets.token_urlsafe(48)
    env = {
        **os.environ,
        "PUBLIC_URL": url,
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": "metrics_" + secrets.token_hex(4),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "JWT_SECRET": jwt_secret,
        "DATA_DIR": str(tmp_path),
        "RELAY_SECRET": RELAY_SECRET,
        "PRESENCE_TTL_S": "3",
        "NOTIFY_RETRY_SCHEDULE_S": "0.5,1",
        "NOTIFY_COOLDOWN_S": "0",
        "LOG_FORMAT": "json",
    }
    cloud = start_cloud(env, tmp_path / "cloud.log", port, "--host", "127.0.0.1")
    relay = relay_process(
        {
            "CLOUD_URL": url,
            "RELAY_ID": "relay-metrics",
            "RELAY_SECRET": RELAY_SECRET,
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "YOLO_MODEL": str(ONNX),
            "ANALYSIS_FPS": "5",
            "DETECTIONS_PER_S": "1",  # below the frames with motion: some are refused
            "METRICS_PORT": str(metrics_port),
            "LOG_FORMAT": "json",
        },
        tmp_path / "relay.log",
    )
    try:
        yield Stack(url, f"http://127.0.0.1:{metrics_port}", tmp_path, redis, jwt_secret)
    finally:
        stop(relay)
        stop(cloud)
        stop(redis)


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[PushService, WebhookReceiver]]:
    push, hooks = PushService(), WebhookReceiver()
    await push.start()
    await hooks.start()
    try:
        yield push, hooks
    finally:
        await push.stop()
        await hooks.stop()


@pytest.mark.timeout(240)
async def test_a_journey_moves_every_metric_and_logs_json_without_secrets(
    stack: Stack, receivers: tuple[PushService, WebhookReceiver]
) -> None:
    push, hooks = receivers
    secrets_seen: list[str] = [PASSWORD, WIFI_PASSWORD, RELAY_SECRET, stack.jwt_secret]
    before = await stack.scrape()
    http = httpx.AsyncClient(base_url=stack.url, timeout=20)
    try:
        # Accounts: a wrong password first (a failed sign-in), then the sign-ins.
        owner_email, friend_email = unique_email("owner"), unique_email("friend")
        for email in (owner_email, friend_email):
            r = await http.post(
                "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert r.status_code == 201, r.text
        wrong = await http.post(
            "/api/v1/auth/login", json={"email": owner_email, "password": "Wrong-password-1"}
        )
        assert wrong.status_code == 401
        tokens = {}
        for email in (owner_email, friend_email):
            r = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            tokens[email] = r.json()
            secrets_seen += [r.json()["access_token"], r.json()["refresh_token"]]
        owner = {"Authorization": f"Bearer {tokens[owner_email]['access_token']}"}
        friend = {"Authorization": f"Bearer {tokens[friend_email]['access_token']}"}
        owner_id = (await http.get("/api/v1/me", headers=owner)).json()["id"]

        # Onboarding by QR: the Wi-Fi password goes into the code only.
        ticket = await http.post(
            "/api/v1/onboarding",
            json={
                "device_name": "Porch",
                "camera_model": "SIM-1",
                "wifi_ssid": "Home",
                "wifi_password": WIFI_PASSWORD,
            },
            headers={**owner, "X-Request-ID": REQUEST_ID},
        )
        assert ticket.status_code == 201, ticket.text
        assert ticket.headers["x-request-id"] == REQUEST_ID
        secrets_seen.append(json.loads(ticket.json()["payload"])["t"])
        png, state = stack.tmp / "porch.png", stack.tmp / "porch.json"
        import base64

        png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
        sim_env = {**os.environ, **SIM_ENV, "LOG_FORMAT": "json"}
        onboard = subprocess.run(
            [
                sys.executable,
                "-m",
                "device_sim",
                "onboard",
                "--qr",
                str(png),
                "--state",
                str(state),
            ],
            cwd=ROOT,
            env=sim_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert onboard.returncode == 0, onboard.stderr
        device_id = json.loads(state.read_text())["device_id"]

        # Notifications: a push subscription and two webhooks (one answers 500 once).
        _browser, subscription = push.subscribe()
        r = await http.post("/api/v1/push/subscriptions", json=subscription, headers=owner)
        assert r.status_code == 201, r.text
        hooks.failures["flaky"] = 1
        for hook in ("steady", "flaky"):
            r = await http.post("/api/v1/webhooks", json={"url": hooks.url(hook)}, headers=owner)
            assert r.status_code == 201, r.text
            if "secret" in r.json():
                secrets_seen.append(r.json()["secret"])

        # The camera, with a motion episode from 10 s after it starts, for 8 s.
        log = open(stack.tmp / "camera.log", "ab")  # noqa: SIM115
        camera = subprocess.Popen(
            [sys.executable, "-m", "device_sim", "--log-level", "INFO", "run", "--state",
             str(state), "--size", "320x240", "--motion", "10:8"],
            cwd=ROOT, env=sim_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            async def online() -> bool:
                got = await stack.scrape()
                return value(got, "visionconnect_cameras_online") == 1

            await until(online, 30, "the camera did not come online")
            connected = await stack.scrape()
            for role in ("device", "relay"):
                assert value(connected, "visionconnect_signaling_connections", role=role) >= 1

            async def analysed() -> bool:
                got = await stack.scrape()
                return value(got, "visionconnect_analysis_cameras", state="active") == 1

            await until(analysed, 30, "the relay node did not get the camera")

            # Live: direct, then through the relay node (a viewer of the relay: one upstream).
            async with await Viewer.login(stack.url, owner_email, PASSWORD) as viewer:
                secrets_seen += [viewer.access_token, viewer.refresh_token]
                watch = await viewer.watch(device_id)
                assert watch.ttff_s is not None
                await watch.end()
                relayed = await viewer.watch(device_id, mode="relay")
                relay_now = await stack.scrape_relay()
                assert value(relay_now, "visionconnect_relay_viewers") == 1
                assert value(relay_now, "visionconnect_relay_upstreams") == 1
                await relayed.end()

            # The share, and the event stream authenticated by ?access_token=.
            r = await http.post(
                f"/api/v1/devices/{device_id}/shares",
                json={"email": friend_email, "role": "viewer"},
                headers=owner,
            )
            assert r.status_code in (200, 201), r.text
            friend_token = tokens[friend_email]["access_token"]
            async with http.stream(
                "GET", "/api/v1/stream", params={"access_token": friend_token}
            ) as stream:
                assert stream.status_code == 200
                async for _ in stream.aiter_bytes():
                    break
            r = await http.post("/api/v1/push/test", headers=owner)
            assert r.status_code in (200, 202), r.text

            # The motion episode: an event thread, its pushes and webhooks.
            async def ended() -> Any:
                r = await http.get("/api/v1/events", params={"device_id": device_id}, headers=owner)
                events = r.json()["events"]
                return [e for e in events if e["state"] == "end"]

            await until(ended, 60, "no event thread ended")

            async def delivered() -> bool:
                got = await stack.scrape()
                return (
                    value(got, "visionconnect_notify_deliveries_total", channel="webhook",
                          outcome="delivered") >= 2
                    and value(got, "visionconnect_notify_deliveries_total", channel="push",
                              outcome="delivered") >= 1
                )  # fmt: skip

            await until(delivered, 30, "the pushes and webhooks were not delivered")
        finally:
            stop(camera)
            log.close()

        after = await stack.scrape()
        relay = await stack.scrape_relay()

        def moved(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert moved("visionconnect_sign_in_failures_total") == 1
        assert moved("visionconnect_sessions_started_total", route="p2p") >= 1
        assert moved("visionconnect_sessions_started_total", route="relay") >= 1
        assert moved("visionconnect_sessions_ended_total", route="p2p") >= 1
        assert moved("visionconnect_sessions_ended_total", route="relay") >= 1
        assert moved("visionconnect_time_to_first_frame_seconds_count") >= 2
        assert moved("visionconnect_signaling_latency_seconds_count") >= 2
        assert moved("visionconnect_event_threads_total", kind="motion") >= 1
        assert (
            moved("visionconnect_notify_deliveries_total", channel="webhook", outcome="failed") == 1
        )
        assert (
            moved(
                "visionconnect_http_requests_total",
                route="/api/v1/devices/{device_id}/shares",
                method="POST",
                status="201",
            )
            + moved(
                "visionconnect_http_requests_total",
                route="/api/v1/devices/{device_id}/shares",
                method="POST",
                status="200",
            )
            == 1
        )
        onboarding = moved(
            "visionconnect_http_requests_total", route="/api/v1/onboarding", method="POST"
        )
        assert onboarding == 1
        assert moved("visionconnect_http_request_duration_seconds_count") >= onboarding
        assert not any(device_id in str(labels) for _, labels in after)  # templates only

        assert total(relay, "visionconnect_relay_frames_analysed_total") > 0
        assert total(relay, "visionconnect_relay_detections_total") > 0
        assert total(relay, "visionconnect_relay_budget_refusals_total") > 0
        assert total(relay, "visionconnect_relay_event_reports_total", outcome="sent") >= 2
        assert total(relay, "visionconnect_relay_loop_lag_seconds_count") > 0
        assert value(relay, "visionconnect_relay_viewers") == 0

        # The bus goes away: publishes fail and are counted.
        stop(stack.redis)
        friend_id = (await http.get("/api/v1/me", headers=friend)).json()["id"]
        await http.delete(f"/api/v1/devices/{device_id}/shares/{friend_id}", headers=owner)

        async def bus_errors() -> bool:
            got = await stack.scrape()
            return total(got, "visionconnect_bus_publish_errors_total") > total(
                before, "visionconnect_bus_publish_errors_total"
            )

        await until(bus_errors, 30, "no bus publish error counted")
    finally:
        await http.aclose()

    check_logs(stack.tmp, secrets_seen, owner_id, onboard.stdout + onboard.stderr)


def check_logs(tmp: Path, secrets_seen: list[str], owner_id: str, onboard_output: str) -> None:
    cloud_lines = (tmp / "cloud.log").read_text().splitlines()
    relay_lines = (tmp / "relay.log").read_text().splitlines()
    records = []
    for name, lines in (("cloud", cloud_lines), ("relay", relay_lines)):
        assert lines, name
        for line in lines:
            record = json.loads(line)  # every line: one JSON object
            assert {"time", "level", "logger", "message"} <= set(record), (name, line)
            records.append(record)
    journey = [r for r in records if r.get("request_id") == REQUEST_ID]
    assert any(r["logger"] == "cloud.access" and r.get("user_id") == owner_id for r in journey)
    everything = "\n".join(
        [*cloud_lines, *relay_lines, (tmp / "camera.log").read_text(), onboard_output]
    )
    for secret in secrets_seen:
        assert secret
        assert secret not in everything, f"a secret is in the logs: {secret[:6]}…"
