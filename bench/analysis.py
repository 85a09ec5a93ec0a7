"""Unattended analysis (issue 12): what one relay node costs per armed camera, how soon an
event reaches its owner, and how soon its clip plays after the event ends.

    flock /tmp/vc-heavy.lock scripts/hermetic .venv/bin/python bench/analysis.py
        [--cameras 4 8 16] [--window 30] [--episodes 3] [--yolo [MODEL]] [--json FILE]
    .venv/bin/python bench/analysis.py --from-json FILE   # the tables of an earlier run

The soak (issue 12: 10 armed cameras analysed by one node for 5 minutes, no event lost,
memory flat beyond the buffers) is a long round of this bench:

    ... bench/analysis.py --cameras 10 --episodes 11 --gap 30 --window 10

Its figures: every episode's thread and clip (the event and clip tables), and the relay's
RSS, sampled every 5 s, over the episodes (the last table: first, last, peak, and the
slope over the second half, where the buffers are full and only a leak still grows).

Real processes, as tests/e2e/test_analysis.py starts them: SecantusDB, redis-server, the
cloud (``python -m cloud``), one relay node (``python -m relay``, ``YOLO_MODEL=none`` unless
``--yolo``; ``ANALYSIS_FPS=5``, ``ANALYSIS_CAPACITY=64``) and N camera agents (``python -m
device_sim run --size 640x360 --fps 15 --codec h264 --motion START:SECONDS ...``, host
candidates on loopback), every camera armed (``continuous``, a new camera's default) and
owned by one user whose client WebSocket (``/ws/v1/client``) receives the ``event`` pushes.
Nobody watches. For each N in ``--cameras`` a fresh relay node and fresh agents run:

1. Episodes: each camera plays ``--episodes`` motion episodes of ``--episode-s`` seconds,
   ``--gap`` apart, the first once every camera should be analysed (the agents' starts are
   staggered over a few seconds, so episodes of different cameras overlap partly). An
   episode counts only if the node had attached to that camera's upstream at least 8 s
   before it (the clip's 5 s pre-roll filled).
   - Time to the event: from the episode's scheduled start to the arrival of the thread's
     ``new`` push at the owner's WebSocket. The agent's ``--motion`` times are seconds
     after its picture source is created; the agent runs through a few lines of wrapper
     (``WRAPPER``) that print the wall-clock time of that creation (``time.time() -
     SyntheticVideo.elapsed()``, right after the constructor), so the scheduled start is
     known to about a millisecond; the intruder then appears in the first frame drawn at
     or after it (at most 1/15 s later, counted in the latency). Split into: scheduled
     start to the thread's ``started_at`` (the node's first analysed frame with motion)
     and ``started_at`` to the push (a second hit confirms the thread, 200 ms later at
     5 fps, then ``POST /relays/events`` and the cloud's push). Target p95 <= 1.5 s.
   - Clip availability: from the arrival of the thread's ``end`` push to its clip's
     ``state: "ready"`` (``GET /api/v1/media/{clip_id}`` polled every 100 ms, from the
     moment the push arrives). Target <= 3 s. The node sends ``end`` 3 s (``quiet_s``)
     after the last frame with motion (``ended_at``), and the clip runs 5 s
     (``CLIP_POST_ROLL_S``) past ``ended_at``: of the time from the push to ``ready``,
     about 2 s is post-roll the node must still receive; the rest (``ended_at`` + 5 s to
     ``ready``) is finishing the MP4 and uploading it. Both are printed, and ``ended_at``
     to ``ready`` too.
2. CPU: once every clip is ready (or given up on) and 3 s have passed, a ``--window``
   second window with no motion: CPU of the relay process from ``/proc/<pid>/stat``
   (utime + stime, all its threads: aiortc's decoders too) as % of one core, and per
   camera, and split by thread (``/proc/<pid>/task``: the main thread runs the event loop;
   the others are aiortc's decoders, one per camera, and asyncio's worker threads, which
   the kernel does not tell apart); its RSS at the end of the window; the camera agents'
   CPU summed (they encode
   640x360 H.264 at 15 fps each, on the same 2-core machine, so they compete with the relay:
   printed apart so the reader can judge), the cloud's and SecantusDB's, and the machine's
   whole busy time (``/proc/stat``) minus ours: what other users of the machine took.
   Target: >= 16 cameras per relay core at 5 fps, i.e. <= 6.25 % of a core per camera with
   every camera analysed at 5 fps.
3. Frames analysed: the relay counts them (``stats["frames_analysed"]``) and prints the
   count when it stops (``relay stopped: {...}``): after the window the node gets SIGTERM,
   and the count is divided by the camera-seconds it analysed (for each camera, from the
   node's ``Fanout(...) attached to the upstream`` log line to the SIGTERM). That span
   starts before the first decoded frame (ICE, DTLS and the first keyframe come after the
   attach), so the rate is understated by up to ~2 s over the ~2-3 minutes each camera is
   analysed (~1-2 %). It covers the episodes too, not only the window.

The node's event-loop lag is not measured directly: nothing outside the process sees it
(the relay reports no lag, and a probe would mean changing product code). The frame rate
shows it indirectly: the analytics tap (``Fanout.frames``) re-arms its 1/5 s timer when it
hands over a frame, so a loop that wakes late (or a decoder behind) lengthens the period:
``1 / rate - 0.2`` s is the mean lateness per analysed frame. py-spy cannot attach to a
process in the development VM ("Failed to find python version"), so the thread split is
the only profile.
"""

import argparse
import ast
import asyncio
import dataclasses
import datetime
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from pymongo import MongoClient
from pymongo.collection import Collection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import (  # noqa: E402
    free_port,
    redis_server,
    secantus_process,
    start_cloud,
    stop,
)

PASSWORD = "Bench-password-42"
DATABASE = "analysis_bench"
RELAY_SECRET = secrets.token_urlsafe(24)
ANALYSIS_FPS = 5.0
POST_ROLL_S = 5.0
QUIET_S = 3.0  # relay.events.EventConfig.quiet_s: the end comes this long after the last hit
WARM_S = 8.0  # the node attached at least this long before an episode: its pre-roll is full
POLL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TARGET_CAMERAS_PER_CORE = 16
TARGET_EVENT_P95_S = 1.5
TARGET_CLIP_S = 3.0
# The agent as `python -m device_sim`, printing when its synthetic source starts its clock.
WRAPPER = """
import runpy, sys, time
import device_sim.media as media
original = media.SyntheticVideo.__init__
def init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    print(f"bench: source started at {time.time() - self.elapsed():.6f}", flush=True)
media.SyntheticVideo.__init__ = init
sys.argv = ["device_sim", *sys.argv[1:]]
runpy.run_module("device_sim", run_name="__main__", alter_sys=True)
"""
ATTACHED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Fanout\((\w+)\) attached to the upstream"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        return cpu_ticks_of(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already in user
    return total - idle, total


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, with everything in its group."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Episode:
    device_id: str
    offset_s: float  # after the agent's source started
    duration_s: float
    start: float = 0.0  # wall clock, once the source's start is known
    counted: bool = False  # the node watched the camera long enough before it
    thread_id: str | None = None
    started_at: float | None = None  # the thread's, as the node reported it
    new_push: float | None = None  # arrival of the `new` push
    ended_at: float | None = None
    end_push: float | None = None
    clip_ready: float | None = None  # first poll that saw state "ready"
    clip_duration_s: float | None = None


@dataclass
class Agent:
    device_id: str
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    source_start: float | None = None
    attached: float | None = None


@dataclass
class Round:
    cameras: int
    episodes: list[Episode] = field(default_factory=list)
    unmatched: int = 0  # motion threads that were no episode's
    window_s: float = 0.0
    relay_cpu: float = 0.0  # % of one core
    relay_rss_mb: float = 0.0
    agents_cpu: float = 0.0
    agent_rss_mb: float = 0.0
    cloud_cpu: float = 0.0
    db_cpu: float = 0.0
    machine_cpu: float = 0.0  # % of one core, all users
    frames_analysed: int = 0
    analysed_s: float = 0.0  # camera-seconds from attach to stop
    stats: dict[str, Any] = field(default_factory=dict)
    loop_cpu: float = 0.0  # the relay's main thread (its event loop)
    threads_cpu: list[float] = field(default_factory=list)  # its other threads, busiest first
    rss: list[tuple[float, float]] = field(default_factory=list)  # (wall clock, MB) every 5 s
    episodes_from: float = 0.0  # wall clock: the first episode's start, the last one's end
    episodes_to: float = 0.0


class Owner:
    """The cameras' owner: HTTP with its token, and its client WebSocket's event pushes."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.http = httpx.AsyncClient(
            base_url=url, timeout=15, headers={"Authorization": f"Bearer {token}"}
        )
        self.pushes: list[tuple[float, dict[str, Any]]] = []  # (arrival, event)
        self.threads: dict[str, Episode] = {}  # thread id -> the episode it was matched to
        self.episodes: list[Episode] = []  # those of the current round
        self.unmatched: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def register(cls, url: str, email: str = "") -> "Owner":
        email = email or f"bench.{secrets.token_hex(4)}@example.com"
        async with httpx.AsyncClient(base_url=url, timeout=15) as http:
            await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
            tokens = (
                await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            ).json()
        return cls(url, str(tokens["access_token"]))

    async def listen(self, ready: asyncio.Event) -> None:
        """Hold the client WebSocket; record every event push as it arrives."""
        async with websockets.connect(
            self.url.replace("http", "ws", 1) + "/ws/v1/client", max_size=2**22
        ) as socket:
            await socket.send(json.dumps({"type": "hello", "token": self.token}))
            welcome = json.loads(await socket.recv())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"the client WebSocket was not welcomed: {welcome}")
            heartbeat = float(welcome.get("heartbeat_s", 10))
            ready.set()
            pinged = time.monotonic()
            while True:
                try:
                    raw = await asyncio.wait_for(socket.recv(), heartbeat)
                except TimeoutError:
                    raw = None
                if time.monotonic() - pinged >= heartbeat:
                    await socket.send(json.dumps({"type": "ping"}))
                    pinged = time.monotonic()
                if raw is None:
                    continue
                arrived = time.time()
                message = json.loads(raw)
                if message.get("type") == "event" and message.get("kind") == "motion":
                    self.pushes.append((arrived, message))
                    self._event(arrived, message)

    def _event(self, arrived: float, event: dict[str, Any]) -> None:
        thread = str(event["thread_id"])
        started = datetime.datetime.fromisoformat(event["started_at"]).timestamp()
        episode = self.threads.get(thread)
        if episode is None and event["state"] == "new":
            candidates = [
                e
                for e in self.episodes
                if e.device_id == event["device_id"]
                and e.thread_id is None
                and e.start - 2.0 <= started <= e.start + e.duration_s
            ]
            if candidates:
                episode = candidates[0]
                episode.thread_id, episode.started_at, episode.new_push = thread, started, arrived
                self.threads[thread] = episode
        if episode is None:
            self.unmatched.add(thread)
            return
        if event["state"] == "end" and episode.end_push is None:
            episode.end_push = arrived
            if event.get("ended_at"):
                episode.ended_at = datetime.datetime.fromisoformat(event["ended_at"]).timestamp()
            task = asyncio.create_task(self._await_clip(episode, str(event["id"])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _await_clip(self, episode: Episode, event_id: str) -> None:
        """Poll the thread's clip every 100 ms until it is ready (40 s at most)."""
        deadline = time.monotonic() + 40
        clip_id = None
        while time.monotonic() < deadline:
            try:
                if clip_id is None:
                    clip_id = (
                        (await self.http.get(f"/api/v1/events/{event_id}")).json().get("clip_id")
                    )
                if clip_id is not None:
                    media = (await self.http.get(f"/api/v1/media/{clip_id}")).json()
                    if media.get("state") == "ready":
                        episode.clip_ready = time.time()
                        episode.clip_duration_s = media.get("duration_s")
                        return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(POLL_S)

    def clips_pending(self) -> int:
        return len(self._tasks)

    async def analysis(self) -> dict[str, dict[str, Any]]:
        """Each device's ``analysis`` as the cloud says it."""
        listed = (await self.http.get("/api/v1/devices")).json()["devices"]
        return {d["id"]: d.get("analysis") or {} for d in listed}


async def onboard(owner: Owner, tmp: Path, n: int, gate: asyncio.Semaphore) -> Agent:
    body = {
        "device_name": f"Cam {n}",
        "camera_model": "SIM-1",
        "wifi_ssid": "B",
        "wifi_password": "",
    }
    async with gate:
        ticket = (await owner.http.post("/api/v1/onboarding", json=body)).json()
        payload = ticket["payload"]
        state = tmp / f"camera-{n}.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "device_sim",
            "onboard",
            "--payload",
            payload,
            "--state",
            str(state),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"onboarding failed: {err.decode()[-2000:]}")
    return Agent(json.loads(state.read_text())["device_id"], state, tmp / f"camera-{n}.log")


def start_agent(agent: Agent, episodes: list[Episode]) -> subprocess.Popen[bytes]:
    motion = [a for e in episodes for a in ("--motion", f"{e.offset_s:.2f}:{e.duration_s:g}")]
    args = ["run", "--state", str(agent.state), "--size", "640x360", "--fps", "15"]
    args += ["--codec", "h264", *motion]
    with open(agent.log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *args],
            cwd=ROOT,
            env={**os.environ, "ICE_HOST_ADDRESSES": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def source_start(agent: Agent) -> float | None:
    found = re.search(r"bench: source started at ([\d.]+)", agent.log.read_text(errors="replace"))
    return float(found.group(1)) if found else None


def attach_times(log: Path) -> dict[str, float]:
    """The first ``attached to the upstream`` of each camera in the relay's log."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = ATTACHED.match(line)
        if match and match.group(2) not in found:
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found[match.group(2)] = when.timestamp()  # local time, as logging wrote it
    return found


def start_relay(url: str, relay_id: str, log: Path, yolo: str | None) -> subprocess.Popen[bytes]:
    env = {
        "CLOUD_URL": url,
        "RELAY_ID": relay_id,
        "RELAY_SECRET": RELAY_SECRET,
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "YOLO_MODEL": yolo or "none",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(log.parent / "yolo"),
        "ANALYSIS_FPS": f"{ANALYSIS_FPS:g}",
        "ANALYSIS_CAPACITY": "64",
    }
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--log-level", "INFO"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_relay_online(mongodb_url: str, relay_id: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongodb_url) as client:
        relays: Collection[dict[str, Any]] = client[DATABASE]["relays"]
        while relays.find_one({"relay_id": relay_id, "online": True}) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay {relay_id} did not register")
            time.sleep(0.2)


@dataclass
class Stack:
    url: str
    mongodb_url: str
    cloud: subprocess.Popen[bytes]
    db: subprocess.Popen[bytes]
    tmp: Path


async def sample_rss(pid: int, into: list[tuple[float, float]]) -> None:
    """The relay's RSS every 5 s while it runs."""
    with suppress(OSError, ValueError):
        while True:
            into.append((time.time(), rss_mb(pid)))
            await asyncio.sleep(5.0)


def memory_trend(r: Round) -> tuple[float, float, float, float] | None:
    """The relay's RSS over the episodes: at their start, at their end, its peak, and the
    least-squares slope over their second half (MB a minute): buffers fill in the first
    minutes (pre-roll, clips, the detector), a leak keeps growing after."""
    during = [(t, mb) for t, mb in r.rss if r.episodes_from <= t <= r.episodes_to]
    if len(during) < 6:
        return None
    half = during[len(during) // 2 :]
    mean_t = statistics.mean(t for t, _ in half)
    mean_mb = statistics.mean(mb for _, mb in half)
    spread = sum((t - mean_t) ** 2 for t, _ in half)
    slope = sum((t - mean_t) * (mb - mean_mb) for t, mb in half) / spread * 60 if spread else 0.0
    return during[0][1], during[-1][1], max(mb for _, mb in during), slope


def start_stack(stack: ExitStack, tmp: Path) -> Stack:
    """SecantusDB, redis-server and the cloud on loopback, stopped when ``stack`` closes."""
    mongodb_url, db = stack.enter_context(secantus_process(tmp / "db"))
    redis_url = stack.enter_context(redis_server())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PUBLIC_URL": url,
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": DATABASE,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "DATA_DIR": str(tmp),
        "RELAY_SECRET": RELAY_SECRET,
        "REDIS_URL": redis_url,
    }
    cloud = start_cloud(env, tmp / "cloud.log", port, "--host", "127.0.0.1")
    stack.callback(stop, cloud)
    return Stack(url, mongodb_url, cloud, db, tmp)


def thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each thread of a process, by thread id."""
    found: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError, ValueError):
            found[int(task.name)] = cpu_ticks_of(task / "stat")
    return found


def cpu_ticks_of(stat: Path) -> int:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def run_round(
    stack: Stack, owner: Owner, agents: list[Agent], args: argparse.Namespace
) -> Round:
    n = len(agents)
    result = Round(n)
    relay_id = f"bench-relay-{n}-{secrets.token_hex(2)}"
    relay_log = stack.tmp / f"{relay_id}.log"
    relay = start_relay(stack.url, relay_id, relay_log, args.yolo)
    sampler = asyncio.create_task(sample_rss(relay.pid, result.rss))
    try:
        await asyncio.to_thread(wait_relay_online, stack.mongodb_url, relay_id, relay)
        lead = 25.0 + 2.0 * n  # seconds for n agents to start, connect and be attached
        episodes: dict[str, list[Episode]] = {}
        for i, agent in enumerate(agents):
            stagger = (i * 0.618034 % 1.0) * args.gap / 2
            episodes[agent.device_id] = [
                Episode(agent.device_id, lead + stagger + k * args.gap, args.episode_s)
                for k in range(args.episodes)
            ]
        owner.episodes = [e for es in episodes.values() for e in es]
        for agent in agents:
            agent.source_start, agent.attached = None, None
            agent.process = start_agent(agent, episodes[agent.device_id])
            await asyncio.sleep(0.3)
        # every camera analysed by this node
        deadline = time.monotonic() + lead + 30
        while True:
            await asyncio.sleep(1.0)
            states = await owner.analysis()
            attached = attach_times(relay_log)
            active = [
                a
                for a in agents
                if states.get(a.device_id, {}).get("relay_id") == relay_id
                and a.device_id in attached
            ]
            if len(active) == n:
                break
            if time.monotonic() > deadline:
                print(f"  only {len(active)}/{n} cameras attached; going on", flush=True)
                break
        attached = attach_times(relay_log)
        for agent in agents:
            agent.source_start = source_start(agent)
            agent.attached = attached.get(agent.device_id)
            for episode in episodes[agent.device_id]:
                if agent.source_start is not None:
                    episode.start = agent.source_start + episode.offset_s
                    episode.counted = (
                        agent.attached is not None and agent.attached <= episode.start - WARM_S
                    )
        last_end = max(e.start + e.duration_s for e in owner.episodes)
        result.episodes_from = min(e.start for e in owner.episodes)
        result.episodes_to = last_end
        print(
            f"  N={n}: all attached {max((a.attached or 0) for a in agents) - time.time():+.0f} s"
            f" ago; episodes until {last_end - time.time():+.0f} s",
            flush=True,
        )
        # the episodes, their events and clips
        await asyncio.sleep(max(0.0, last_end - time.time()) + QUIET_S + 1.0)
        until = time.monotonic() + 45
        while time.monotonic() < until and any(  # noqa: ASYNC110
            e.new_push is not None and e.end_push is None for e in owner.episodes
        ):
            await asyncio.sleep(0.5)
        while owner.clips_pending() and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        await asyncio.sleep(3.0)
        # the CPU window
        pids = {
            "relay": [relay.pid],
            "agents": [a.process.pid for a in agents if a.process is not None],
            "cloud": [stack.cloud.pid],
            "db": [stack.db.pid],
        }
        before = {k: sum(cpu_ticks(p) for p in v) for k, v in pids.items()}
        threads_before = thread_ticks(relay.pid)
        busy0, _ = machine_ticks()
        t0 = time.monotonic()
        await asyncio.sleep(args.window)
        after = {k: sum(cpu_ticks(p) for p in v) for k, v in pids.items()}
        threads_after = thread_ticks(relay.pid)
        busy1, _ = machine_ticks()
        window = time.monotonic() - t0
        result.window_s = window

        def share(ticks: int) -> float:
            return 100.0 * ticks / CLOCK_TICKS / window

        result.relay_cpu = share(after["relay"] - before["relay"])
        result.agents_cpu = share(after["agents"] - before["agents"])
        result.cloud_cpu = share(after["cloud"] - before["cloud"])
        result.db_cpu = share(after["db"] - before["db"])
        result.machine_cpu = share(busy1 - busy0)
        result.relay_rss_mb = rss_mb(relay.pid)
        spent = {t: n - threads_before.get(t, 0) for t, n in threads_after.items()}
        result.loop_cpu = share(spent.pop(relay.pid, 0))
        result.threads_cpu = sorted((share(n) for n in spent.values() if n), reverse=True)
        result.agent_rss_mb = statistics.mean(rss_mb(p) for p in pids["agents"])
        # the node stops: its count of frames analysed
        stopped_at = time.time()
        stop_group(relay)
        text = relay_log.read_text(errors="replace")
        found = re.search(r"relay stopped: (\{.*\})", text)
        if found:
            result.stats = ast.literal_eval(found.group(1))
            result.frames_analysed = int(result.stats.get("frames_analysed", 0))
        result.analysed_s = sum(
            max(0.0, stopped_at - a.attached) for a in agents if a.attached is not None
        )
    finally:
        sampler.cancel()
        stop_group(relay)
        for agent in agents:
            if agent.process is not None:
                stop_group(agent.process)
    await asyncio.sleep(1.0)  # the end pushes of threads the node closed as it stopped
    result.episodes = [e for e in owner.episodes if e.counted]
    result.unmatched = len(owner.unmatched)
    owner.unmatched = set()
    owner.episodes = []
    return result


def row(values: list[float]) -> str:
    if not values:
        return f"{'-':>6}{'-':>6}{'-':>6}"
    return f"{percentile(values, 50):>6.2f}{percentile(values, 95):>6.2f}{max(values):>6.2f}"


def report(rounds: list[Round], args: argparse.Namespace, elapsed: float) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "cloud", "relay", "device_sim", "peer", "protocol"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"\nunattended analysis, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit or '?'}{' (product tree modified)' if dirty else ''}, "
        f"{os.cpu_count()} CPUs, H.264 640x360 at 15 fps, ANALYSIS_FPS={ANALYSIS_FPS:g}, "
        f"YOLO {args.yolo or 'none'}, {args.window:g} s window ({elapsed:.0f} s in all)"
    )
    print("\nCPU in % of one core over the window (no motion); RSS in MB")
    print(
        f"{'N':>3}{'relay':>8}{'/cam':>7}{'cams/core':>10}{'fps/cam':>9}{'RSS':>7}"
        f"{'agents':>8}{'/agent':>8}{'cloud':>7}{'db':>6}{'others':>8}{'machine':>9}  target"
    )
    for r in rounds:
        per = r.relay_cpu / r.cameras
        per_core = 100.0 / per if per else float("inf")
        fps = r.frames_analysed / r.analysed_s if r.analysed_s else 0.0
        ours = r.relay_cpu + r.agents_cpu + r.cloud_cpu + r.db_cpu
        ok = per_core >= TARGET_CAMERAS_PER_CORE and fps >= 0.95 * ANALYSIS_FPS
        print(
            f"{r.cameras:>3}{r.relay_cpu:>8.1f}{per:>7.2f}{per_core:>10.1f}{fps:>9.2f}"
            f"{r.relay_rss_mb:>7.0f}{r.agents_cpu:>8.1f}{r.agents_cpu / r.cameras:>8.1f}"
            f"{r.cloud_cpu:>7.1f}{r.db_cpu:>6.1f}{max(0.0, r.machine_cpu - ours):>8.1f}"
            f"{r.machine_cpu:>9.1f}  >= {TARGET_CAMERAS_PER_CORE} cams/core at 5 fps "
            f"{'PASS' if ok else 'MISS'}"
        )
    for r in rounds:
        print(f"  N={r.cameras}: relay stats {r.stats}, {r.analysed_s:.0f} camera-s analysed")
        shares = " ".join(f"{v:.1f}" for v in r.threads_cpu)
        print(
            f"    relay threads: main (event loop) {r.loop_cpu:.1f} %, "
            f"{len(r.threads_cpu)} others {sum(r.threads_cpu):.1f} %: {shares}"
        )

    print("\nseconds, p50 / p95 / max; events counted: episodes the node watched 8 s before")
    print(
        f"{'N':>3}{'eps':>5}{'got':>5}{'motion -> new push':>18}{'-> started_at':>18}"
        f"{'started_at -> push':>18}  target"
    )
    all_new: list[float] = []
    for r in rounds:
        new = [e.new_push - e.start for e in r.episodes if e.new_push is not None]
        first = [e.started_at - e.start for e in r.episodes if e.started_at is not None]
        push = [
            e.new_push - e.started_at
            for e in r.episodes
            if e.new_push is not None and e.started_at is not None
        ]
        all_new += new
        verdict = "PASS" if new and percentile(new, 95) <= TARGET_EVENT_P95_S else "MISS"
        print(
            f"{r.cameras:>3}{len(r.episodes):>5}{len(new):>5}{row(new)}{row(first)}{row(push)}"
            f"  p95 <= {TARGET_EVENT_P95_S:g} {verdict}"
        )
    if all_new:
        verdict = "PASS" if percentile(all_new, 95) <= TARGET_EVENT_P95_S else "MISS"
        print(f"all{'':>5}{len(all_new):>5}{row(all_new)}{'':>36}  {verdict}")

    print(
        f"\nclips, seconds, p50 / p95 / max (post-roll {POST_ROLL_S:g} s, end {QUIET_S:g} s "
        "after the last motion)"
    )
    print(
        f"{'N':>3}{'ends':>5}{'ready':>6}{'end push -> ready':>18}{'ended_at -> ready':>18}"
        f"{'+5 s -> ready':>18}{'clip length':>18}  target"
    )
    all_clip: list[float] = []
    for r in rounds:
        done = [e for e in r.episodes if e.clip_ready is not None and e.end_push is not None]
        ends = sum(e.end_push is not None for e in r.episodes)
        from_push = [e.clip_ready - e.end_push for e in done if e.clip_ready and e.end_push]
        from_end = [e.clip_ready - e.ended_at for e in done if e.clip_ready and e.ended_at]
        upload = [v - POST_ROLL_S for v in from_end]
        length = [float(e.clip_duration_s) for e in done if e.clip_duration_s is not None]
        all_clip += from_push
        ok = bool(from_push) and max(from_push) <= TARGET_CLIP_S and len(done) == ends
        print(
            f"{r.cameras:>3}{ends:>5}{len(done):>6}{row(from_push)}{row(from_end)}{row(upload)}"
            f"{row(length)}  <= {TARGET_CLIP_S:g} {'PASS' if ok else 'MISS'}"
        )
    if all_clip:
        print(f"all{'':>5}{len(all_clip):>6}{row(all_clip)}")
    unmatched = sum(r.unmatched for r in rounds)
    print(f"\nmotion threads matching no episode: {unmatched}")
    print("\nrelay RSS over the episodes, MB: first, last, peak; slope over the second half")
    for r in rounds:
        trend = memory_trend(r)
        if trend is not None:
            first, last, peak, slope = trend
            minutes = (r.episodes_to - r.episodes_from) / 60
            print(
                f"{r.cameras:>3} cameras, {minutes:.1f} min: {first:.0f} -> {last:.0f}"
                f" (peak {peak:.0f}), {slope:+.1f} MB/min"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--window", type=float, default=30.0, help="CPU window, seconds")
    parser.add_argument("--episodes", type=int, default=3, help="motion episodes per camera")
    parser.add_argument("--episode-s", type=float, default=6.0, help="length of an episode")
    parser.add_argument("--gap", type=float, default=20.0, help="between a camera's episodes")
    parser.add_argument(
        "--yolo",
        nargs="?",
        const="yolo11n.yaml",
        default=None,
        metavar="MODEL",
        help="YOLO_MODEL for the node (default none; bare --yolo: yolo11n.yaml, random weights)",
    )
    parser.add_argument("--json", type=Path, help="write the raw figures here after each round")
    parser.add_argument("--from-json", type=Path, help="print the tables of an earlier --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        loaded = [
            Round(**{**r, "episodes": [Episode(**e) for e in r["episodes"]]})
            for r in saved["rounds"]
        ]
        report(loaded, args, saved["elapsed"])
        return
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    started = time.monotonic()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="vc-analysis-") as name, ExitStack() as stack:
        tmp = Path(name)
        everything = start_stack(stack, tmp)
        url = everything.url
        owner = await Owner.register(url)
        ready = asyncio.Event()
        listener = asyncio.create_task(owner.listen(ready))
        await asyncio.wait_for(ready.wait(), 15)
        gate = asyncio.Semaphore(4)
        agents = list(
            await asyncio.gather(*(onboard(owner, tmp, n, gate) for n in range(max(args.cameras))))
        )
        print(f"  {len(agents)} cameras onboarded", flush=True)
        try:
            for n in args.cameras:
                rounds.append(await run_round(everything, owner, agents[:n], args))
                if args.json:
                    raw = {
                        "elapsed": time.monotonic() - started,
                        "rounds": [dataclasses.asdict(r) for r in rounds],
                    }
                    args.json.write_text(json.dumps(raw, indent=1))
                await asyncio.sleep(5.0)  # the cameras go offline before the next round
        finally:
            listener.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await listener
            await owner.http.aclose()
    report(rounds, args, time.monotonic() - started)


if __name__ == "__main__":
    asyncio.run(main())
