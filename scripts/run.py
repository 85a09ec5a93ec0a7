"""``make run``: the whole product on one machine, on embedded defaults.

Starts SecantusDB as a server process of its own (data in ``DATA_DIR/db``; skipped when
``MONGODB_URL`` is set), the cloud on it through ``MONGODB_URL`` (in-memory bus), one relay
node, and with ``--demo`` a demo account and a simulated camera with a motion episode every
minute, so that a newcomer sees live video and events in the browser within a minute.
Ctrl-C stops everything cleanly, the database last; accounts, cameras and events stay in
``DATA_DIR``. The cloud never loads SecantusDB's code (GPL-2.0-only): they talk over a socket.
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, as `python -m cloud` from ROOT sees
from cloud.localdb import LocalDatabase, LocalDatabaseError  # noqa: E402

PYTHON = sys.executable
DEMO_EMAIL = "demo@visionconnect.example"


def secret(path: Path) -> str:
    """A random secret kept in ``path`` (0600), made on first use."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    print(f"starting {name}: {' '.join(args)}", flush=True)
    # Its own session: Ctrl-C reaches only this launcher, which stops each child once, in
    # order (a second SIGINT would make uvicorn skip its graceful shutdown).
    return subprocess.Popen([PYTHON, *args], cwd=ROOT, env=env, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the cloud exited during start-up; see its log above")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the cloud did not become ready at {url}")


def demo_camera(url: str, data: Path) -> tuple[dict[str, Any], Path]:
    """The demo account and camera: made once, then reused from DATA_DIR."""
    account_file, state = data / "demo-account.json", data / "demo-camera.json"
    if account_file.exists():
        account = json.loads(account_file.read_text())
    else:
        account = {"email": DEMO_EMAIL, "password": "Watch-" + secrets.token_urlsafe(12)}
    with httpx.Client(base_url=url, timeout=15) as http:
        http.post("/api/v1/auth/register", json=account)  # 409 once it exists
        login = http.post("/api/v1/auth/login", json=account)
        if login.status_code != 200:
            raise SystemExit(f"demo login failed: {login.text}")
        fd = os.open(account_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(account, handle)
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        devices = http.get("/api/v1/devices", headers=headers).json()["devices"]
        known = json.loads(state.read_text())["device_id"] if state.exists() else None
        if known not in {d["id"] for d in devices}:
            body = {
                "device_name": "Demo camera",
                "camera_model": "SIM-1",
                "wifi_ssid": "demo",
                "wifi_password": "",
            }
            ticket = http.post("/api/v1/onboarding", json=body, headers=headers).json()
            subprocess.run(
                [PYTHON, "-m", "device_sim", "onboard", "--payload", ticket["payload"],
                 "--state", str(state)],
                cwd=ROOT,
                check=True,
            )  # fmt: skip
    account["device_id"] = json.loads(state.read_text())["device_id"]
    return account, state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--demo", action="store_true", help="a demo account and camera")
    args = parser.parse_args()
    data = Path(os.environ.get("DATA_DIR", "var")).resolve()
    data.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("PUBLIC_URL") or f"http://{args.host}:{args.port}"
    env = {**os.environ, "DATA_DIR": str(data), "PUBLIC_URL": url}
    env["RELAY_SECRET"] = env.get("RELAY_SECRET") or secret(data / "relay-secret")
    env.setdefault("YOLO_MODEL", "none")
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    database: LocalDatabase | None = None
    dotenv = dotenv_values(ROOT / ".env") if (ROOT / ".env").is_file() else {}
    if not (env.get("MONGODB_URL") or dotenv.get("MONGODB_URL")):  # the cloud reads both
        print(f"starting the database: SecantusDB in {data / 'db'}", flush=True)
        database = LocalDatabase(data / "db")
        try:
            env["MONGODB_URL"] = database.start()
        except LocalDatabaseError as exc:
            raise SystemExit(str(exc)) from None
        assert database.process is not None
        children.append(database.process)  # watched like the others; stopped last, below
    try:
        serve = ["-m", "cloud", "--host", args.host, "--port", str(args.port)]
        cloud = start("the cloud", serve, env)
        children.append(cloud)
        wait_ready(url, cloud)
        relay_env = {**env, "CLOUD_URL": url, "RELAY_ID": "relay-local"}
        children.append(start("a relay node", ["-m", "relay"], relay_env))
        banner = [f"VisionConnect is running: {url}  (API docs: {url}/docs)"]
        if args.demo:
            account, state = demo_camera(url, data)
            motion = [f"--motion={start_s}:8" for start_s in range(20, 3600, 60)]
            camera = ["-m", "device_sim", "run", "--state", str(state), *motion]
            children.append(start("the demo camera", camera, env))
            (data / "demo.json").write_text(json.dumps({**account, "url": url}))
            banner.append(f"demo login: {account['email']} / {account['password']}")
        print("\n".join(banner) + "\nCtrl-C stops everything.", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"a process exited unexpectedly ({child.args}); stopping", flush=True)
                    status, stopping = 1, True
            time.sleep(0.3)
    finally:
        programs = [c for c in children if database is None or c is not database.process]
        for child in reversed(programs):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in reversed(programs):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if database is not None:
            database.stop()  # after the cloud, which writes until it has stopped
        print("stopped.", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
