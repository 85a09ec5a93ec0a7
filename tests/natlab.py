"""A NAT lab in network namespaces: homes behind real Linux NATs around a public segment.

Built inside the namespace of the caller, which must be loopback-only (``scripts/hermetic``,
as ``make test`` runs the suites): that namespace becomes the "internet". Nothing the lab
starts can reach beyond the namespaces it makes.

    test namespace = the public segment, bridge vc-pub 203.0.113.1/24 (TEST-NET-3)
      .10 cloud (HTTP + WebSocket)   .20 coturn (TURN and STUN, UDP and TCP, port 3478)
      .30 relay node (ICE host)      .40 .41 .42 NAT probe responders
      redis-server and SecantusDB on 127.0.0.1 (only the cloud talks to them)
         |                      |                           |
      vcpN (veth)            vcpN (veth)                 vcpN (veth)
         |                      |                           |
      home "none":           router (wan 203.0.113.10N)   [wire: a userspace delay line]
      eth0 203.0.113.10N       nft: NAT + filter            router ...
                               lan 192.168.N.1/24
                                  |
                               home: eth0 192.168.N.10/24, default via the router

How namespaces are made. ``ip netns add`` does work inside ``unshare --net`` as root
(checked), but it bind-mounts the namespace under the *machine's* ``/run/netns``: one name
space shared with every other process and every concurrent test run, and mounts a crashed
run leaves behind; under ``scripts/hermetic``'s unprivileged branch (``unshare
--map-root-user``) it needs a mount outside the user namespace's reach. So each lab
namespace is held by a process instead, ``unshare --net -- sleep infinity`` (as
``tests/web/network.py`` does), and commands run inside it with
``nsenter --net=/proc/PID/ns/net``. Every process the lab starts, holders included, is
launched through ``setpriv --pdeathsig KILL``: should the test process die without running
its ``finally`` blocks (SIGKILL; checked), they die with it and the namespaces, with their
veth pairs, routes and nftables rulesets, vanish with their last process. The kernel sends
that signal when the *thread* that started the process ends: start lab processes from the
thread that owns the lab, never from ``asyncio.to_thread``.

The public segment has a default route into a veth that leads nowhere: packets for any
other address (a home's private host candidate, say) vanish silently as they would on the
internet, instead of failing with "network unreachable" (coturn then drops the allocation).
coturn runs with the production configuration, ``deploy/turnserver.conf.template``, which
refuses to relay to private networks; TLS is off (no certificate here).

NAT types (RFC 4787 words), each made by nftables on the home's router
(:func:`router_rules`); :func:`probe_nat` observes each one's behaviour:

- ``none``: the host sits on the public segment with a public address.
- ``eim``: ``masquerade``. Linux keeps the source port when it can, so one socket keeps its
  public port whatever the destination (endpoint-independent mapping); conntrack lets in
  only replies from the exact address and port a packet went to
  (address-and-port-dependent filtering).
- ``symmetric``: ``masquerade fully-random``: a random public port for every new
  destination (address-and-port-dependent mapping), filtering as above. (``random`` and
  ``random,persistent`` behave the same here; ``persistent`` alone maps like ``eim``.)
- ``udp_blocked``: as ``eim``, but the router drops every UDP packet from the home: only
  TCP leaves, so TURN over TCP is the only way for media.

Impairment (the kernel here has no ``netem``): loss with an nftables
``numgen random mod 100 < N drop`` rule on a home's router (both directions), delay with a
userspace delay line (:func:`run_wire`) between the router and the public bridge, which
copies Ethernet frames between two veths through ``AF_PACKET`` sockets after a fixed delay.

Processes in the homes: the camera agent (``python -m device_sim run``) and a long-lived
viewer agent (``python -m tests.natlab viewer``, :func:`run_viewer`) that watches on command
with ``device_sim.viewer.Viewer`` and reports route, selected pair, TURN transport and
time to first frame as JSON lines.
"""

import argparse
import ast
import asyncio
import base64
import contextlib
import heapq
import json
import os
import secrets
import select
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # python tests/natlab.py, bench/
    sys.path.insert(0, str(ROOT))

from tests.servers import free_port, stop  # noqa: E402

PUBLIC_PREFIX = "203.0.113"  # TEST-NET-3 (RFC 5737): never a real address
GATEWAY_ADDRESS = f"{PUBLIC_PREFIX}.1"
CLOUD_ADDRESS = f"{PUBLIC_PREFIX}.10"
TURN_ADDRESS = f"{PUBLIC_PREFIX}.20"
RELAY_ADDRESS = f"{PUBLIC_PREFIX}.30"
PROBE_ADDRESSES = (f"{PUBLIC_PREFIX}.40", f"{PUBLIC_PREFIX}.41", f"{PUBLIC_PREFIX}.42")
TURN_PORT = 3478
CLOUD_PORT = 8080
BRIDGE = "vc-pub"
VOID = "vc-void"
VOID_GATEWAY = "198.18.255.254"  # RFC 2544 benchmarking range: never routed
VOID_MAC = "02:00:5e:00:00:fe"
PASSWORD = "Natlab-password-42"
REALM = "visionconnect.test"
RESULT_PREFIX = "NATLAB "  # the viewer agent's result lines on stdout


class Nat(StrEnum):
    NONE = "none"
    EIM = "eim"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp_blocked"


class LabError(RuntimeError):
    """The lab could not be built or a process in it did not behave."""


def unavailable() -> str | None:
    """Why the lab cannot be built here, or None when it can."""
    names = _interfaces()
    if names != {"lo"}:
        return f"needs a loopback-only network namespace (scripts/hermetic); found {sorted(names)}"
    tools = ("ip", "nft", "unshare", "nsenter", "setpriv", "turnserver", "redis-server")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/install-system-deps)"
    return None


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


@dataclass
class Namespace:
    """A network namespace held by a ``sleep`` process (``None``: the caller's own)."""

    name: str
    holder: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net" if self.holder else "/proc/self/ns/net"

    @property
    def pid(self) -> str:
        return str(self.holder.pid) if self.holder else str(os.getpid())

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (and killed when the lab's process dies)."""
        inside = ["nsenter", f"--net={self.path}", "--"] if self.holder else []
        return [*DIE_WITH_PARENT, *inside, *argv]

    def run(self, *argv: str, stdin: str | None = None) -> str:
        return _run(self.command(argv), stdin)

    def ip(self, *args: str) -> str:
        return self.run("ip", *args)

    def nft(self, ruleset: str) -> None:
        self.run("nft", "-f", "-", stdin=ruleset)

    def sysctl(self, name: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{name}={value}")


def new_namespace(name: str) -> Namespace:
    holder = subprocess.Popen([*DIE_WITH_PARENT, "unshare", "--net", "--", "sleep", "infinity"])
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 5
    while True:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                break
        if holder.poll() is not None or time.monotonic() > deadline:
            stop(holder)
            raise LabError(f"could not create the network namespace {name}")
        time.sleep(0.01)
    namespace = Namespace(name, holder)
    namespace.ip("link", "set", "lo", "up")
    namespace.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    namespace.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    return namespace


def router_rules(nat: Nat) -> str:
    """The nftables ruleset of a home's router (``wan``: public side, ``lan``: the home).

    Counters: ``udp_dropped`` (UDP the home sent and the router dropped), ``turn_tcp``
    (TCP packets from the home to coturn's port: TURN over TCP).
    """
    masquerade = "masquerade fully-random" if nat is Nat.SYMMETRIC else "masquerade"
    turn_tcp = f'iifname "lan" ip daddr {TURN_ADDRESS} tcp dport {TURN_PORT} counter name turn_tcp'
    blocked = 'iifname "lan" meta l4proto udp counter name udp_dropped drop'
    outbound = f"{turn_tcp} accept\n        {blocked}" if nat is Nat.UDP_BLOCKED else turn_tcp
    return f"""
table ip lab {{
    counter udp_dropped {{ }}
    counter turn_tcp {{ }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {outbound}
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
}}
"""


def loss_rules(percent: int) -> str:
    """Drop ``percent`` % of the packets a router forwards, both ways (0: none)."""
    drop = f"numgen random mod 100 < {percent} counter drop" if percent else ""
    return f"""
table ip impair {{ }}
delete table ip impair
table ip impair {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        {drop}
    }}
}}
"""


@dataclass
class Home:
    """A home network: ``host`` is where its devices run, ``address`` their address."""

    name: str
    nat: Nat
    index: int
    host: Namespace
    router: Namespace | None
    wire: subprocess.Popen[bytes] | None = None

    @property
    def public_address(self) -> str:
        return f"{PUBLIC_PREFIX}.{100 + self.index}"

    @property
    def address(self) -> str:
        return self.public_address if self.nat is Nat.NONE else f"192.168.{self.index}.10"

    def set_loss(self, percent: int) -> None:
        """``percent`` % of the packets through this home's router dropped, each way."""
        if self.router is None:
            raise LabError(f"{self.name} has no router to drop packets on")
        self.router.nft(loss_rules(percent))

    def set_delay(self, one_way_ms: float) -> None:
        """The delay line between this home and the public segment (``wire=True``)."""
        if self.wire is None or self.wire.stdin is None:
            raise LabError(f"{self.name} was made without a delay line (wire=True)")
        self.wire.stdin.write(f"delay {one_way_ms}\n".encode())
        self.wire.stdin.flush()

    def counter(self, name: str) -> int:
        """Packets counted by the router's named nftables counter."""
        if self.router is None:
            return 0
        listed = json.loads(self.router.run("nft", "-j", "list", "counter", "ip", "lab", name))
        for item in listed["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise LabError(f"no counter {name} on {self.name}")


@dataclass
class Camera:
    device_id: str
    home: Home
    process: subprocess.Popen[bytes]
    log: Path

    def connected_pairs(self) -> list[dict[str, Any]]:
        """The selected pairs the camera logged ("connected via {...}"), oldest first."""
        pairs = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "connected via {" in line:
                pairs.append(ast.literal_eval(line[line.index("connected via ") + 14 :]))
        return pairs


class ViewerAgent:
    """``python -m tests.natlab viewer`` in a home: one signed-in viewer, sessions on demand."""

    def __init__(self, home: Home, process: subprocess.Popen[bytes], log: Path) -> None:
        self.home = home
        self.process = process
        self.log = log

    def watch(
        self, device_id: str, mode: str = "p2p", hold_s: float = 0.0, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """One session: the agent's report (see :func:`run_viewer`). Blocking."""
        command = {"device_id": device_id, "mode": mode, "hold_s": hold_s, "timeout_s": timeout_s}
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        return self._result(timeout_s + hold_s + 30)

    def ready(self, timeout_s: float = 60) -> None:
        """Wait until the agent has signed in."""
        if not self._result(timeout_s).get("ready"):
            raise LabError(f"the viewer agent in {self.home.name} did not start")

    def _result(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if not ready:
                if self.process.poll() is not None:
                    break
                continue
            line = self.process.stdout.readline().decode()
            if not line:
                break
            if line.startswith(RESULT_PREFIX):
                result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
                return result
        tail = self.log.read_text(errors="replace")[-3000:]
        raise LabError(f"the viewer agent in {self.home.name} did not answer:\n{tail}")


@dataclass
class Services:
    cloud_url: str
    database: str
    turn_secret: str
    relay_secret: str
    relay_id: str = "natlab-relay"


@dataclass
class Lab:
    """The lab (see the module docstring). Use :func:`natlab`; ``close`` tears it down."""

    directory: Path
    public: Namespace = field(default_factory=lambda: Namespace("public"))
    homes: dict[str, Home] = field(default_factory=dict)
    namespaces: list[Namespace] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    services: Services | None = None

    # -- the network ------------------------------------------------------------------------

    def build_public(self) -> None:
        self.public.ip("link", "add", "name", BRIDGE, "type", "bridge")
        self.links.append(BRIDGE)
        addresses = (GATEWAY_ADDRESS, CLOUD_ADDRESS, TURN_ADDRESS, RELAY_ADDRESS, *PROBE_ADDRESSES)
        for address in addresses:
            self.public.ip("addr", "add", f"{address}/24", "dev", BRIDGE)
        self.public.ip("link", "set", "dev", BRIDGE, "up")
        # The rest of the internet (module docstring). No dummy link type in this kernel: a
        # veth whose peer gets frames for a MAC nobody has.
        self.public.ip("link", "add", "name", VOID, "type", "veth", "peer", "name", VOID + "-x")
        self.links.append(VOID)
        for link in (VOID, VOID + "-x"):
            self.public.ip("link", "set", "dev", link, "up")
        self.public.ip(
            "neigh", "add", VOID_GATEWAY, "lladdr", VOID_MAC, "dev", VOID, "nud", "permanent"
        )
        self.public.ip("route", "add", "default", "via", VOID_GATEWAY, "dev", VOID, "onlink")

    @staticmethod
    def _veth(where: Namespace, name: str, peer: Namespace, peer_name: str) -> None:
        """A veth pair: ``name`` in ``where``, ``peer_name`` in ``peer``."""
        where.ip(
            "link",
            "add",
            "name",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.pid,
        )

    def _namespace(self, name: str) -> Namespace:
        namespace = new_namespace(name)
        self.namespaces.append(namespace)
        return namespace

    def _port(self, index: int, peer: Namespace, peer_name: str) -> None:
        """A veth from the public bridge (``vcpN``) to ``peer_name`` in ``peer``."""
        link = f"vcp{index}"
        self._veth(self.public, link, peer, peer_name)
        self.links.append(link)
        self.public.ip("link", "set", "dev", link, "master", BRIDGE, "up")

    def add_home(self, name: str, nat: Nat, *, wire: bool = False) -> Home:
        """A home behind ``nat``; ``wire``: with a delay line towards the public segment."""
        index = len(self.homes) + 1
        if index > 99:
            raise LabError("at most 99 homes")
        host = self._namespace(name)
        router = self._namespace(f"{name}-router") if nat is not Nat.NONE else None
        home = Home(name, nat, index, host, router)
        outside, outside_link = (router, "wan") if router else (host, "eth0")
        if wire:
            line = self._namespace(f"{name}-wire")
            self._port(index, line, "wire0")
            self._veth(line, "wire1", outside, outside_link)
            for link in ("wire0", "wire1"):
                line.ip("link", "set", "dev", link, "promisc", "on", "up")
            with open(self.directory / f"{name}-wire.log", "ab") as log:
                home.wire = subprocess.Popen(
                    line.command([sys.executable, "-m", "tests.natlab", "wire", "wire0", "wire1"]),
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.processes.append(home.wire)
        else:
            self._port(index, outside, outside_link)
        outside.ip("addr", "add", f"{home.public_address}/24", "dev", outside_link)
        outside.ip("link", "set", "dev", outside_link, "up")
        outside.ip("route", "add", "default", "via", GATEWAY_ADDRESS)
        if router is not None:
            self._veth(router, "lan", host, "eth0")
            router.ip("addr", "add", f"192.168.{index}.1/24", "dev", "lan")
            router.ip("link", "set", "dev", "lan", "up")
            host.ip("addr", "add", f"{home.address}/24", "dev", "eth0")
            host.ip("link", "set", "dev", "eth0", "up")
            host.ip("route", "add", "default", "via", f"192.168.{index}.1")
            router.sysctl("net.ipv4.ip_forward", "1")
            router.nft(router_rules(nat))
        self.homes[name] = home
        return home

    # -- processes --------------------------------------------------------------------------

    def spawn(
        self,
        namespace: Namespace,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        *,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        """``argv`` in ``namespace``, output to ``log``; stopped by :meth:`close` if still up."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                namespace.command(argv),
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out,
                stderr=out,
            )
        self.processes.append(process)
        return process

    def start_services(self, mongodb_url: str) -> Services:
        """coturn, redis-server, the cloud and a relay node on the public segment."""
        turn_secret = "natlab-turn-" + secrets.token_hex(8)
        relay_secret = "natlab-relay-" + secrets.token_hex(8)
        self.start_coturn(turn_secret)
        redis_url = self.start_redis()
        database = "natlab_" + secrets.token_hex(4)
        cloud_url = f"http://{CLOUD_ADDRESS}:{CLOUD_PORT}"
        env = {
            "PUBLIC_URL": cloud_url,
            "MONGODB_URL": mongodb_url,
            "MONGODB_DATABASE": database,
            "REDIS_URL": redis_url,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": str(self.directory),
            "RELAY_SECRET": relay_secret,
            "STUN_URLS": f"stun:{TURN_ADDRESS}:{TURN_PORT}",
            "TURN_URLS": (
                f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=udp,"
                f"turn:{TURN_ADDRESS}:{TURN_PORT}?transport=tcp"
            ),
            "TURN_SECRET": turn_secret,
            "ONBOARDING_TICKETS_PER_HOUR": "1000",
            "LOGIN_MAX_ATTEMPTS_PER_ADDRESS": "10000",
        }
        argv = [sys.executable, "-m", "cloud", "--host", CLOUD_ADDRESS, "--port", str(CLOUD_PORT)]
        cloud = self.spawn(self.public, argv, self.directory / "cloud.log", env)
        _wait(
            lambda: httpx.get(f"{cloud_url}/readyz", timeout=1).status_code == 200,
            cloud,
            self.directory / "cloud.log",
            "the cloud",
            60,
        )
        self.services = Services(cloud_url, database, turn_secret, relay_secret)
        self.start_relay(mongodb_url)
        return self.services

    def start_redis(self) -> str:
        """redis-server on loopback (only the cloud uses it), no persistence; its URL."""
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        log = self.directory / "redis.log"
        redis = self.spawn(self.public, argv, log)

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")

        _wait(answers, redis, log, "redis-server", 10)
        return f"redis://127.0.0.1:{port}/0"

    def start_coturn(self, secret: str) -> None:
        """coturn with the production configuration (``deploy/turnserver.conf.template``:
        no relaying to private networks, quotas), listening and relaying on its public
        address; TLS off (no certificate here)."""
        template = (ROOT / "deploy" / "turnserver.conf.template").read_text()
        values = {
            "TURN_SECRET": secret,
            "TURN_REALM": REALM,
            "EXTERNAL_IP": TURN_ADDRESS,
            "RELAY_MIN_PORT": "49152",
            "RELAY_MAX_PORT": "49999",
            "TURN_TLS_CERT": str(self.directory / "unused.crt"),  # --no-tls below
            "TURN_TLS_KEY": str(self.directory / "unused.key"),
        }
        config = self.directory / "turnserver.conf"
        config.write_text(string.Template(template).substitute(values))
        log = self.directory / "coturn.log"
        argv = [
            "turnserver",
            "-n",
            "-c",
            str(config),
            "--listening-ip",
            TURN_ADDRESS,
            "--relay-ip",
            TURN_ADDRESS,
            "--no-tls",
            "--no-dtls",
            "--pidfile",
            str(self.directory / "turnserver.pid"),
            "--db",
            str(self.directory / "turndb"),
        ]
        coturn = self.spawn(self.public, argv, log)
        _wait(lambda: stun_mapped(TURN_ADDRESS, TURN_PORT) is not None, coturn, log, "coturn", 15)

    def start_relay(self, mongodb_url: str) -> None:
        from pymongo import MongoClient
        from pymongo.collection import Collection

        assert self.services is not None
        env = {
            "CLOUD_URL": self.services.cloud_url,
            "RELAY_ID": self.services.relay_id,
            "RELAY_SECRET": self.services.relay_secret,
            "ICE_HOST_ADDRESSES": RELAY_ADDRESS,
            "YOLO_MODEL": "none",
            "ANALYSIS_FPS": "5",
        }
        log = self.directory / "relay.log"
        argv = [sys.executable, "-m", "relay", "--log-level", "INFO"]
        relay = self.spawn(self.public, argv, log, env)
        client: MongoClient[dict[str, Any]]
        with MongoClient(mongodb_url) as client:
            relays: Collection[dict[str, Any]] = client[self.services.database]["relays"]
            query = {"relay_id": self.services.relay_id, "online": True}
            _wait(lambda: relays.find_one(query) is not None, relay, log, "the relay node", 60)

    def account(self, prefix: str = "owner") -> tuple[str, dict[str, str]]:
        """A new account: its email and authorisation headers (password :data:`PASSWORD`)."""
        assert self.services is not None
        email = f"{prefix}.{secrets.token_hex(5)}@example.com"
        body = {"email": email, "password": PASSWORD}
        with httpx.Client(base_url=self.services.cloud_url, timeout=15) as http:
            created = http.post("/api/v1/auth/register", json=body)
            if created.status_code != 201:
                raise LabError(f"register: {created.status_code} {created.text}")
            tokens = http.post("/api/v1/auth/login", json=body).json()
        return email, {"Authorization": f"Bearer {tokens['access_token']}"}

    def onboard(self, home: Home, headers: Mapping[str, str], name: str) -> Path:
        """The owner's QR code, scanned and activated by a camera in ``home``: its state."""
        assert self.services is not None
        body = {
            "device_name": name,
            "camera_model": "SIM-1",
            "wifi_ssid": "Home",
            "wifi_password": "wifi-secret-77",
        }
        with httpx.Client(base_url=self.services.cloud_url, timeout=15) as http:
            ticket = http.post("/api/v1/onboarding", json=body, headers=dict(headers))
        if ticket.status_code != 201:
            raise LabError(f"onboarding: {ticket.status_code} {ticket.text}")
        png, state = self.directory / f"{name}.png", self.directory / f"{name}.json"
        png.write_bytes(base64.b64decode(ticket.json()["qr_png"].split(",", 1)[1]))
        home.host.run(
            sys.executable, "-m", "device_sim", "onboard", "--qr", str(png), "--state", str(state)
        )
        # Disarmed: the lab measures the routes viewers take, and an analysed camera would
        # already have a relay node's upstream (docs/protocol.md, "Arming and analysis").
        device_id = json.loads(state.read_text())["device_id"]
        with httpx.Client(base_url=self.services.cloud_url, timeout=15) as http:
            disarmed = http.patch(
                f"/api/v1/devices/{device_id}", json={"armed": False}, headers=dict(headers)
            )
        if disarmed.status_code != 200:
            raise LabError(f"disarm: {disarmed.status_code} {disarmed.text}")
        return state

    def start_camera(self, home: Home, state: Path, *options: str) -> Camera:
        """``device_sim run`` in ``home`` (320x240 synthetic video), host candidates on the
        home's address; returns at once (wait for it with :meth:`wait_online`)."""
        log = self.directory / f"{state.stem}.log"
        argv = [sys.executable, "-m", "device_sim", "--log-level", "INFO", "run"]
        argv += ["--state", str(state), "--size", "320x240", *options]
        process = self.spawn(home.host, argv, log, {"ICE_HOST_ADDRESSES": home.address})
        device_id = str(json.loads(state.read_text())["device_id"])
        return Camera(device_id, home, process, log)

    def wait_online(self, headers: Mapping[str, str], cameras: Sequence[Camera]) -> None:
        assert self.services is not None
        wanted = {camera.device_id for camera in cameras}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=self.services.cloud_url, timeout=15) as http:
            while True:
                devices = http.get("/api/v1/devices", headers=dict(headers)).json()["devices"]
                if wanted <= {d["id"] for d in devices if d["online"]}:
                    return
                for camera in cameras:
                    if camera.process.poll() is not None or time.monotonic() > deadline:
                        tail = camera.log.read_text(errors="replace")[-3000:]
                        raise LabError(f"camera in {camera.home.name} not online:\n{tail}")
                time.sleep(0.2)

    def start_viewer(self, home: Home, email: str, *, wait: bool = True) -> ViewerAgent:
        """The viewer agent in ``home``, signed in as ``email``; with ``wait``, returns once it
        is ready (else call :meth:`ViewerAgent.ready`: agents then start side by side)."""
        assert self.services is not None
        log = self.directory / f"viewer-{home.name}.log"
        argv = [sys.executable, "-m", "tests.natlab", "viewer", "--cloud", self.services.cloud_url]
        argv += ["--email", email, "--password", PASSWORD, "--address", home.address]
        agent = ViewerAgent(home, self.spawn(home.host, argv, log, pipes=True), log)
        if wait:
            agent.ready()
        return agent

    def close(self) -> None:
        """Stop every process (by PID), delete the public segment's links, stop the
        namespaces' holders (their links go with them), and wait until the caller's
        namespace has only loopback again (tests/web checks that). Safe on a half-built lab."""
        for process in reversed(self.processes):
            stop(process)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
        for namespace in reversed(self.namespaces):
            if namespace.holder is not None:
                stop(namespace.holder)
        deadline = time.monotonic() + 10
        while _interfaces() != {"lo"} and time.monotonic() < deadline:
            time.sleep(0.05)


def _interfaces() -> set[str]:
    """The interfaces of the caller's namespace (``/proc/net/dev``: this namespace's, where
    ``/sys/class/net`` shows those of whoever mounted sysfs)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines}


@contextmanager
def natlab(directory: Path) -> Iterator[Lab]:
    """A lab with the public segment built (add homes, then :meth:`Lab.start_services`)."""
    reason = unavailable()
    if reason is not None:
        raise LabError(reason)
    lab = Lab(directory)
    try:
        lab.build_public()
        yield lab
    finally:
        lab.close()


def _wait(
    ready: Any, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


# -- STUN and the NAT probe ------------------------------------------------------------------

STUN_COOKIE = b"\x21\x12\xa4\x42"


def stun_mapped(
    host: str, port: int, sock: socket.socket | None = None, timeout: float = 0.5
) -> tuple[str, int] | None:
    """A STUN binding request to ``host:port``: the XOR-MAPPED-ADDRESS it answers, or None."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        transaction = os.urandom(12)
        s.settimeout(timeout)
        s.sendto(b"\x00\x01\x00\x00" + STUN_COOKIE + transaction, (host, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(2048)
            if data[:2] == b"\x01\x01" and data[8:20] == transaction:
                return _xor_mapped(data[20:])
        return None
    except OSError:
        return None
    finally:
        if own:
            s.close()


def _xor_mapped(attributes: bytes) -> tuple[str, int] | None:
    while len(attributes) >= 4:
        kind = int.from_bytes(attributes[:2], "big")
        length = int.from_bytes(attributes[2:4], "big")
        value = attributes[4 : 4 + length]
        if kind == 0x0020 and value[1] == 1:  # XOR-MAPPED-ADDRESS, IPv4
            port = int.from_bytes(value[2:4], "big") ^ 0x2112
            raw = bytes(a ^ b for a, b in zip(value[4:8], STUN_COOKIE, strict=True))
            return socket.inet_ntoa(raw), port
        attributes = attributes[4 + (length + 3) // 4 * 4 :]
    return None


PROBE_PORTS = (3400, 3401)
POKE_PORT = 3402


@dataclass
class NatBehaviour:
    """What :func:`probe_nat` saw from a home (RFC 4787 terms)."""

    mapped: list[tuple[str, int] | None]  # as seen by 40:3400, 40:3401, 41:3400
    mapping: str  # none | endpoint-independent | address-dependent |
    # address-and-port-dependent | blocked
    filtering: str  # endpoint-independent | address-dependent | address-and-port-dependent
    turn_stun: tuple[str, int] | None  # coturn's answer to a STUN binding (UDP)
    turn_tcp: bool  # a TCP connection to coturn's port opens


def probe_nat(lab: Lab, home: Home) -> NatBehaviour:
    """Observe ``home``'s NAT: one socket in the home sends to three public endpoints (two
    ports of one address, a second address) and learns how each saw it (mapping); then
    datagrams come to its public mapping from an endpoint it sent to, a new port of an
    address it sent to, and an address it never sent to (filtering)."""
    with ExitStack() as sockets:

        def bound(address: str, port: int) -> socket.socket:
            s = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.bind((address, port))
            return s

        responders = [
            bound(PROBE_ADDRESSES[0], PROBE_PORTS[0]),
            bound(PROBE_ADDRESSES[0], PROBE_PORTS[1]),
            bound(PROBE_ADDRESSES[1], PROBE_PORTS[0]),
        ]
        poke_port = bound(PROBE_ADDRESSES[0], POKE_PORT)  # a port the home never sent to
        poke_address = bound(PROBE_ADDRESSES[2], PROBE_PORTS[0])  # an address ditto
        by_fd = {s.fileno(): s for s in responders}
        argv = [sys.executable, "-m", "tests.natlab", "probe", "--address", home.address]
        log = lab.directory / f"probe-{home.name}.log"
        process = lab.spawn(home.host, argv, log, pipes=True)
        assert process.stdin is not None
        assert process.stdout is not None
        first: tuple[str, int] | None = None
        report = ""
        deadline = time.monotonic() + 30
        while not report:
            if process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the NAT probe in {home.name} failed: {log.read_text()[-2000:]}")
            ready, _, _ = select.select([*by_fd, process.stdout.fileno()], [], [], 0.5)
            for fd in ready:
                if fd == process.stdout.fileno():
                    report = process.stdout.readline().decode()
                    continue
                _, source = by_fd[fd].recvfrom(2048)
                if by_fd[fd] is responders[0]:
                    first = source
                by_fd[fd].sendto(f"{source[0]}:{source[1]}".encode(), source)
        if first is not None:  # the home's public mapping towards the first endpoint
            responders[0].sendto(b"poke:same", first)
            poke_port.sendto(b"poke:port", first)
            poke_address.sendto(b"poke:address", first)
        process.stdin.write(b"poked\n")
        process.stdin.flush()
        pokes: list[str] = json.loads(process.stdout.readline().decode())
        process.wait(10)
    seen = json.loads(report)
    mapped = [(str(m[0]), int(m[1])) if m else None for m in seen["mapped"]]
    stun = seen["turn_stun"]
    return NatBehaviour(
        mapped=mapped,
        mapping=_mapping(home.address, mapped),
        filtering=_filtering(pokes),
        turn_stun=(str(stun[0]), int(stun[1])) if stun else None,
        turn_tcp=bool(seen["turn_tcp"]),
    )


def _mapping(address: str, mapped: list[tuple[str, int] | None]) -> str:
    if any(m is None for m in mapped):
        return "blocked"
    a, b, c = mapped
    assert a is not None
    if a[0] == address:
        return "none"
    if a == b == c:
        return "endpoint-independent"
    if a == b:
        return "address-dependent"
    return "address-and-port-dependent"


def _filtering(pokes: list[str]) -> str:
    if "poke:address" in pokes:
        return "endpoint-independent"
    if "poke:port" in pokes:
        return "address-dependent"
    if "poke:same" in pokes:
        return "address-and-port-dependent"
    return "blocked"


def run_probe(address: str) -> None:
    """In a home: ask the probe responders and coturn how they see one socket; report."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    s.settimeout(0.5)
    endpoints = [
        (PROBE_ADDRESSES[0], PROBE_PORTS[0]),
        (PROBE_ADDRESSES[0], PROBE_PORTS[1]),
        (PROBE_ADDRESSES[1], PROBE_PORTS[0]),
    ]
    mapped: list[tuple[str, int] | None] = []
    for endpoint in endpoints:
        answer: tuple[str, int] | None = None
        for _ in range(2):
            s.sendto(b"map?", endpoint)
            try:
                data, source = s.recvfrom(2048)
            except TimeoutError:
                continue
            if source == endpoint:
                ip, port = data.decode().rsplit(":", 1)
                answer = (ip, int(port))
                break
        mapped.append(answer)
    turn_stun = stun_mapped(TURN_ADDRESS, TURN_PORT, timeout=1.0)
    try:
        with socket.create_connection((TURN_ADDRESS, TURN_PORT), timeout=2):
            turn_tcp = True
    except OSError:
        turn_tcp = False
    report = {"mapped": mapped, "turn_stun": turn_stun, "turn_tcp": turn_tcp}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # the lab has poked
    pokes: list[str] = []
    s.settimeout(0.3)
    while True:
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            break
        if data.startswith(b"poke:"):
            pokes.append(data.decode())
    print(json.dumps(pokes), flush=True)


# -- the delay line ---------------------------------------------------------------------------

SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_ALL = 0x0003


def run_wire(a: str, b: str, control: IO[str]) -> None:
    """Copy every Ethernet frame between links ``a`` and ``b`` after a delay (0 at first;
    ``delay MS`` lines on ``control`` change it). Frames carry their virtio-net header
    (``PACKET_VNET_HDR``) so that segmentation and checksum offloads survive the copy."""
    links = {}
    for name in (a, b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((name, 0))
        s.setblocking(False)
        links[name] = s
    across = {
        links[a].fileno(): (links[a], links[b]),
        links[b].fileno(): (links[b], links[a]),
    }
    delay_s = 0.0
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    sequence = 0
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            with contextlib.suppress(OSError):
                out.send(frame)
        timeout = max(0.0, queue[0][0] - now) if queue else 1.0
        ready, _, _ = select.select([*across, control.fileno()], [], [], timeout)
        for fd in ready:
            if fd == control.fileno():
                line = control.readline()
                if not line:
                    return
                command = line.split()
                if command[:1] == ["delay"]:
                    delay_s = float(command[1]) / 1000
                    print(f"delay {delay_s * 1000:g} ms one way", flush=True)
                continue
            inbound, out = across[fd]
            for _ in range(64):
                try:
                    frame, address = inbound.recvfrom(1 << 17)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:
                    continue
                if delay_s <= 0 and not queue:
                    with contextlib.suppress(OSError):
                        out.send(frame)
                    continue
                sequence += 1
                heapq.heappush(queue, (time.monotonic() + delay_s, sequence, out, frame))


# -- the viewer agent -------------------------------------------------------------------------


def turn_transport(peer: Any) -> dict[str, Any] | None:
    """For a session whose local candidate is a TURN allocation: how the peer reaches the TURN
    server (``{"protocol": "udp" | "tcp", "server": "IP:PORT"}``), else None.

    aioice reports a relay candidate's own transport (always UDP: the relayed address);
    the transport to the TURN server is that of the protocol under the candidate pair's
    ``TurnTransport`` (``TurnClientTcpProtocol`` or ``TurnClientUdpProtocol``). Read through
    private attributes of aiortc and aioice, which offer no API for it.
    """
    from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

    for ice in peer._ice_transports():
        pair = ice._connection._nominated.get(1)
        if pair is None or pair.local_candidate.type != "relay":
            continue
        inner = getattr(pair.protocol.transport, "_TurnTransport__inner_protocol", None)
        if isinstance(inner, TurnClientTcpProtocol):
            protocol = "tcp"
        elif isinstance(inner, TurnClientUdpProtocol):
            protocol = "udp"
        else:
            protocol = "unknown"
        peer_name = inner.transport.get_extra_info("peername") if inner is not None else None
        server = f"{peer_name[0]}:{peer_name[1]}" if peer_name else ""
        return {"protocol": protocol, "server": server}
    return None


def local_candidates(peer: Any) -> list[str]:
    """The types of the local candidates the peer gathered (e.g. ``["host", "srflx"]``)."""
    return sorted(
        c.type for ice in peer._ice_transports() for c in ice.iceGatherer.getLocalCandidates()
    )


async def _viewer(cloud: str, email: str, password: str, address: str) -> None:
    import logging

    from device_sim.viewer import Viewer, WatchError
    from peer.network import use_host_addresses

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    use_host_addresses([address])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def report(result: Mapping[str, Any]) -> None:
        print(RESULT_PREFIX + json.dumps(result), flush=True)

    async with await Viewer.login(cloud, email, password) as viewer:
        report({"ready": True})
        while line := await reader.readline():
            command = json.loads(line)
            started = time.monotonic()
            result: dict[str, Any] = {"ok": False, "mode": command["mode"]}
            try:
                watch = await viewer.watch(
                    command["device_id"], mode=command["mode"], timeout_s=command["timeout_s"]
                )
            except WatchError as exc:
                result.update(error=str(exc), reason=exc.reason)
                result["elapsed_ms"] = round((time.monotonic() - started) * 1000)
                report(result)
                continue
            result.update(
                ok=True,
                route=watch.route,
                ttff_ms=round((watch.ttff_s or 0) * 1000),
                pair=watch.selected_pair(),
                turn=turn_transport(watch.peer),
                gathered=local_candidates(watch.peer),
            )
            result["ice_ms"] = (watch.stats or {}).get("ice_ms")  # offer -> ICE and DTLS up
            result.update(await _hold(watch, float(command.get("hold_s", 0))))
            result["repair"] = _repair(watch.peer)
            result["ended"] = watch.ended.result() if watch.ended.done() else None
            await watch.end()
            report(result)


async def _hold(watch: Any, seconds: float) -> dict[str, Any]:
    """Watch for ``seconds``: ``frames`` decoded meanwhile, ``max_gap_ms`` (the longest time
    without one) and ``behind_ms``: how much further behind the camera the picture is at the
    end than at the start (wall time less the media time the decoded frames advanced, the
    least over the last second; about 0 while the viewer keeps up)."""
    if seconds <= 0:
        return {"frames": watch.frames, "max_gap_ms": 0, "behind_ms": 0}
    start = last = time.monotonic()
    count = watch.frames
    first = count
    gap = 0.0
    origin = watch.peer.last_frame
    behind = float("inf")
    while (now := time.monotonic()) - start < seconds and not watch.ended.done():
        if watch.frames != count:
            count, last = watch.frames, now
        gap = max(gap, now - last)
        latest = watch.peer.last_frame
        if now - start > seconds - 1 and origin is not None and latest is not None:
            media_s = ((latest.pts or 0) - (origin.pts or 0)) / 90000
            behind = min(behind, now - start - media_s)
        await asyncio.sleep(0.02)
    return {
        "frames": count - first,
        "max_gap_ms": round(gap * 1000),
        "behind_ms": round(behind * 1000) if behind != float("inf") else None,
    }


def _repair(peer: Any) -> dict[str, int] | None:
    """What the viewer's loss repair did (``peer.repair.ReceiverRepair``)."""
    repair = peer.repair
    if repair is None:
        return None
    names = ("lost", "repaired", "renacked", "drained", "keyframe_requests")
    return {name: int(getattr(repair, name)) for name in names}


def run_viewer(cloud: str, email: str, password: str, address: str) -> None:
    """In a home: sign in, then for each JSON command line on stdin (``device_id``, ``mode``,
    ``hold_s``, ``timeout_s``) watch and print one ``NATLAB {...}`` line: ``ok``, ``route``,
    ``ttff_ms``, ``ice_ms`` (from the offer to ICE and DTLS connected), ``pair`` (local and
    remote candidate: type, address, port, protocol), ``turn`` (:func:`turn_transport`),
    ``gathered``, and after ``hold_s`` of watching ``frames``, ``max_gap_ms``, ``behind_ms``
    (:func:`_hold`) and ``repair`` (what the viewer's loss repair did); or ``error`` and
    ``reason``."""
    asyncio.run(_viewer(cloud, email, password, address))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.natlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    viewer = commands.add_parser("viewer", help="the viewer agent (run inside a home)")
    viewer.add_argument("--cloud", required=True)
    viewer.add_argument("--email", required=True)
    viewer.add_argument("--password", required=True)
    viewer.add_argument("--address", required=True, help="the home's address (host candidates)")
    probe = commands.add_parser("probe", help="the NAT probe (run inside a home)")
    probe.add_argument("--address", required=True)
    wire = commands.add_parser("wire", help="the delay line (run inside its namespace)")
    wire.add_argument("a")
    wire.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "viewer":
        run_viewer(args.cloud, args.email, args.password, args.address)
    elif args.command == "probe":
        run_probe(args.address)
    else:
        run_wire(args.a, args.b, sys.stdin)


if __name__ == "__main__":
    main()
