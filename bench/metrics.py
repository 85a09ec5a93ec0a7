"""The cost of a ``/metrics`` scrape with thousands of cameras connected to one cloud process.

    .venv/bin/python bench/metrics.py [--cameras N] [--scrapes S] [--rate R]

A fresh ``python -m cloud`` (fd limit raised, its database a SecantusDB process) is scraped
S times at R scrapes/s with no camera connected, then N idle cameras connect (bench/signaling.py's
clients: 4 processes holding the sockets) and it is scraped again. The cloud's CPU comes from
/proc/<pid>/stat (user + system) over each scrape window; the same window without scrapes just
before is the idle baseline (pings, presence refresh), subtracted. Target (issue 15 item 1):
<= 10 ms of the cloud's CPU per scrape with 10,000 cameras. The scrape also proves the gauge:
``visionconnect_cameras_online`` equals the cameras held. Every process is stopped by its PID.
"""

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import signaling as sig  # bench/signaling.py: its cloud and camera clients

from tests.servers import secantus_server

TARGET_MS = 10.0


def scrape_window(pid: int, url: str, count: int, rate: float) -> dict[str, float]:
    """CPU of ``pid`` over ``count`` scrapes at ``rate``/s, and over as long a window without."""
    window = count / rate
    idle_before = sig.cpu_s(pid)
    time.sleep(window)
    idle = sig.cpu_s(pid) - idle_before
    sizes, online, latencies = [], 0.0, []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/metrics").raise_for_status()  # warm: the route table, the connection
        start, cpu_start = time.monotonic(), sig.cpu_s(pid)
        for n in range(count):
            due = start + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            t = time.perf_counter()
            response = http.get("/metrics").raise_for_status()
            latencies.append(time.perf_counter() - t)
            sizes.append(len(response.content))
        busy = sig.cpu_s(pid) - cpu_start
        elapsed = time.monotonic() - start
    for family in text_string_to_metric_families(response.text):
        if family.name == "visionconnect_cameras_online":
            online = family.samples[0].value
    series = sum(1 for line in response.text.splitlines() if line and not line.startswith("#"))
    per_scrape = (busy - idle * elapsed / window) / count
    latencies.sort()
    return {
        "ms": 1000 * per_scrape,
        "raw_ms": 1000 * busy / count,
        "idle_pct": 100 * idle / window,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "bytes": sum(sizes) / len(sizes),
        "series": series,
        "online": online,
    }


def row(label: str, r: dict[str, float]) -> str:
    return (
        f"{label:<14}{r['online']:>8.0f}{r['series']:>8.0f}{r['bytes'] / 1024:>9.1f}"
        f"{r['idle_pct']:>9.1f}{r['raw_ms']:>9.2f}{r['ms']:>9.2f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=10_000, help="idle cameras to connect")
    parser.add_argument("--scrapes", type=int, default=300, help="scrapes per window")
    parser.add_argument("--rate", type=float, default=10, help="scrapes per second")
    parser.add_argument("--connect-rate", type=float, default=400, help="new connections/s")
    args = parser.parse_args()
    print(f"Metrics scrape — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {args.scrapes} "
          f"scrapes at {args.rate:g}/s per window", flush=True)  # fmt: skip
    started, (machine, own) = time.monotonic(), sig.machine_cpu()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp, ExitStack() as stack:
        (Path(tmp) / "db").mkdir()
        db = stack.enter_context(secantus_server(Path(tmp) / "db"))
        env = sig.cloud_env(db, Path(tmp), 600)
        cloud, url = sig.start_cloud(stack, env, Path(tmp) / "cloud.log", "websockets-sansio")
        key = Ed25519PrivateKey.generate()
        _, ids = sig.owners_and_devices(url, env, args.cameras, key)
        head = ["", "online", "series", "KiB", "idle %", "raw ms", "net ms", "p50 ms", "p99 ms"]
        print(
            f"{head[0]:<14}"
            + "".join(f"{h:>9}" if i > 1 else f"{h:>8}" for i, h in enumerate(head) if i)
        )
        sig.wait_idle(cloud.pid)
        print(row("0 cameras", scrape_window(cloud.pid, url, args.scrapes, args.rate)), flush=True)
        ws_url = url.replace("http", "ws", 1) + "/ws/v1/device"
        results, _pipes = sig.spawn_clients(
            stack, ws_url, ids, sig.raw(key), args.connect_rate, sig.CLIENTS
        )
        held = sum(r["ok"] for r in results)
        sig.wait_idle(cloud.pid)
        loaded = scrape_window(cloud.pid, url, args.scrapes, args.rate)
        print(row(f"{held} cameras", loaded), flush=True)
        verdict = loaded["online"] == held and loaded["ms"] <= TARGET_MS
        print(f"target <= {TARGET_MS:g} ms of the cloud's CPU per scrape with {held} cameras: "
              f"{loaded['ms']:.2f} ms, {'PASS' if verdict else 'MISS'}")  # fmt: skip
        cloud.kill()  # thousands of connections: no drain needed, the database is thrown away
        cloud.wait()
    machine_end, own_end = sig.machine_cpu()
    wall, others = time.monotonic() - started, max(0.0, (machine_end - machine) - (own_end - own))
    print(f"other processes on the machine used {others:.1f} CPU-s in {wall:.0f} s "
          f"({others / wall:.0%} of one core: clean only when near 0)")  # fmt: skip


if __name__ == "__main__":
    main()
