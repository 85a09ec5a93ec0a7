"""The phone's network for browser tests: a network namespace joined to the test's by a veth.

Chromium offers no loopback ICE candidates (``--allow-loopback-in-peer-connection``
notwithstanding, in Chromium 156) and gathers no host candidate at all without a default
route, so in the loopback-only namespace of ``scripts/hermetic`` it could do no WebRTC. The
browser therefore runs in a namespace of its own, like a phone on a network of its own:

    test namespace (cloud, relay, camera)          phone namespace (Chromium)
      lo 127.0.0.1                                   lo
      vc-host 10.213.0.1/30  <------ veth ------>    vc-phone 10.213.0.2/30, default route

The cloud and the relay node listen on ``10.213.0.1``. What the camera simulator offers as
host candidates decides whether a direct path exists: ``10.213.0.1`` is reachable from the
phone (a camera on the phone's LAN); ``127.0.0.1`` alone is not, since from the phone's
namespace ``127.0.0.1`` is its own loopback (a camera behind a NAT that lets nothing in),
while the relay node, offering both, is reachable from both sides.

Packets stay inside the two namespaces: the test's namespace must be loopback-only
(``scripts/hermetic``, as ``make test`` runs the suites), since the veth's host end is added
to it; nothing forwards between the namespaces and nothing routes beyond them. The phone's
namespace lives as long as the small ``unshare`` process holding it, and the veth pair dies
with it.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import stop

HOST_ADDRESS = "10.213.0.1"
PHONE_ADDRESS = "10.213.0.2"
HOST_LINK = "vc-host"
PHONE_LINK = "vc-phone"


def unavailable() -> str | None:
    """Why the phone's network cannot be made here, or None when it can.

    ``/proc/net/dev`` lists the interfaces of the caller's namespace (``/sys/class/net``
    shows those of whoever mounted sysfs).
    """
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    names = {line.split(":", 1)[0].strip() for line in lines}
    if names != {"lo"}:
        return f"needs a loopback-only network namespace (scripts/hermetic); found {sorted(names)}"
    missing = [tool for tool in ("ip", "unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class PhoneNetwork:
    pid: int

    @property
    def namespace(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def wrap(self, executable: str, directory: Path) -> str:
        """A launcher that runs ``executable`` in the phone's namespace (for Playwright)."""
        script = directory / "in-phone-network"
        script.write_text(f'#!/bin/sh\nexec nsenter --net={self.namespace} {executable} "$@"\n')
        script.chmod(0o755)
        return str(script)


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["nsenter", f"--net={namespace}"] if namespace else []
    done = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def phone_network() -> Iterator[PhoneNetwork]:
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "86400"])
    try:
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/net") == own:  # unshare(2) not done yet
            if holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("could not create the phone's network namespace")
            time.sleep(0.01)
        phone = PhoneNetwork(holder.pid)
        pid = str(holder.pid)
        _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", PHONE_LINK, "netns", pid)
        _ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_LINK)
        _ip("link", "set", HOST_LINK, "up")
        inside = phone.namespace
        _ip("link", "set", "lo", "up", namespace=inside)
        _ip("addr", "add", f"{PHONE_ADDRESS}/30", "dev", PHONE_LINK, namespace=inside)
        _ip("link", "set", PHONE_LINK, "up", namespace=inside)
        _ip("route", "add", "default", "via", HOST_ADDRESS, namespace=inside)
        yield phone
    finally:
        subprocess.run(["ip", "link", "del", HOST_LINK], capture_output=True, timeout=10)
        stop(holder)
