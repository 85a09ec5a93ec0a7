"""Real processes for the browser tests: the cloud, a relay node and simulated cameras.

They are the same programs ``tests/e2e`` starts (``tests/servers.py``), but listening where
the phone's namespace can reach them (``tests/web/network.py``): the cloud on ``host``
instead of ``127.0.0.1``, the relay and cameras with chosen ICE host addresses.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from tests.servers import ROOT, cloud_process, relay_process, stop


def cloud_at(host: str, env: dict[str, str], log_path: Path) -> ContextManager[str]:
    """``python -m cloud`` on ``host`` (the phone reaches the cloud on the veth address)."""
    return cloud_process(env, log_path, host)


@contextmanager
def relay_node(
    cloud_url: str, relay_id: str, secret: str, addresses: list[str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m relay`` with motion events only (no YOLO model: fast to start)."""
    env = {
        "CLOUD_URL": cloud_url,
        "RELAY_ID": relay_id,
        "RELAY_SECRET": secret,
        "ICE_HOST_ADDRESSES": ",".join(addresses),
        "YOLO_MODEL": "none",
        "ANALYSIS_FPS": "5",
    }
    process = relay_process(env, log_path)
    try:
        yield process
    finally:
        stop(process)


def wait_relay_online(
    mongodb_url: str, database: str, relay_id: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongodb_url) as client:
        relays: Collection[dict[str, Any]] = client[database]["relays"]
        while relays.find_one({"relay_id": relay_id, "online": True}) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay {relay_id} did not register")
            time.sleep(0.2)


def onboard_camera(qr_png: Path, state: Path) -> str:
    """``device_sim onboard``: the camera scans the QR image and activates; its device id."""
    done = subprocess.run(
        [sys.executable, "-m", "device_sim", "onboard", "--qr", str(qr_png), "--state", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"onboarding failed: {done.stderr}")
    return str(json.loads(state.read_text())["device_id"])


def camera(
    state: Path, addresses: list[str], log_path: Path, *options: str
) -> subprocess.Popen[bytes]:
    """``device_sim run``: the camera online, answering viewers with 320x240 synthetic video."""
    command = [sys.executable, "-m", "device_sim", "--log-level", "INFO", "run"]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*command, "--state", str(state), "--size", "320x240", *options],
            cwd=ROOT,
            env={**os.environ, "ICE_HOST_ADDRESSES": ",".join(addresses)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
