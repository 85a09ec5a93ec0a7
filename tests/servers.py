"""Real servers for the suites: started as subprocesses on free loopback ports, stopped by PID."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def proc_argv(pid: int) -> list[str]:
    """Process ``pid``'s command line (Linux /proc)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used, all its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[tuple[int, list[str]]]:
    """The processes whose parent is ``pid``, with their command lines (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = proc_argv(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid and argv:
            found.append((int(entry.name), argv))
    return found


def secantus_files(pid: int) -> set[str]:
    """Files of SecantusDB (its package, its WiredTiger binding, its bundled libraries) that
    process ``pid`` has mapped: any import of ``secantus`` loads WiredTiger's shared library."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {
        line.split(maxsplit=5)[5]
        for line in maps.splitlines()
        if len(line.split(maxsplit=5)) == 6
        and any(part in line for part in ("secantus", "wiredtiger", "WiredTiger"))
    }


@contextmanager
def secantus_server(storage: Path) -> Iterator[str]:
    """A SecantusDB server process; yields its MongoDB URL."""
    with secantus_process(storage) as (url, _):
        yield url


@contextmanager
def secantus_process(storage: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A SecantusDB server process; yields its MongoDB URL and the process (to pause it)."""
    port = free_port()
    binary = Path(sys.executable).parent / "secantusd-py"
    process = subprocess.Popen(
        [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--enable-test-commands",
            "--cache-size",
            "256M",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with MongoClient(url, serverSelectionTimeoutMS=300) as client:
                    client.admin.command("ping")
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("SecantusDB did not start") from None
                time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a test may have left it paused
        stop(process)


def relay_process(env: dict[str, str], log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``python -m relay`` with ``env`` over this environment, logging to ``log_path``.

    Returns at once (registration is the caller's to wait for); the caller stops it.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--log-level", "INFO"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen,
        )


def start_cloud(
    env: dict[str, str], log_path: Path, port: int, *args: str, **popen: Any
) -> subprocess.Popen[bytes]:
    """``python -m cloud --port PORT ARGS`` with exactly ``env``, logging to ``log_path``.

    Returns once ``/readyz`` answers on 127.0.0.1 (or ``--host``); if the process exits or
    takes over 60 s, it is stopped and RuntimeError carries the end of its log.
    """
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloud", "--port", str(port), *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen,
        )
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{host}:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the cloud did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)


@contextmanager
def cloud_process(env: dict[str, str], log_path: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """``python -m cloud`` on ``host`` and a free port; yields its base URL once /readyz answers."""
    port = free_port()
    url = f"http://{host}:{port}"
    full = {**os.environ, "PUBLIC_URL": url, **env}
    process = start_cloud(full, log_path, port, "--host", host)
    try:
        yield url
    finally:
        stop(process)


@contextmanager
def redis_server(port: int | None = None, password: str | None = None) -> Iterator[str]:
    """A ``redis-server`` process on loopback, without persistence; yields its URL.

    Give the ``port`` of a server stopped before to start its replacement (a restart).
    """
    port = port or free_port()
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    options += ["--requirepass", password] if password else []
    process = subprocess.Popen(["redis-server", *options], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    finally:
        stop(process)


def _stun_answers(port: int) -> bool:
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)  # STUN binding request
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(request, ("127.0.0.1", port))
            return s.recv(512)[:2] == b"\x01\x01"
        except OSError:
            return False


@contextmanager
def coturn_server(secret: str, log_path: Path) -> Iterator[int]:
    """Debian's coturn on loopback with ``use-auth-secret``; yields its UDP/TCP port.

    ``--allow-loopback-peers`` is for tests only: production configs deny loopback peers.
    """
    port = free_port()
    relay_base = 40000 + port % 20000
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                "turnserver",
                "-n",
                "--listening-ip",
                "127.0.0.1",
                "--relay-ip",
                "127.0.0.1",
                "--listening-port",
                str(port),
                "--use-auth-secret",
                "--static-auth-secret",
                secret,
                "--realm",
                "visionconnect.test",
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--min-port",
                str(relay_base),
                "--max-port",
                str(relay_base + 200),
                "--log-file",
                "stdout",
                "--simple-log",
                "--no-software-attribute",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not _stun_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start; see {log_path}")
            time.sleep(0.1)
        yield port
    finally:
        stop(process)
