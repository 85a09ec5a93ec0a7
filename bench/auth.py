"""Accounts and activation: login and activation latency, and event-loop lag under login load.

    .venv/bin/python bench/auth.py [--seconds N] [--rate R] [--activations N]

Starts a SecantusDB server, then runs the cloud in-process under uvicorn on this process's
event loop, beside a probe that sleeps 5 ms and records how late it wakes up. The load comes
from a separate process (its own loop): logins open-loop on a fixed schedule against
pre-registered accounts, then onboarding tickets and their activations at a steady rate.
Latency is measured from each request's scheduled time, so a slow server cannot hide its
queueing by delaying the next request.
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud.app import create_app
from cloud.settings import Settings
from tests.servers import free_port, secantus_server

PASSWORD = "Bench-horse-battery-42"
ACCOUNTS = 20
TICKETS_PER_ACCOUNT = 30  # the cloud's cap on onboarding codes per user per hour
MODEL = "Bench Cam 1"
PROBE_INTERVAL_S = 0.005
LOGIN_P95_TARGET_MS = 100.0
LAG_TARGET_MS = 10.0

# --- load generator (runs in its own process) ---------------------------------------------


def public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def open_loop(count: int, rate: float, send: Any) -> list[tuple[float, int]]:
    """Send ``count`` requests at ``rate``/s on a fixed schedule; (latency ms, status) each."""
    start = time.monotonic() + 0.1

    async def one(i: int) -> tuple[float, int]:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        response = await send(i)
        return (time.monotonic() - due) * 1000, response.status_code

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def drive(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        emails = [f"bench{i}.{secrets.token_hex(4)}@example.com" for i in range(ACCOUNTS)]
        tokens = []
        for email in emails:  # setup, not measured; the logins also warm the connections
            credentials = {"email": email, "password": PASSWORD}
            (await client.post("/api/v1/auth/register", json=credentials)).raise_for_status()
            signed_in = await client.post("/api/v1/auth/login", json=credentials)
            tokens.append(signed_in.raise_for_status().json()["access_token"])

        def login(i: int) -> Any:
            credentials = {"email": emails[i % ACCOUNTS], "password": PASSWORD}
            return client.post("/api/v1/auth/login", json=credentials)

        login_window = [time.monotonic()]
        logins = await open_loop(round(args.seconds * args.rate), args.rate, login)
        login_window.append(time.monotonic())

        qr_tokens = []
        for i in range(args.activations):
            ticket = await client.post(
                "/api/v1/onboarding",
                headers={"Authorization": f"Bearer {tokens[i % ACCOUNTS]}"},
                json={"device_name": f"Cam {i}", "camera_model": MODEL, "wifi_ssid": "bench"},
            )
            qr_tokens.append(json.loads(ticket.raise_for_status().json()["payload"])["t"])
        keys = [public_key() for _ in qr_tokens]
        uid = secrets.token_hex(4)

        def activate(i: int) -> Any:
            body = {
                "token": qr_tokens[i],
                "device_uid": f"bench-{uid}-{i:04d}",
                "camera_model": MODEL,
                "firmware_version": "1.0.0",
                "public_key": keys[i],
            }
            return client.post("/api/v1/devices/activate", json=body)

        activation_window = [time.monotonic()]
        activations = await open_loop(args.activations, args.activation_rate, activate)
        activation_window.append(time.monotonic())
    return {
        "logins": logins,
        "activations": activations,
        "login_window": login_window,
        "activation_window": activation_window,
    }


def load_process(conn: Connection, base_url: str, args: argparse.Namespace) -> None:
    try:
        conn.send(asyncio.run(drive(base_url, args)))
    except Exception as exc:
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


# --- server side: the cloud and the lag probe share this process's loop ---------------------


async def probe(samples: list[tuple[float, float]]) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(PROBE_INTERVAL_S)
        woke = time.monotonic()
        samples.append((woke, (woke - before - PROBE_INTERVAL_S) * 1000))


async def serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when the app's startup fails; keep the loop alive
        raise RuntimeError("the cloud did not start (see the error above)") from None


async def serve_and_load(args: argparse.Namespace, mongodb_url: str, data_dir: Path) -> dict:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = Settings(
        public_url=base_url,
        data_dir=data_dir,
        mongodb_url=mongodb_url,
        database_name="bench_" + secrets.token_hex(4),
        jwt_secret=secrets.token_urlsafe(48),
        login_max_attempts_per_address=10**6,
        activation_max_failures_per_address=10**6,
    )
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(serve(server))
    samples: list[tuple[float, float]] = []
    probing = asyncio.create_task(probe(samples))
    mp = multiprocessing.get_context("spawn")
    receiver, sender = mp.Pipe(duplex=False)
    loader = mp.Process(target=load_process, args=(sender, base_url, args))
    try:
        while not server.started:
            if serving.done():
                await serving  # raises why it stopped
            await asyncio.sleep(0.05)
        loader.start()
        while not receiver.poll():
            if not loader.is_alive() and not receiver.poll():
                raise RuntimeError("the load generator exited without a result")
            await asyncio.sleep(0.1)
        result: dict = receiver.recv()
    finally:
        if loader.pid is not None:
            loader.join(timeout=10)
            if loader.is_alive():
                loader.terminate()
                loader.join()
        probing.cancel()
        if not serving.done():
            server.should_exit = True
            await serving
    if "error" in result:
        raise RuntimeError(f"load generator failed: {result['error']}")
    for phase in ("login", "activation"):
        start, end = result.pop(f"{phase}_window")
        result[f"{phase}_lag"] = [lag for at, lag in samples if start <= at <= end]
    return result


# --- report --------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


def row(name: str, values: list[float], target: tuple[str, float] | None = None) -> str:
    s = stats(values)
    cells = "".join(f"{s[k]:>9.1f}" for k in ("p50", "p95", "p99", "max"))
    verdict = ""
    if target is not None:
        key, limit = target
        verdict = f"  {key} <= {limit:g} ms  {'PASS' if s[key] <= limit else 'MISS'}"
    return f"{name:<28}{cells}{verdict}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this script and its children)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    own = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return machine, sum(r.ru_utime + r.ru_stime for r in own)


def report(args: argparse.Namespace, result: dict, wall: float, others: float) -> None:
    logins = [ms for ms, status in result["logins"] if status == 200]
    activations = [ms for ms, status in result["activations"] if status == 201]
    failed = len(result["logins"]) - len(logins), len(result["activations"]) - len(activations)
    print(f"\nAccounts and activation — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {sys.version.split()[0]}")
    print(
        f"load: {len(result['logins'])} logins at {args.rate:g}/s open loop over "
        f"{ACCOUNTS} accounts; {len(result['activations'])} activations at "
        f"{args.activation_rate:g}/s; failed requests: {failed[0]} logins, {failed[1]} activations"
    )
    print(
        f"other processes on the machine used {others:.1f} CPU-s during the {wall:.0f} s run"
        f" ({others / wall:.0%} of one core; figures are only clean when this is near 0)"
    )
    print(f"\n{'(ms)':<28}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  target")
    print(row("login latency", logins, ("p95", LOGIN_P95_TARGET_MS)))
    print(row("activation latency", activations))
    print(row("loop lag during logins", result["login_lag"], ("max", LAG_TARGET_MS)))
    print(row("loop lag during activations", result["activation_lag"], ("max", LAG_TARGET_MS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="login phase length")
    parser.add_argument("--rate", type=float, default=20, help="logins per second")
    parser.add_argument("--activations", type=int, default=100, help="tickets to activate")
    parser.add_argument("--activation-rate", type=float, default=10, help="activations/s")
    args = parser.parse_args()
    if not 2 <= args.activations <= ACCOUNTS * TICKETS_PER_ACCOUNT:
        parser.error(f"--activations must be between 2 and {ACCOUNTS * TICKETS_PER_ACCOUNT}")
    started, (machine, own) = time.monotonic(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        storage = Path(tmp) / "db"
        storage.mkdir()
        with secantus_server(storage) as mongodb_url:
            result = asyncio.run(serve_and_load(args, mongodb_url, Path(tmp) / "data"))
    machine_end, own_end = cpu_seconds()
    others = max(0.0, (machine_end - machine) - (own_end - own))
    report(args, result, time.monotonic() - started, others)


if __name__ == "__main__":
    main()
