"""SecantusDB as a server process of its own: the database of ``make run`` and of development.

SecantusDB is GPL-2.0-only and the cloud AGPL-3.0-or-later, so the cloud never imports it:
this module runs its server program, ``secantusd-py`` (installed by the ``embedded-db``
extra, never in the production images), as a separate process on a loopback port and hands
back its MongoDB URL. The cloud then talks to it over the MongoDB wire protocol, as to any
MongoDB. The process also keeps its own interpreter: its work never holds the cloud's GIL.
"""

import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from pymongo import MongoClient

log = logging.getLogger(__name__)

PROGRAM = "secantusd-py"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


class LocalDatabaseError(RuntimeError):
    """The local database program is missing or did not start."""


def program() -> Path:
    """``secantusd-py`` beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file():
        return beside
    found = shutil.which(PROGRAM)
    if found is None:
        raise LocalDatabaseError(
            f"{PROGRAM} is not installed: install the embedded-db extra"
            " (pip install -e '.[embedded-db]', as make venv does) or set MONGODB_URL"
        )
    return Path(found)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class LocalDatabase:
    """One ``secantusd-py`` process storing its data in ``storage`` (kept across restarts).

    :meth:`start` returns its MongoDB URL once it answers a ping; :meth:`stop` ends it with
    SIGTERM (its clean shutdown) and waits. Its output goes to ``output`` (default: ours).
    """

    def __init__(
        self,
        storage: Path,
        *,
        cache_size: str = "256M",
        host: str = "127.0.0.1",
        output: IO[bytes] | None = None,
    ) -> None:
        self.storage = storage
        self.cache_size = cache_size
        self.host = host
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        self.storage.mkdir(parents=True, exist_ok=True)
        port = _free_port(self.host)
        argv = [
            str(program()),
            "--host", self.host,
            "--port", str(port),
            "--storage-path", str(self.storage),
            "--cache-size", self.cache_size,
            "--log-level", "WARNING",
        ]  # fmt: skip
        # A session of its own: a terminal's Ctrl-C reaches our process group only, and the
        # database stops after the cloud that still writes during its shutdown.
        self.process = subprocess.Popen(
            argv, stdout=self.output, stderr=self.output, start_new_session=True
        )
        self.url = f"mongodb://{self.host}:{port}/?directConnection=true"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client: MongoClient[dict[str, Any]]
                with MongoClient(self.url, serverSelectionTimeoutMS=300) as client:
                    client.admin.command("ping")
                break
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise LocalDatabaseError(f"{PROGRAM} did not start ({argv})") from None
                time.sleep(0.1)
        log.info(
            "local SecantusDB process %d started at %s (data in %s)",
            self.process.pid,
            self.url,
            self.storage,
        )
        return self.url

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("local SecantusDB did not stop in %.0f s: killed", STOP_TIMEOUT_S)
                process.kill()
                process.wait()
        log.info("local SecantusDB process %d stopped", process.pid)
