"""The RTSP IP-camera stand-in (``tests/rtsp_camera.py``) as a process for tests and benchmarks.

    with rtsp_camera(size=(1920, 1080), user="admin", password="pw") as camera:
        container = av.open(camera.url, options={"rtsp_transport": "tcp"}, timeout=5)

The script runs under Debian's ``/usr/bin/python3`` (``gi`` is not in the venv); the Debian
packages come from ``scripts/install-system-deps``. It is stopped by PID: SIGTERM, then SIGKILL.
"""

import os
import select
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal
from urllib.parse import quote, urlsplit

from tests.servers import stop

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).resolve().with_name("rtsp_camera.py")


@dataclass
class RtspCamera:
    """One stand-in camera; ``start()`` is the context manager's to call."""

    size: tuple[int, int] = (1280, 720)
    fps: int = 15
    bitrate_kbps: int = 2000
    keyframe_interval_s: float = 2.0
    profile: Literal["baseline", "main", "high"] = "main"
    path: str = "/stream"
    pattern: str = "smpte"
    image: Path | None = None
    image_layout: Literal["center", "fill"] = "center"
    user: str | None = None
    password: str | None = None
    auth: Literal["basic", "digest"] = "digest"
    speed_preset: Literal["ultrafast", "superfast", "veryfast"] = "ultrafast"
    port: int = 0
    """0 until started: then the port it listens on, kept across ``restart()``."""
    start_timeout: float = 20.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the RTSP camera is not started")
        return self._process

    @property
    def url_without_credentials(self) -> str:
        if not self.port:
            raise RuntimeError("the RTSP camera is not started")
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def url(self) -> str:
        """The URL a client opens: with ``user:password@`` (percent-encoded) when auth is on."""
        if self.user is None or self.password is None:
            return self.url_without_credentials
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        return self.url_without_credentials.replace("rtsp://", f"rtsp://{credentials}", 1)

    def command(self) -> list[str]:
        width, height = self.size
        command = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port), "--path", self.path]
        command += ["--size", f"{width}x{height}", "--fps", str(self.fps)]
        command += ["--bitrate-kbps", str(self.bitrate_kbps), "--profile", self.profile]
        command += ["--keyframe-interval-s", str(self.keyframe_interval_s)]
        command += ["--pattern", self.pattern, "--speed-preset", self.speed_preset]
        if self.image is not None:
            command += ["--image", str(self.image), "--image-layout", self.image_layout]
        if self.user is not None and self.password is not None:
            command += ["--user", self.user, "--password", self.password, "--auth", self.auth]
        return command

    def start(self) -> None:
        """Start the server (on ``port``, or a free one when 0); return once it accepts TCP.

        If it exits or is not ready within ``start_timeout``, it is stopped and RuntimeError
        carries the end of its stderr.
        """
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError("the RTSP camera is already running")
        # Its stderr (GStreamer warnings, a traceback), kept while it runs: closed by stop().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log
        )
        deadline = time.monotonic() + self.start_timeout
        try:
            url = self._read_url(deadline)
            self.port = urlsplit(url).port or 0
            if url != self.url_without_credentials:
                raise RuntimeError(f"the RTSP camera printed an unexpected URL: {url!r}")
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the RTSP camera does not accept connections") from None
                    time.sleep(0.05)
        except RuntimeError as error:
            message = f"{error}\n{self.stderr()[-3000:]}"
            self.stop()
            raise RuntimeError(message) from None

    def _read_url(self, deadline: float) -> str:
        process = self.process
        stdout = process.stdout
        assert stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("the RTSP camera did not print its URL in time")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                chunk = os.read(stdout.fileno(), 1)  # one byte: never read past the line
                if not chunk:
                    raise RuntimeError(f"the RTSP camera exited ({process.wait()})")
                line += chunk
        return line.decode().strip()

    def stderr(self) -> str:
        """What the server wrote to stderr since it was last started."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM (then SIGKILL after 15 s, as ``tests.servers.stop``); clients see EOF."""
        process, self._process = self._process, None
        if process is not None:
            stop(process)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port: the camera rebooting mid-stream."""
        self.stop()
        self.start()


@contextmanager
def rtsp_camera(
    *,
    size: tuple[int, int] = (1280, 720),
    fps: int = 15,
    bitrate_kbps: int = 2000,
    keyframe_interval_s: float = 2.0,
    profile: Literal["baseline", "main", "high"] = "main",
    path: str = "/stream",
    pattern: str = "smpte",
    image: Path | None = None,
    image_layout: Literal["center", "fill"] = "center",
    user: str | None = None,
    password: str | None = None,
    auth: Literal["basic", "digest"] = "digest",
    speed_preset: Literal["ultrafast", "superfast", "veryfast"] = "ultrafast",
    port: int = 0,
) -> Iterator[RtspCamera]:
    """An RTSP server on 127.0.0.1 serving live H.264 like an IP camera; stopped on exit.

    ``port=0`` picks a free port. ``image`` (a PNG, e.g. a QR code) is shown at its size over
    the test pattern (``image_layout="center"``) or scaled to the frame (``"fill"``).
    ``user`` and ``password`` turn on RTSP ``auth`` (digest or basic).
    """
    if (user is None) != (password is None):
        raise ValueError("user and password go together")
    camera = RtspCamera(
        size=size,
        fps=fps,
        bitrate_kbps=bitrate_kbps,
        keyframe_interval_s=keyframe_interval_s,
        profile=profile,
        path=path,
        pattern=pattern,
        image=image,
        image_layout=image_layout,
        user=user,
        password=password,
        auth=auth,
        speed_preset=speed_preset,
        port=port,
    )
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()
