"""Signaling: idle camera connections per cloud process, and relay latency under load.

    .venv/bin/python bench/signaling.py [--cameras N] [--pairs K] [--rate R] [--seconds S]
                                        [--only connections|latency] [--presence-ttl T]

(a) connections: for sockets served directly and through ASGI (``--sockets``), a
fresh ``python -m cloud`` process (fd limit raised) takes 200 warm-up camera connections,
then N more from 4 client processes ramping at --connect-rate; RSS comes from /proc once
the process is idle.
(b) latency: K viewer/camera pairs with established sessions; viewers send ``session.ice``
open loop at R/s in total and cameras echo each one back. The load process stamps every
candidate with time.monotonic_ns(), so both one-way legs are measured on one clock.
Every process started here is stopped by its PID, also on failure.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import websockets
from bson import ObjectId
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_sim.identity import assertion, public_key_b64
from tests import servers
from tests.servers import free_port, redis_server, secantus_server, stop

PUBLIC = "http://bench.local"  # every instance's PUBLIC_URL: the audience of assertions
PASSWORD = "Bench-horse-battery-42"
SOCKETS = ("direct", "asgi")  # python -m cloud --sockets
WARM, PER_OWNER, CLIENTS = 200, 500, 4  # warm-up connections, devices per owner, processes
CONN_TARGET, KIB_TARGET = 10_000, 20.0
P99_TARGET_MS = {"same": 5.0, "cross": 10.0}
WS_OPTIONS: dict[str, Any] = {"compression": None, "ping_interval": None, "proxy": None}
SPAWN = multiprocessing.get_context("spawn")


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sched_s(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread."""
    run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(run) / 1e9, int(wait) / 1e9


def machine_cpu() -> tuple[float, float]:
    """(busy CPU-s of the machine, CPU-s of this script and its waited-for children)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return machine, sum(r.ru_utime + r.ru_stime for r in own)


def start_cloud(
    stack: ExitStack, env: dict[str, str], log: Path, ws: str, sockets: str = "direct"
) -> tuple[Any, str]:
    """``python -m cloud --ws WS --sockets SOCKETS`` with the fd limit raised;
    (process, base URL) once ready."""
    port = free_port()
    args = ["--ws", ws, "--sockets", sockets]
    full = {**os.environ, **env}
    process = servers.start_cloud(full, log, port, *args, preexec_fn=raise_fd_limit)
    stack.callback(stop, process)
    return process, f"http://127.0.0.1:{port}"


def cloud_env(db_url: str, tmp: Path, presence_ttl: int, redis: str | None = None) -> dict:
    env = {"PUBLIC_URL": PUBLIC, "MONGODB_URL": db_url, "DATA_DIR": str(tmp)}
    env |= {"MONGODB_DATABASE": "bench_" + secrets.token_hex(4), "REDIS_URL": redis or ""}
    env |= {"JWT_SECRET": secrets.token_urlsafe(48), "PRESENCE_TTL_S": str(presence_ttl)}
    return env | {"LOGIN_MAX_ATTEMPTS_PER_ADDRESS": "1000000"}


def owners_and_devices(url: str, env: dict, count: int, key: Ed25519PrivateKey) -> tuple:
    """Register ceil(count / PER_OWNER) owners through the API; insert the devices directly."""
    owners = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(-(-count // PER_OWNER)):
            body = {"email": f"owner.{secrets.token_hex(5)}@example.com", "password": PASSWORD}
            user = http.post("/api/v1/auth/register", json=body).raise_for_status().json()
            login = http.post("/api/v1/auth/login", json=body).raise_for_status().json()
            owners.append((user["id"], login["access_token"]))
    now, public, tag = datetime.now(UTC), public_key_b64(key), secrets.token_hex(3)
    fixed = {"camera_model": "VC-100", "firmware_version": "1.0.0", "public_key": public}
    fixed |= {"activated_at": now, "online": False, "last_seen": None}
    docs = [
        {"device_uid": f"bench-{tag}-{i:05d}", "name": f"Bench {i:05d}", **fixed}
        | {"owner_id": ObjectId(owners[i // PER_OWNER][0])}
        for i in range(count)
    ]
    with MongoClient(env["MONGODB_URL"]) as client:
        ids = client[env["MONGODB_DATABASE"]]["devices"].insert_many(docs).inserted_ids
    return owners, [str(i) for i in ids]


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


async def ws_open(url: str, token: str) -> Any:
    """A signaling connection past its ``welcome``."""
    ws = await websockets.connect(url, open_timeout=30, **WS_OPTIONS)
    await ws.send(json.dumps({"type": "hello", "token": token}))
    await expect(ws, "welcome", 30)
    return ws


async def expect(ws: Any, kind: str, wait_s: float = 10) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), wait_s))
        if message["type"] == kind:
            return message
        if message["type"] in ("session.end", "status"):
            raise RuntimeError(f"waiting for {kind}: {message}")


# --- (a) idle camera connections ------------------------------------------------------------


def camera_client(pipe: Connection, url: str, ids: list[str], key: bytes, rate: float) -> None:
    """Connect cameras on a schedule and hold them; answer 'open?' until killed."""
    raise_fd_limit()
    private, failed, errors, sockets = Ed25519PrivateKey.from_private_bytes(key), [], set(), []

    async def one(gate: asyncio.Semaphore, due: float, device: str) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        async with gate:
            try:
                sockets.append(await ws_open(url, assertion(private, device, PUBLIC)))
            except Exception as exc:
                failed.append(device)
                errors.add(repr(exc)[:120])

    async def run() -> None:
        gate, start = asyncio.Semaphore(100), time.monotonic() + 0.05
        await asyncio.gather(*(one(gate, start + i / rate, d) for i, d in enumerate(ids)))
        result = {"ok": len(sockets), "failed": failed, "errors": sorted(errors)[:3]}
        pipe.send(result | {"start": start, "end": time.monotonic()})
        while await asyncio.to_thread(pipe.recv) == "open?":
            pipe.send(sum(1 for ws in sockets if ws.state is websockets.State.OPEN))

    with suppress(EOFError):  # the parent is gone
        asyncio.run(run())


def spawn_clients(stack: ExitStack, url: str, ids: list[str], key: bytes, rate: float, n: int):
    pipes = []
    for part in range(n):
        parent, child = SPAWN.Pipe()
        process = SPAWN.Process(
            target=camera_client, args=(child, url, ids[part::n], key, rate / n)
        )
        process.start()
        stack.callback(lambda p=process: (p.kill(), p.join()))
        pipes.append(parent)
    return [pipe.recv() for pipe in pipes], pipes


def wait_idle(pid: int, limit: float = 0.10, timeout: float = 90) -> None:
    """Until the process uses under ``limit`` of a core over 2 s (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_s(pid)
        time.sleep(2)
        if cpu_s(pid) - before < 2 * limit:
            return


def bench_connections(stack: ExitStack, args: argparse.Namespace, db: str, tmp: Path, kind: str):
    key, env = Ed25519PrivateKey.generate(), cloud_env(db, tmp, args.presence_ttl)
    log, started = tmp / f"conn-{kind}.log", time.monotonic()
    cloud, url = start_cloud(stack, env, log, "websockets-sansio", kind)
    rss_start, ws_url = kib(cloud.pid, "VmRSS"), url.replace("http", "ws", 1) + "/ws/v1/device"
    owners, ids = owners_and_devices(url, env, WARM + args.cameras, key)
    warm, pipes = spawn_clients(stack, ws_url, ids[:WARM], raw(key), 200, 1)
    wait_idle(cloud.pid)
    rss_warm, cpu_before = kib(cloud.pid, "VmRSS"), cpu_s(cloud.pid)
    results, more = spawn_clients(stack, ws_url, ids[WARM:], raw(key), args.connect_rate, CLIENTS)
    cpu_ms = 1000 * (cpu_s(cloud.pid) - cpu_before) / args.cameras
    wait_idle(cloud.pid)
    rss_after, peak = kib(cloud.pid, "VmRSS"), kib(cloud.pid, "VmHWM")
    held, failed = sum(r["ok"] for r in results), {d for r in warm + results for d in r["failed"]}
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    measured_at = time.monotonic() - started
    online, listed_s = {}, time.monotonic()  # presence as owners see it, for up to 3 owners
    with httpx.Client(base_url=url, timeout=60) as http, suppress(httpx.HTTPError):
        for _, token in owners[:3]:
            got = http.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
            online |= {d["id"]: d["online"] for d in got.raise_for_status().json()["devices"]}
    listed_s = (time.monotonic() - listed_s) / 3
    right = sum(1 for d, on in online.items() if on == (d not in failed))
    for pipe in pipes + more:
        pipe.send("open?")
    still_open = sum(pipe.recv() for pipe in pipes + more)
    cloud.kill()  # its database is thrown away: no need to drain thousands of connections
    cloud.wait()
    per_conn = (rss_after - rss_warm) / max(1, held)
    verdict = held >= min(CONN_TARGET, args.cameras) and per_conn <= KIB_TARGET
    cells = [kind, held, len(failed), f"{held / span:.0f}", f"{cpu_ms:.1f}"]
    cells += [f"{v / 1024:.1f}" for v in (rss_start, rss_warm, rss_after, peak)]
    cells += [f"{per_conn:.1f}", f"{measured_at:.0f}", f"{right}/{len(online)}", f"{listed_s:.1f}"]
    expected = held + sum(r["ok"] for r in warm)
    cells += ["all" if still_open == expected else still_open, "PASS" if verdict else "MISS"]
    errors = sorted({e for r in warm + results for e in r["errors"]})[:3]
    return cells, errors


# --- (b) relay latency ------------------------------------------------------------------------


def candidate(stamps: str) -> dict:
    line = f"candidate:1 1 udp 2122260223 192.0.2.7 50000 typ host {stamps}"
    return {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}


async def negotiate(view: Any, cam: Any, device: str) -> tuple[str, int]:
    """request -> created -> offer -> answer; (session id, requests refused as offline)."""
    refused = 0
    for _ in range(5):
        await view.send(json.dumps({"type": "session.request", "id": "r", "device_id": device}))
        try:
            sid = (await expect(view, "session.created"))["session_id"]
            break
        except RuntimeError as exc:  # the camera's welcome comes before it is routable
            if "device_offline" not in str(exc):
                raise
            refused += 1
            await asyncio.sleep(0.2)
    else:
        raise RuntimeError(f"camera {device} stayed offline")
    await view.send(json.dumps({"type": "session.offer", "session_id": sid, "sdp": "v=0 o"}))
    await expect(cam, "session.offer")
    await cam.send(json.dumps({"type": "session.answer", "session_id": sid, "sdp": "v=0 a"}))
    await expect(view, "session.answer")
    return sid, refused


async def relay_load(
    urls: list[str],
    token: str,
    ids: list[str],
    key: bytes,
    args: Any,
    on_start: Callable[[float], None] | None = None,
) -> dict:
    """Negotiate the pairs, then send for ``args.warmup + args.seconds`` at ``args.rate``/s.

    ``on_start`` gets the time.monotonic() at which message 0 is due, once the sessions are
    up; message n is due ``n / args.rate`` s later. The result's ``v2c_at``/``c2v_at`` map
    each measured message number to its one-way legs (ms), for callers that cut the run
    into windows (bench/detect.py).
    """
    private = Ed25519PrivateKey.from_private_bytes(key)
    cams = [await ws_open(urls[-1] + "/ws/v1/device", assertion(private, d, PUBLIC)) for d in ids]
    views = [await ws_open(urls[0] + "/ws/v1/client", token) for _ in ids]
    sessions, retries = zip(
        *[await negotiate(*p) for p in zip(views, cams, ids, strict=True)], strict=True
    )
    v2c: dict[int, int] = {}
    back: dict[int, tuple[int, int]] = {}  # seq -> (round trip, camera->viewer) in ns
    other: set[str] = set()

    async def camera_loop(ws: Any, sid: str) -> None:
        async for text in ws:
            now, message = time.monotonic_ns(), json.loads(text)
            if message["type"] != "session.ice":
                other.add(message["type"])
                continue
            *_, seq, sent = message["candidate"]["candidate"].split()
            v2c[int(seq)] = now - int(sent)
            echo = candidate(f"{seq} {sent} {time.monotonic_ns()}")
            await ws.send(json.dumps({"type": "session.ice", "session_id": sid, "candidate": echo}))

    async def viewer_loop(ws: Any) -> None:
        async for text in ws:
            now, message = time.monotonic_ns(), json.loads(text)
            if message["type"] != "session.ice":
                other.add(message["type"])
                continue
            *_, seq, sent, echoed = message["candidate"]["candidate"].split()
            back[int(seq)] = (now - int(sent), now - int(echoed))

    loops = [asyncio.create_task(camera_loop(c, s)) for c, s in zip(cams, sessions, strict=True)]
    loops += [asyncio.create_task(viewer_loop(v)) for v in views]
    warm, total = round(args.warmup * args.rate), round((args.warmup + args.seconds) * args.rate)
    late, step, start = [], 1e9 / args.rate, time.monotonic_ns() + 100_000_000
    if on_start is not None:
        on_start(start / 1e9)
    for n in range(total):  # open loop: message n is due at start + n / rate, pair n % K
        due = start + round(n * step)
        if (delay := due - time.monotonic_ns()) > 0:
            await asyncio.sleep(delay / 1e9)
        pair, sent = n % len(ids), time.monotonic_ns()
        late.append(sent - due)
        body = {"session_id": sessions[pair], "candidate": candidate(f"{n} {sent}")}
        await views[pair].send(json.dumps({"type": "session.ice", **body}))
    await asyncio.sleep(1.0)  # stragglers
    for task in loops:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in cams + views)), 15)
    n = range(warm, total)
    return {
        "sent": len(n),
        "window": ((start + warm * step) / 1e9, (start + total * step) / 1e9),
        "v2c": [v2c[i] / 1e6 for i in n if i in v2c],
        "rtt": [back[i][0] / 1e6 for i in n if i in back],
        "c2v": [back[i][1] / 1e6 for i in n if i in back],
        "late": [late[i] / 1e6 for i in n],
        "other": sorted(other),
        "retries": sum(retries),
        "start": start / 1e9,
        "v2c_at": {i: v2c[i] / 1e6 for i in n if i in v2c},
        "c2v_at": {i: back[i][1] / 1e6 for i in n if i in back},
    }


def latency_process(pipe: Connection, *load: Any) -> None:
    try:
        pipe.send(asyncio.run(relay_load(*load)))
    except Exception as exc:
        pipe.send({"error": repr(exc)})


def bench_latency(stack: ExitStack, args: argparse.Namespace, db: str, tmp: Path, mode: str):
    key = Ed25519PrivateKey.generate()
    redis = stack.enter_context(redis_server()) if mode == "cross" else None
    env = cloud_env(db, tmp, 60, redis)
    clouds, urls = [], []
    for i in range(2 if redis else 1):
        cloud, url = start_cloud(stack, env, tmp / f"{mode}-{i}.log", "websockets-sansio")
        clouds.append(cloud)
        urls.append(url.replace("http", "ws", 1))
    owners, ids = owners_and_devices(url, env, args.pairs, key)
    parent, child = SPAWN.Pipe()
    load = SPAWN.Process(
        target=latency_process, args=(child, urls, owners[0][1], ids, raw(key), args)
    )
    load.start()
    stack.callback(lambda: (load.kill(), load.join()))
    pids, samples = [c.pid for c in clouds] + [load.pid], []  # (time, sched_s of each pid)
    deadline = time.monotonic() + 120 + args.warmup + args.seconds
    while not parent.poll(0.25):
        samples.append((time.monotonic(), *(sched_s(p) for p in pids)))
        if (not load.is_alive() and not parent.poll()) or time.monotonic() > deadline:
            raise RuntimeError("the load process died or hung")
    result: dict = parent.recv()
    if "error" in result:
        raise RuntimeError(f"load process failed: {result['error']}")
    inside = [s for s in samples if result["window"][0] <= s[0] <= result["window"][1]]
    span = inside[-1][0] - inside[0][0]
    pairs = zip(inside[0][1:], inside[-1][1:], strict=True)
    use = [((b[0] - a[0]) / span, (b[1] - a[1]) / span) for a, b in pairs]
    return result | {"mode": mode, "use": use}


# --- report -----------------------------------------------------------------------------------


def pct(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [float("nan")] * 4
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [cuts[49], cuts[89], cuts[98], max(values)]


def print_connections_head(args: argparse.Namespace) -> None:
    refresh = args.presence_ttl / 4
    print(f"\n(a) idle camera connections held by ONE cloud process: {WARM} warm-up + "
          f"{args.cameras} measured, from {CLIENTS} client processes at {args.connect_rate:g}/s; "
          f"PRESENCE_TTL_S={args.presence_ttl}")  # fmt: skip
    print("target: >= 10,000 connections at <= 20 KiB RSS each. start/warm/after/peak: RSS MiB;"
          " KiB/conn = (RSS after - RSS warm) / held; msCPU = cloud CPU per connect; online ="
          " sampled devices whose API 'online' is right; list_s = GET /devices (500 devices);"
          " open = connections still open at the end (all: every one held);")  # fmt: skip
    print(
        f"at_s = seconds from the cloud's start to the RSS reading (first refresh: {refresh:g} s)"
    )
    heads = "held fail conn/s msCPU start warm after peak KiB/conn at_s online list_s open verdict"
    print(f"{'sockets':<18}" + "".join(f"{h:>10}" for h in heads.split()))


def print_latency(r: dict, args: argparse.Namespace) -> None:
    where = {"same": "same instance (in-memory bus, 1 cloud process)"}
    where["cross"] = "across instances (2 cloud processes + redis; viewers on A, cameras on B)"
    seconds, target = r["window"][1] - r["window"][0], P99_TARGET_MS[r["mode"]]
    print(f"\n(b) relay latency, {where[r['mode']]}")
    print(f"{args.pairs} pairs: {r['sent'] / seconds:.0f} msg/s viewer->camera over {seconds:.0f}"
          f" s, {len(r['rtt']) / seconds:.0f} msg/s echoed back; lost {r['sent'] - len(r['rtt'])};"
          f" other frames {r['other'] or 'none'}; session requests refused as offline"
          f" {r['retries']}")  # fmt: skip
    names = [*["cloud A", "cloud B"][: len(r["use"]) - 1], "load generator"]
    use = ", ".join(f"{n} {u:.0%} ({w:.0%})" for n, (u, w) in zip(names, r["use"], strict=True))
    print(f"main thread on a CPU (and runnable but waiting for a CPU), share of the window: {use}")
    print(f"{'(ms)':<36}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}  target")
    rows = [("viewer->camera relay, one-way", "v2c"), ("camera->viewer relay, one-way", "c2v")]
    rows += [
        ("round trip viewer->camera->viewer", "rtt"),
        ("generator lateness vs schedule", "late"),
    ]
    for name, key in rows:
        s, judged = pct(r[key]), key in ("v2c", "c2v")
        verdict = f"  p99 <= {target:g}: {'PASS' if s[2] <= target else 'MISS'}" if judged else ""
        print(f"{name:<36}" + "".join(f"{v:>8.2f}" for v in s) + verdict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=10_000, help="connections to hold")
    parser.add_argument("--connect-rate", type=float, default=250, help="new connections/s")
    parser.add_argument("--presence-ttl", type=int, default=600, help="PRESENCE_TTL_S for (a)")
    parser.add_argument("--pairs", type=int, default=60, help="viewer/camera pairs")
    parser.add_argument("--rate", type=float, default=1000, help="viewer ICE messages/s in total")
    parser.add_argument("--seconds", type=float, default=15, help="latency window")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds first")
    parser.add_argument("--only", choices=["connections", "latency"])
    args = parser.parse_args()
    if args.rate / args.pairs > 19:
        parser.error("keep --rate / --pairs under 20 ICE/s per connection (the cloud's limit)")
    print(f"Signaling — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, websockets "
          f"{websockets.__version__}", flush=True)  # fmt: skip
    started, (machine, own) = time.monotonic(), machine_cpu()
    with tempfile.TemporaryDirectory(prefix="bench-signaling-") as tmp:
        (Path(tmp) / "db").mkdir()
        with secantus_server(Path(tmp) / "db") as db:
            if args.only != "latency":
                print_connections_head(args)
                for kind in SOCKETS:
                    try:
                        with ExitStack() as stack:
                            cells, errors = bench_connections(stack, args, db, Path(tmp), kind)
                    except Exception as exc:
                        cells, errors = [kind, "failed"], [repr(exc)[:300]]
                    print(f"{cells[0]:<18}" + "".join(f"{c!s:>10}" for c in cells[1:]), flush=True)
                    print("".join(f"  error: {e}\n" for e in errors), end="")
            for mode in ("same", "cross") if args.only != "connections" else ():
                with ExitStack() as stack:
                    print_latency(bench_latency(stack, args, db, Path(tmp), mode), args)
        for log in Path(tmp).glob("*.log"):
            if (at := (text := log.read_text()).find("Traceback")) >= 0:
                lines = text[at:].splitlines()
                error = next((x for x in lines[1:] if x and not x[0].isspace()), "")
                print(f"!! {log.name} has a traceback, ending in: {error}")
                print("\n".join(text[:at].splitlines()[-2:] + lines[:12]))
    machine_end, own_end = machine_cpu()
    wall, others = time.monotonic() - started, max(0.0, (machine_end - machine) - (own_end - own))
    share = f"{others / wall:.0%} of one core; figures are clean only when this is near 0"
    print(f"\nother processes on the machine used {others:.1f} CPU-s in {wall:.0f} s ({share})")


if __name__ == "__main__":
    main()
