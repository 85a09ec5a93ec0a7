"""Notifications (issue 14): enqueue-to-delivery latency of Web Push and webhooks from the
durable outbox, at a steady rate of event reports.

    flock /tmp/vc-heavy.lock scripts/hermetic .venv/bin/python bench/notify.py
        [--rate 50] [--seconds 30] [--users 20] [--subs-per-user 10] [--instances 1]
        [--as-relay-node]

Real processes: SecantusDB, the cloud (``python -m cloud``; with ``--instances 2``, two of
them on one redis-server, both running outbox workers on the one queue) and, in this
process, a push service speaking RFC 8030 that verifies each VAPID JWT and decrypts each
message with the subscription's private key (tests/cloud/notify/receivers.py) and a webhook
receiver; both answer at once. ``--users`` users each own one camera and have
``--subs-per-user`` push subscriptions (default 20 x 10 = 200) and one webhook (20). This
process plays the relay node: it connects to ``/ws/v1/relay`` and posts ``--rate`` event
reports a second for ``--seconds`` (``POST /relays/events``), round-robin over the cameras:
each thread a ``new`` report, then its ``end`` report 1 s later (so half the reports are
each). Every report of a camera fans out to its owner's subscriptions (a ``new`` and an
``end`` push per thread; ``NOTIFY_COOLDOWN_S=0`` so no ``new`` is held back) and webhook:
with the defaults, 11 deliveries per report, 550 a second, in 2 outbox notifications.
With ``--as-relay-node`` each report carries an ``Idempotency-Key`` and each ``new`` a
480x270 JPEG (12 KB), as relay/ sends them, so the receipt and the snapshot are written
too and the pushes carry an image URL.

Figures:
- enqueue to delivery (the target, p95 <= 1 s): ``delivered_at - created_at`` of every
  delivery, as the outbox records them (created when the report is handled; delivered
  when its notification's round is recorded, after every delivery of that round has its
  answer; millisecond clock of one machine);
- report to receipt: from just before this process posts the report to the receiver's
  handler getting the decrypted push (or the webhook): what a user would see, including the
  report's own handling;
- counts: deliveries expected, made, delivered, received; duplicates received;
- CPU (% of one core) of the cloud process(es) and SecantusDB over the run.
"""

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cloud.notify.receivers import PushService, WebhookReceiver
from tests.conftest import PASSWORD
from tests.e2e.cluster import start_redis
from tests.peers import connect
from tests.servers import cpu_s, free_port, secantus_process, start_cloud, stop

RELAY_SECRET = "bench-relay-secret"
RELAY = {"Authorization": f"Bearer relay-bench:{RELAY_SECRET}"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<34} (none)"
    ms = [v * 1000 for v in values]
    return (
        f"{name:<34} n={len(ms):>6}  p50 {pct(ms, 0.5):7.1f}  p95 {pct(ms, 0.95):7.1f}  "
        f"p99 {pct(ms, 0.99):7.1f}  max {max(ms):7.1f}  mean {statistics.fmean(ms):7.1f} ms"
    )


def snapshot_b64() -> str:
    """A JPEG as a relay node attaches to a ``new`` (480 wide, quality 70: relay/events.py)."""
    import base64

    import cv2
    import numpy as np

    picture = np.tile(np.linspace(40, 200, 480, dtype=np.uint8), (270, 1))
    picture = cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(picture, (180, 60), (260, 250), (0, 140, 255), -1)
    noise = np.random.default_rng(1).integers(0, 24, picture.shape, dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.add(picture, noise), [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


async def user_with_camera(http: httpx.AsyncClient, n: int) -> tuple[dict[str, str], str]:
    email = f"bench{n}.{secrets.token_hex(3)}@example.com"
    await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    tokens = (
        await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    ).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    ticket = await http.post(
        "/api/v1/onboarding",
        json={
            "device_name": f"Cam {n}",
            "camera_model": "VC-100",
            "wifi_ssid": "Home",
            "wifi_password": "",
        },
        headers=headers,
    )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from device_sim.identity import public_key_b64

    activated = await http.post(
        "/api/v1/devices/activate",
        json={
            "token": json.loads(ticket.json()["payload"])["t"],
            "device_uid": "bench-" + secrets.token_hex(6),
            "camera_model": "VC-100",
            "firmware_version": "1.0",
            "public_key": public_key_b64(Ed25519PrivateKey.generate()),
        },
    )
    assert activated.status_code == 201, activated.text
    return headers, activated.json()["device_id"]


async def run(args: argparse.Namespace, urls: list[str], pids: dict[str, int]) -> dict[str, Any]:
    push, hooks = PushService(), WebhookReceiver()
    await push.start()
    await hooks.start()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = [httpx.AsyncClient(base_url=u, timeout=30, limits=limits) for u in urls]
    http = clients[0]
    cameras: list[str] = []
    for n in range(args.users):
        headers, device_id = await user_with_camera(http, n)
        cameras.append(device_id)
        for _ in range(args.subs_per_user):
            _, subscription = push.subscribe()
            r = await http.post("/api/v1/push/subscriptions", json=subscription, headers=headers)
            assert r.status_code == 201, r.text
        r = await http.post("/api/v1/webhooks", json={"url": hooks.url(f"u{n}")}, headers=headers)
        assert r.status_code == 201, r.text
    relays = []
    for u in urls:
        relay = await connect(u.replace("http", "ws"), "/ws/v1/relay", RELAY["Authorization"][7:])
        assert (await relay.recv())["type"] == "welcome"
        relays.append(relay)

    async def heartbeat() -> None:  # a relay node that reports no load goes stale in 30 s
        while True:
            for relay in relays:
                await relay.send({"type": "relay.load", "load": 0.1, "sessions": 0})
            await asyncio.sleep(5)

    beating = asyncio.create_task(heartbeat())
    sent_at: dict[tuple[str, str], float] = {}  # (event id, state) -> just before the POST
    failures: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    snapshot = snapshot_b64() if args.as_relay_node else None

    async def report(i: int, device_id: str, thread: str, state: str, started: str) -> str:
        body = {
            "device_id": device_id,
            "thread_id": thread,
            "kind": "person",
            "state": state,
            "score": 0.8,
            "started_at": started,
            **({"ended_at": datetime.now(UTC).isoformat()} if state == "end" else {}),
            **({"snapshot_jpeg": snapshot} if snapshot and state == "new" else {}),
        }
        headers = dict(RELAY)
        if args.as_relay_node:
            headers["Idempotency-Key"] = f"{thread}-{state}-{secrets.token_hex(6)}"
        at = time.time()
        r = await clients[i % len(clients)].post(
            "/api/v1/relays/events", json=body, headers=headers
        )
        if r.status_code != 200:
            failures[f"HTTP {r.status_code}"] += 1
            return ""
        event_id: str = r.json()["id"]
        sent_at[(event_id, state)] = at
        return event_id

    async def thread(i: int) -> None:
        device_id = cameras[i % len(cameras)]
        started = datetime.now(UTC).isoformat()
        await report(i, device_id, f"b{i}", "new", started)
        await asyncio.sleep(1.0)
        await report(i, device_id, f"b{i}", "end", started)

    cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
    begun = time.monotonic()
    threads = int(args.rate * args.seconds / 2)  # each thread: two reports
    interval = 2.0 / args.rate
    for i in range(threads):
        due = begun + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(thread(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    posted = time.monotonic() - begun
    expected = len(sent_at) * (args.subs_per_user + 1)
    deadline = time.monotonic() + 60
    while len(push.messages) + len(hooks.hits) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    wall = time.monotonic() - begun
    cpu = {name: (cpu_s(pid) - cpu0[name]) / wall * 100 for name, pid in pids.items()}
    beating.cancel()
    for relay in relays:
        await relay.socket.close()
    for client in clients:
        await client.aclose()
    await push.stop()
    await hooks.stop()

    received_push = [
        m.at - sent_at[(m.payload["event_id"], m.payload["state"])]
        for m in push.messages
        if (m.payload["event_id"], m.payload["state"]) in sent_at
    ]
    received_hook = []
    for hit in hooks.hits:
        body = json.loads(hit.body)
        key = (body["data"]["id"], body["type"].removeprefix("event."))
        if key in sent_at:
            received_hook.append(hit.at - sent_at[key])
    ids = Counter(h.headers["webhook-id"] for h in hooks.hits)
    pushes = Counter((m.browser, m.payload["event_id"], m.payload["state"]) for m in push.messages)
    return {
        "reports": len(sent_at),
        "report_failures": dict(failures),
        "posting_s": posted,
        "expected": expected,
        "received_push": received_push,
        "received_hook": received_hook,
        "duplicates": sum(c - 1 for c in ids.values()) + sum(c - 1 for c in pushes.values()),
        "refused": push.refused[:5],
        "cpu": cpu,
    }


def outbox_figures(mongodb_url: str, database: str) -> dict[str, Any]:
    with MongoClient(mongodb_url, tz_aware=True) as client:
        docs = list(
            client[database]["notify_outbox"].find(
                {},
                {
                    "channel": 1,
                    "created_at": 1,
                    "deliveries.status": 1,
                    "deliveries.delivered_at": 1,
                    "deliveries.attempts": 1,
                },
            )
        )
    latency: dict[str, list[float]] = {"push": [], "webhook": []}
    statuses: Counter[str] = Counter()
    retried = made = 0
    for doc in docs:
        for delivery in doc["deliveries"]:
            made += 1
            statuses[delivery["status"]] += 1
            retried += len(delivery.get("attempts", [])) > 1
            if delivery.get("delivered_at"):
                latency[doc["channel"]].append(
                    (delivery["delivered_at"] - doc["created_at"]).total_seconds()
                )
    return {
        "made": made,
        "notifications": len(docs),
        "statuses": dict(statuses),
        "retried": retried,
        **latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="event reports per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--subs-per-user", type=int, default=10)
    parser.add_argument("--instances", type=int, default=1, choices=(1, 2))
    parser.add_argument(
        "--as-relay-node",
        action="store_true",
        help="report as relay/ does: an Idempotency-Key on every report, a snapshot on new",
    )
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-notify-{secrets.token_hex(3)}"
    tmp.mkdir(parents=True)
    database = "bench_notify_" + secrets.token_hex(3)
    with secantus_process(tmp / "db") as (mongodb_url, db_process):
        env = {
            **os.environ,
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": database,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": str(tmp),
            "RELAY_SECRET": RELAY_SECRET,
            "NOTIFY_COOLDOWN_S": "0",
            "LOGIN_MAX_ATTEMPTS_PER_ADDRESS": "100000",
            "ONBOARDING_TICKETS_PER_HOUR": "100000",
        }
        redis = None
        if args.instances == 2:
            port = free_port()
            redis = start_redis(port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        processes = []
        try:
            urls = []
            for n in range(args.instances):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                log = tmp / f"cloud{n}.log"
                processes.append(start_cloud({**env, "PUBLIC_URL": url}, log, port))
                urls.append(url)
            pids = {f"cloud{n}": p.pid for n, p in enumerate(processes)}
            pids["secantusdb"] = db_process.pid
            pids["this process (receivers, load)"] = os.getpid()
            result = asyncio.run(run(args, urls, pids))
            figures = outbox_figures(mongodb_url, database)
        finally:
            for process in processes:
                stop(process)
            if redis is not None:
                stop(redis)
    print(
        f"\nnotify bench: {args.rate:g} reports/s for {args.seconds:g} s, {args.users} users x "
        f"({args.subs_per_user} push subscriptions + 1 webhook) = "
        f"{args.users * args.subs_per_user} subscriptions, {args.users} webhooks; "
        f"{args.instances} cloud instance(s)"
        + (
            "; reports as a relay node (Idempotency-Key, snapshot on new)"
            if args.as_relay_node
            else ""
        )
    )
    print(
        f"reports posted {result['reports']} in {result['posting_s']:.1f} s "
        f"(failed: {result['report_failures'] or 'none'}); deliveries expected "
        f"{result['expected']}, made {figures['made']} {figures['statuses']} in "
        f"{figures['notifications']} notifications, "
        f"retried {figures['retried']}"
    )
    received = len(result["received_push"]) + len(result["received_hook"])
    print(
        f"received {received} ({len(result['received_push'])} pushes decrypted, "
        f"{len(result['received_hook'])} webhooks); duplicates {result['duplicates']}; "
        f"push service refusals {result['refused'] or 'none'}"
    )
    print(summary("enqueue -> delivered, push", figures["push"]))
    print(summary("enqueue -> delivered, webhook", figures["webhook"]))
    print(summary("enqueue -> delivered, all", figures["push"] + figures["webhook"]))
    print(summary("report -> received, push", result["received_push"]))
    print(summary("report -> received, webhook", result["received_hook"]))
    print("CPU % of one core: " + ", ".join(f"{k} {v:.0f}" for k, v in result["cpu"].items()))
    p95 = pct(figures["push"] + figures["webhook"], 0.95) if figures["made"] else float("inf")
    print(f"target enqueue -> delivered p95 <= 1 s: {'PASS' if p95 <= 1.0 else 'MISS'}")


if __name__ == "__main__":
    main()
