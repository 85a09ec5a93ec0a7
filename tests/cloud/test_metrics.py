"""GET /metrics in process: who may read it, route templates as labels, counters that move.
The full set of metrics against real processes is tests/e2e/test_metrics.py."""

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request

from cloud import metrics
from tests.conftest import MakeAccount


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(app: Starlette) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_are_open_to_loopback_only_in_development(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/metrics")).status_code == 404  # client is 10.x.x.x
    await scrape(app)


def request(headers: dict[str, str], host: str = "203.0.113.9") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": (host, 1234)})


def test_a_token_or_a_port_of_its_own_guards_the_public_port() -> None:
    token = secrets.token_urlsafe(16)
    assert metrics.allowed(request({"Authorization": f"Bearer {token}"}), token, False, True)
    assert not metrics.allowed(request({"Authorization": "Bearer nope"}), token, False, True)
    assert not metrics.allowed(request({}, "127.0.0.1"), token, False, False)
    assert not metrics.allowed(request({}, "127.0.0.1"), "", True, False)  # METRICS_PORT
    assert not metrics.allowed(request({}, "127.0.0.1"), "", False, True)  # production
    assert metrics.allowed(request({}, "127.0.0.1"), "", False, False)
    assert not metrics.allowed(request({}), "", False, False)


async def test_requests_are_counted_by_route_template_and_failed_sign_ins(
    app: Starlette, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account()
    before = await scrape(app)
    device = "6650f0c0e4b0a1b2c3d4e5f6"
    for _ in range(3):
        await client.get(f"/api/v1/devices/{device}", headers=account.headers)
    await client.post("/api/v1/auth/login", json={"email": account.email, "password": "wrong-1"})
    after = await scrape(app)
    key = (
        "visionconnect_http_requests_total",
        (("method", "GET"), ("route", "/api/v1/devices/{device_id}"), ("status", "404")),
    )
    assert after[key] - before.get(key, 0) == 3
    assert not any(device in str(labels) for _, labels in after)
    failures = ("visionconnect_sign_in_failures_total", ())
    assert after[failures] - before.get(failures, 0) == 1
    assert ("visionconnect_cameras_online", ()) in after


def test_multiprocess_mode_sums_the_processes_of_one_directory(tmp_path: Path) -> None:
    """Two processes with PROMETHEUS_MULTIPROC_DIR: either one's scrape holds both's counts."""
    code = (
        "import sys; from cloud import metrics;"
        "metrics.SIGN_IN_FAILURES.inc(int(sys.argv[1]));"
        "metrics.CONNECTIONS.labels('device').inc();"
        "sys.stdout.write(metrics.exposition().decode())"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(n)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
        for n in (2, 3)
    ]
    last = samples(outs[-1])
    assert last[("visionconnect_sign_in_failures_total", ())] == 5
    assert last[("visionconnect_signaling_connections", (("role", "device"),))] == 1  # livesum
    assert ("visionconnect_cameras_online", ()) in last


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or os.stat("/proc/self/fd").st_size == 0,
    reason="no /proc, or a kernel before 6.2 (its /proc/self/fd has no size): listed instead",
)
def test_open_descriptors_are_counted_without_listing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """process_open_fds moves with the descriptors held, and a scrape never lists
    /proc/self/fd (a listing costs a scrape ~0.7 µs per descriptor: one per camera)."""

    def open_fds() -> float:
        families = list(text_string_to_metric_families(metrics.exposition().decode()))
        found = [s.value for f in families if f.name == "process_open_fds" for s in f.samples]
        assert len(found) == 1, found  # prometheus-client's own collector is replaced
        return found[0]

    before = open_fds()
    held = [socket.socket() for _ in range(50)]
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "listdir", lambda path: pytest.fail(f"listed {path}"))
            after = open_fds()
    finally:
        for s in held:
            s.close()
    assert after - before == 50
    assert ("process_cpu_seconds_total", ()) in samples(metrics.exposition().decode())
