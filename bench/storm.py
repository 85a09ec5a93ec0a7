"""Camera connects: the CPU one cloud process spends per connect, and a reconnect storm.

    .venv/bin/python bench/storm.py rate  [--cameras N] [--in-flight F] [--profile FILE]
    .venv/bin/python bench/storm.py storm [--cameras N] [--instances 3] [--bound 30]

``rate``: one cloud process (on Redis, as in a cluster) takes N cameras from client
processes that keep F connects in flight each, as fast as it serves them; the cloud's CPU
per connect comes from /proc/<pid>/stat. ``--profile FILE`` runs that process under
cProfile (written at its shutdown) and prints the top of the profile.

``storm``: 2-3 cloud instances behind one Redis and one SecantusDB. N cameras connect to
instance A, then A is killed (SIGKILL, by its PID). Every camera reconnects with the camera
agent's policy (:class:`peer.signaling.Backoff`, full jitter, the agent's defaults; after a
503 with ``Retry-After``, that wait plus up to a second of jitter, as the agent) through
a "load balancer" that sends new connections to the surviving instances at random. The
script reads presence as the cloud keeps it (each device's holder in Redis, and the
device's ``presence_epoch`` in the database) until every camera is held by a survivor, and
prints: time until all online, connects/s per surviving instance, their peak CPU, and the
connects refused (503 or 1013) or failed on the way.

The simulated cameras are bare asyncio protocols speaking just enough RFC 6455 (a masked
``hello``, answers to the server's pings), so that a few client processes carry 10,000.
Every process started here is stopped by its PID, also on failure.
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import pstats
import random
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.signaling import (
    PUBLIC,
    cloud_env,
    cpu_s,
    machine_cpu,
    owners_and_devices,
    raise_fd_limit,
    raw,
)
from device_sim.identity import assertion
from peer.signaling import Backoff
from tests import servers
from tests.servers import free_port, redis_server, secantus_server, stop

SPAWN = multiprocessing.get_context("spawn")
OPEN_TIMEOUT_S = 10.0  # the agent's open_timeout_s: connect + welcome
CLOSE_TRY_AGAIN = 1013


# --- the simulated cameras ----------------------------------------------------------------------


@dataclass
class Tally:
    attempts: int = 0
    welcomes: int = 0
    refused: int = 0  # refused with 503 (busy) or closed with 1013 before the welcome
    told: int = 0  # of those, refused with a Retry-After, which the camera waited
    failed: int = 0  # any other end before the welcome (refused TCP, timeout, 4401...)
    dropped: int = 0  # ends after the welcome
    closes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # (monotonic time of the welcome, instance prefix of its connection id)
    welcomed_at: list[tuple[float, str]] = field(default_factory=list)


class Camera:
    """One camera's state across its connections: its id, its backoff, its current one."""

    __slots__ = ("backoff", "conn", "device", "protocol")

    def __init__(self, device: str) -> None:
        self.device = device
        self.backoff = Backoff()  # the agent's policy and defaults (first 0.5 s, max 30 s)
        self.protocol: CameraProtocol | None = None
        self.conn = ""  # the cloud's connection id while welcomed


class Swarm:
    """Many cameras in one process, each kept connected like the agent keeps its own."""

    def __init__(self, key: Ed25519PrivateKey, first: str, spread: list[str]) -> None:
        self.key = key
        self.first = first  # where every camera connects first
        self.spread = spread or [first]  # where reconnections go (the balancer's choice)
        self.tally = Tally()
        self.online: set[str] = set()
        self.loop = asyncio.get_running_loop()

    def connect(self, camera: Camera, url: str) -> None:
        self.tally.attempts += 1
        parts = urlsplit(url)
        protocol = CameraProtocol(self, camera, parts.netloc)
        camera.protocol = protocol
        task = self.loop.create_task(self._open(protocol, parts.hostname or "", parts.port or 80))
        protocol.opening = task

    async def _open(self, protocol: "CameraProtocol", host: str, port: int) -> None:
        try:
            await self.loop.create_connection(lambda: protocol, host, port)
        except OSError as exc:
            protocol.fail(f"connect: {exc.strerror or exc}")

    def ended(
        self, camera: Camera, welcomed: bool, code: int | None, why: str, told: float | None
    ) -> None:
        """A connection (or an attempt) ended: schedule the next like SignalingClient.run."""
        if welcomed:
            self.tally.dropped += 1
            self.online.discard(camera.device)
        elif code == CLOSE_TRY_AGAIN or why.startswith("HTTP/1.1 503"):
            self.tally.refused += 1
        else:
            self.tally.failed += 1
            self.tally.errors[why[:60]] += 1
        if code is not None:
            self.tally.closes[code] += 1
        camera.conn = ""
        camera.protocol = None
        # The agent's wait (SignalingClient.run): a 503's Retry-After plus jitter, its bound
        # unchanged; after any other abnormal end full jitter, the bound doubling with each
        # failure in a row.
        if told is not None and code is None and why.startswith(("HTTP/1.1 503", "HTTP/1.1 429")):
            delay = camera.backoff.told(told)
            self.tally.told += 1
        else:
            delay = camera.backoff.next()
        self.loop.call_later(delay, self.reconnect, camera)

    def reconnect(self, camera: Camera) -> None:
        self.connect(camera, random.choice(self.spread))

    def welcomed(self, camera: Camera, conn: str) -> None:
        camera.conn = conn
        camera.backoff.reset()  # as SignalingClient does at a welcome
        self.tally.welcomes += 1
        self.tally.welcomed_at.append((time.monotonic(), conn.split(".", 1)[0]))
        self.online.add(camera.device)


class CameraProtocol(asyncio.Protocol):
    """Just enough of a WebSocket client: upgrade, masked ``hello``, welcome, pong, close."""

    def __init__(self, swarm: Swarm, camera: Camera, host: str) -> None:
        self.swarm, self.camera, self.host = swarm, camera, host
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.welcomed = False
        self.code: int | None = None
        self.done = False
        self.opening: asyncio.Task[None] | None = None
        self.retry_after: float | None = None  # a 503's Retry-After (peer.signaling.retry_after)
        self.timer = swarm.loop.call_later(OPEN_TIMEOUT_S, self.timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET /ws/v1/device HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                lines = head.decode(errors="replace").split("\r\n")
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "retry-after" and value.strip().isdigit():
                        self.retry_after = float(value.strip())
                self.fail(lines[0])
                return
            self.upgraded, self.buffer = True, rest
            # Signed once upgraded, as the agent does (its hello is made after the connect):
            # a refused attempt costs no signature.
            hello = assertion(self.swarm.key, self.camera.device, PUBLIC)
            self.send(0x1, json.dumps({"type": "hello", "token": hello}).encode())
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1] & 0x7F
            at = 2
            if second == 126:
                if len(self.buffer) < 4:
                    return
                second, at = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif second == 127:
                if len(self.buffer) < 10:
                    return
                second, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < at + second:
                return
            payload, self.buffer = self.buffer[at : at + second], self.buffer[at + second :]
            self.frame(first & 0x0F, payload)

    def frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1 and not self.welcomed:
            message = json.loads(payload)
            if message.get("type") == "welcome":
                self.welcomed = True
                self.timer.cancel()
                self.swarm.welcomed(self.camera, message["connection_id"])
        elif opcode == 0x9:  # ping: pong with its payload
            self.send(0xA, payload)
        elif opcode == 0x8:
            self.code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.send(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.transport.write(head + b"\0\0\0\0" + payload)  # a zero mask: masked as is

    def timeout(self) -> None:
        self.fail("no welcome within the open timeout")

    def fail(self, why: str) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows
            self.why = why
        else:
            self.finish(why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(getattr(self, "why", None) or f"lost: {exc or 'closed'}")

    def finish(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self.swarm.ended(self.camera, self.welcomed, self.code, why, self.retry_after)


def swarm_process(
    pipe: Connection,
    first: str,
    spread: list[str],
    ids: list[str],
    key: bytes,
    in_flight: int,
) -> None:
    """Connect ``ids`` to ``first`` (at most ``in_flight`` at once), then keep them online;
    answer the parent's "tally" until it says "stop"."""
    raise_fd_limit()
    with suppress(ImportError):
        import uvloop

        uvloop.install()

    async def run() -> None:
        swarm = Swarm(Ed25519PrivateKey.from_private_bytes(key), first, spread)
        cameras = [Camera(d) for d in ids]
        start, cpu = time.monotonic(), time.process_time()
        for n, camera in enumerate(cameras):  # closed loop: wait while in_flight are opening
            while swarm.tally.attempts - swarm.tally.welcomes - _ended(swarm) >= in_flight:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            swarm.connect(camera, first)
            if n % 50 == 0:
                await asyncio.sleep(0)
        while len(swarm.online) < len(cameras) and time.monotonic() - start < 600:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        end, cpu = time.monotonic(), time.process_time() - cpu
        pipe.send({"online": len(swarm.online), "start": start, "end": end, "cpu": cpu})
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command == "stop":
                return
            pipe.send(_report(swarm))

    with suppress(EOFError, KeyboardInterrupt):
        asyncio.run(run())


def _ended(swarm: Swarm) -> int:
    return swarm.tally.refused + swarm.tally.failed


def _report(swarm: Swarm) -> dict[str, Any]:
    t = swarm.tally
    counts = ("attempts", "welcomes", "refused", "told", "failed", "dropped")
    report = {k: getattr(t, k) for k in counts}
    return report | {
        "cpu": time.process_time(),
        "online": len(swarm.online),
        "closes": dict(t.closes),
        "errors": dict(t.errors.most_common(4)),
        "welcomed_at": t.welcomed_at,
    }


class Swarms:
    """Client processes; each carries a share of the cameras."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.pipes: list[Connection] = []

    def start(
        self, first: str, spread: list[str], ids: list[str], key: bytes, n: int, in_flight: int
    ) -> list[dict[str, Any]]:
        for part in range(n):
            parent, child = SPAWN.Pipe()
            process = SPAWN.Process(
                target=swarm_process,
                args=(child, first, spread, ids[part::n], key, in_flight),
            )
            process.start()
            self.stack.callback(lambda p=process: (p.kill(), p.join()))
            self.pipes.append(parent)
        return [pipe.recv() for pipe in self.pipes]

    def tally(self) -> dict[str, Any]:
        total: dict[str, Any] = {"closes": Counter(), "errors": Counter(), "welcomed_at": []}
        for pipe in self.pipes:
            pipe.send("tally")
        for pipe in self.pipes:
            part = pipe.recv()
            for k, v in part.items():
                if isinstance(v, dict):
                    total[k].update(v)
                elif isinstance(v, list):
                    total[k] += v
                else:
                    total[k] = total.get(k, 0) + v
        return total


# --- the cloud ------------------------------------------------------------------------------------


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    url: str  # ws://host:port
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def start_instance(
    stack: ExitStack, env: dict[str, str], log: Path, profile: Path | None = None
) -> Instance:
    port = free_port()
    full = {**os.environ, **env}
    if profile is None:
        process = servers.start_cloud(full, log, port, preexec_fn=raise_fd_limit)
    else:
        process = start_profiled(full, log, port, profile)
    stack.callback(stop, process)
    return Instance(process, f"ws://127.0.0.1:{port}", log)


PROFILED = """
import cProfile, runpy, signal, sys
profile, out = cProfile.Profile(), sys.argv.pop(1)
def dump(*_):
    profile.disable()
    profile.dump_stats(out)
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, dump)
sys.argv[0] = "cloud"
runpy.run_module("cloud", run_name="__main__", alter_sys=True)
"""


def start_profiled(env: dict[str, str], log: Path, port: int, out: Path) -> Any:
    """The cloud with a profiler that SIGUSR1 starts and SIGUSR2 stops, writing ``out``
    (uvicorn ends by raising SIGTERM again, so a profile written at exit would be lost)."""
    command = [sys.executable, "-c", PROFILED, str(out), "--port", str(port)]
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=servers.ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"the profiled cloud did not start:\n{log.read_text()[-2000:]}")


# --- rate ---------------------------------------------------------------------------------------


def bench_rate(args: argparse.Namespace, tmp: Path, db: str) -> None:
    with ExitStack() as stack:
        redis = None if args.memory_bus else stack.enter_context(redis_server())
        key, env = Ed25519PrivateKey.generate(), cloud_env(db, tmp, 600, redis)
        profile = Path(args.profile).resolve() if args.profile else None
        cloud = start_instance(stack, env, tmp / "rate.log", profile)
        http = cloud.url.replace("ws", "http", 1)
        _, ids = owners_and_devices(http, env, args.cameras + args.warm, key)
        warm = Swarms(stack)
        warm.start(cloud.url + "/ws/v1/device", [], ids[: args.warm], raw(key), 1, 20)
        time.sleep(1.0)
        others = {f"{_name(argv)} {pid}": pid for pid, argv in servers.children(os.getpid())}
        others = {k: v for k, v in others.items() if v != cloud.pid}
        others_before = {k: cpu_s(v) for k, v in others.items()}
        if profile is not None:
            cloud.process.send_signal(signal.SIGUSR1)
        before, (machine, _) = cpu_s(cloud.pid), machine_cpu()
        swarms = Swarms(stack)
        results = swarms.start(
            cloud.url + "/ws/v1/device",
            [],
            ids[args.warm :],
            raw(key),
            args.clients,
            args.in_flight,
        )
        used = cpu_s(cloud.pid) - before
        if profile is not None:
            cloud.process.send_signal(signal.SIGUSR2)
            time.sleep(2)
        machine_end, _ = machine_cpu()
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        online = sum(r["online"] for r in results)
        tally = swarms.tally()
        print(
            f"rate: {online}/{args.cameras} cameras online in {span:.1f} s from {args.clients} "
            f"client processes ({args.in_flight} in flight each), bus: "
            f"{'memory' if redis is None else 'redis'}"
        )
        print(
            f"  {online / span:.0f} connects/s; cloud CPU {used:.1f} s = "
            f"{1000 * used / max(1, online):.2f} ms per connect "
            f"({used / span:.0%} of a core); attempts {tally['attempts']}, refused (503 or 1013) "
            f"{tally['refused']}, failed {tally['failed']} {dict(tally['errors'])}"
        )
        busy, clients = machine_end - machine, sum(r["cpu"] for r in results)
        print(
            f"  machine busy {busy:.1f} CPU-s in {span:.1f} s (2 cores: {2 * span:.0f}); "
            f"the client processes {clients:.1f} CPU-s ({1000 * clients / max(1, online):.2f} "
            "ms per connect)"
        )
        print(
            "  CPU-s of others: "
            + ", ".join(f"{k} {cpu_s(v) - others_before[k]:.1f}" for k, v in others.items())
        )
        for pipe in warm.pipes + swarms.pipes:
            pipe.send("stop")
        cloud.process.send_signal(signal.SIGTERM)
        try:
            cloud.process.wait(60)
        except subprocess.TimeoutExpired:
            cloud.process.kill()
    if profile is not None and profile.exists():
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)


def _name(argv: list[str]) -> str:
    """A process's program: a script's name rather than its interpreter's (SecantusDB)."""
    script = len(argv) > 1 and "python" in argv[0] and not argv[1].startswith("-")
    return (argv[1] if script else argv[0]).rsplit("/", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["rate", "storm"])
    parser.add_argument("--cameras", type=int, default=None)
    parser.add_argument("--warm", type=int, default=100, help="rate: unmeasured connects first")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--in-flight", type=int, default=64, help="rate: per client process")
    parser.add_argument("--memory-bus", action="store_true", help="rate: no Redis")
    parser.add_argument("--profile", help="rate: cProfile the cloud into this file")
    parser.add_argument("--instances", type=int, default=3, help="storm: cloud instances")
    parser.add_argument("--bound", type=float, default=30.0, help="storm: seconds allowed")
    args = parser.parse_args()
    args.cameras = args.cameras or (3000 if args.mode == "rate" else 10_000)
    raise_fd_limit()
    print(f"storm.py {args.mode} — {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        (Path(tmp) / "db").mkdir()
        with secantus_server(Path(tmp) / "db") as db:
            if args.mode == "rate":
                bench_rate(args, Path(tmp), db)
            else:
                bench_storm(args, Path(tmp), db)
        for log in Path(tmp).glob("*.log"):
            text = log.read_text()
            if "Traceback" in text:
                print(f"!! {log.name} has a traceback:\n{text[text.find('Traceback') :][:1500]}")


def holders(redis: Any, ids: list[str]) -> list[str | None]:
    """Each device's holder (a connection id, "<instance>.<n>") as the bus keeps presence."""
    out: list[str | None] = []
    for at in range(0, len(ids), 2000):
        out += redis.mget([f"vc:presence:{d}" for d in ids[at : at + 2000]])
    return out


def run_storm(
    stack: ExitStack,
    tmp: Path,
    db: str,
    cameras: int,
    instances: int = 3,
    clients: int = 2,
    bound_s: float = 30.0,
    say: Any = print,
) -> dict[str, Any]:
    """Connect ``cameras`` to instance A, kill it, and follow presence until every camera is
    held by a survivor (or 3 x ``bound_s`` passed). Returns the figures."""
    from redis import Redis

    redis_url = stack.enter_context(redis_server())
    key, env = Ed25519PrivateKey.generate(), cloud_env(db, tmp, 60, redis_url)
    clouds = [start_instance(stack, env, tmp / f"storm-{i}.log") for i in range(instances)]
    a, survivors = clouds[0], clouds[1:]
    http = a.url.replace("ws", "http", 1)
    _, ids = owners_and_devices(http, env, cameras, key)
    swarms = Swarms(stack)
    started = time.monotonic()
    spread = [c.url + "/ws/v1/device" for c in survivors]
    results = swarms.start(a.url + "/ws/v1/device", spread, ids, raw(key), clients, 24)
    connected = sum(r["online"] for r in results)
    say(f"{connected}/{cameras} cameras on instance A in {time.monotonic() - started:.0f} s")
    redis = Redis.from_url(redis_url, decode_responses=True)
    stack.callback(redis.close)
    before = holders(redis, ids)
    prefix_a = {h.split(".", 1)[0] for h in before if h}
    say(f"presence before: {sum(1 for h in before if h)} held, by instance(s) {prefix_a}")
    time.sleep(1.0)
    cpu = {c.pid: cpu_s(c.pid) for c in survivors}
    peak = dict.fromkeys(cpu, 0.0)
    # CPU-s over the storm: the survivors, the other servers, the client processes, the machine
    servers_now = {
        _name(argv): pid
        for pid, argv in servers.children(os.getpid())
        if pid not in cpu and pid != a.pid and "python" not in _name(argv)
    }
    used_before = {**cpu, **{p: cpu_s(p) for p in servers_now.values()}}
    clients_before, (machine_before, _) = swarms.tally()["cpu"], machine_cpu()
    killed_ns, killed = time.time_ns(), time.monotonic()
    os.kill(a.pid, signal.SIGKILL)
    a.process.wait()
    moved, last, samples, all_at = 0, killed, [], None
    while time.monotonic() - killed < 3 * bound_s:
        time.sleep(0.5)
        now = time.monotonic()
        for c in survivors:
            used = cpu_s(c.pid)
            peak[c.pid] = max(peak[c.pid], (used - cpu[c.pid]) / (now - last))
            cpu[c.pid] = used
        last = now
        held = holders(redis, ids)
        moved = sum(1 for h in held if h and h.split(".", 1)[0] not in prefix_a)
        samples.append((now - killed, moved))
        if moved == len(ids):
            all_at = now - killed
            break
    tally = swarms.tally()
    storm_cpu = {
        f"survivor {n}": cpu_s(c.pid) - used_before[c.pid] for n, c in enumerate(survivors)
    }
    storm_cpu |= {k: cpu_s(p) - used_before[p] for k, p in servers_now.items()}
    storm_cpu |= {
        "clients": tally["cpu"] - clients_before,
        "machine": machine_cpu()[0] - machine_before,
    }
    # The database's view follows the bus's within a connect: allow it a few seconds.
    with MongoClient(env["MONGODB_URL"]) as client:
        devices, deadline = client[env["MONGODB_DATABASE"]]["devices"], time.monotonic() + 10
        while True:
            newer = {"online": True, "presence_epoch": {"$gte": killed_ns}}
            db_online = devices.count_documents(newer)
            if db_online == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    after = [(t - killed, who) for t, who in tally["welcomed_at"] if t >= killed]
    per_instance = Counter(who for _, who in after)
    span = all_at or (time.monotonic() - killed)
    buckets = Counter((who, int(t)) for t, who in after)
    for pipe in swarms.pipes:
        pipe.send("stop")
    return {
        "cameras": cameras,
        "connected": connected,
        "all_online_s": all_at,
        "moved": moved,
        "db_online_after_kill": db_online,
        "connects_per_instance": dict(per_instance),
        "mean_rate": {w: n / span for w, n in per_instance.items()},
        "peak_rate": {
            w: max(n for (who, _), n in buckets.items() if who == w) for w in per_instance
        },
        "peak_cpu": [round(peak[c.pid], 2) for c in survivors],
        "attempts": tally["attempts"] - cameras,  # after the first connects
        "refused": tally["refused"],
        "told": tally["told"],
        "failed": tally["failed"],
        "errors": dict(tally["errors"]),
        "closes": dict(tally["closes"]),
        "samples": samples,
        "cpu_s": {k: round(v, 1) for k, v in storm_cpu.items()},
    }


def bench_storm(args: argparse.Namespace, tmp: Path, db: str) -> None:
    with ExitStack() as stack:
        figures = run_storm(stack, tmp, db, args.cameras, args.instances, args.clients, args.bound)
    at = figures["all_online_s"]
    print(f"storm: {figures['cameras']} cameras on A; A killed (SIGKILL)")
    verdict = "PASS" if at is not None and at <= args.bound else "MISS"
    print(
        f"  all online on the survivors after: {'never' if at is None else f'{at:.1f} s'} "
        f"(bound {args.bound:g} s: {verdict}); moved {figures['moved']}; database online with "
        f"a newer epoch: {figures['db_online_after_kill']}"
    )
    for who, n in figures["connects_per_instance"].items():
        print(
            f"  instance {who}: {n} connects, {figures['mean_rate'][who]:.0f}/s mean, "
            f"{figures['peak_rate'][who]}/s peak (1 s)"
        )
    print(f"  peak CPU of the survivors (0.5 s samples, 1.0 = a core): {figures['peak_cpu']}")
    print(
        f"  attempts after the kill {figures['attempts']}, refused (503 or 1013) "
        f"{figures['refused']} (with a Retry-After: {figures['told']}), failed otherwise "
        f"{figures['failed']} {figures['errors']}"
    )
    print(f"  CPU-s from the kill until all online (2 cores): {figures['cpu_s']}")
    line = ", ".join(f"{t:.0f}s {n}" for t, n in figures["samples"][1::4])
    print(f"  moved over time: {line}")


if __name__ == "__main__":
    main()
