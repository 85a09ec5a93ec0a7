"""``make run DEMO=1`` from a fresh clone: healthy, the database in a process of its own, and
the demo camera plays live."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from device_sim.viewer import Viewer
from peer.network import use_host_addresses
from tests.servers import ROOT, children, free_port, proc_argv, secantus_files


@pytest.mark.timeout(300)
async def test_make_run_demo_from_a_fresh_clone_plays_the_demo_camera(tmp_path: Path) -> None:
    use_host_addresses(["127.0.0.1"])
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "var"
    venv = Path(sys.executable).parent.parent  # the suite's own, so that nothing is downloaded
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            # SKIP_INSTALL: the suite's venv is ready; make must not reinstall it from the clone.
            [
                "make",
                "run",
                "DEMO=1",
                f"PORT={port}",
                f"DATA_DIR={data}",
                f"VENV={venv}",
                "SKIP_INSTALL=1",
            ],
            cwd=clone,
            env={**os.environ, "ICE_HOST_ADDRESSES": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        deadline = time.monotonic() + 180
        while not (data / "demo.json").exists():
            assert make.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/docs")).status_code == 200
        # The database runs as a process of its own, started by make run, and the cloud's
        # process holds no SecantusDB code (GPL-2.0-only): they talk over a socket.
        launcher = make.pid  # make may run the recipe through a shell: go down to run.py
        while not any(a.endswith("scripts/run.py") for a in proc_argv(launcher)):
            (launcher,) = [pid for pid, _ in children(launcher)]
        started = children(launcher)
        (cloud,) = [p for p in started if p[1][1:3] == ["-m", "cloud"]]
        (database,) = [p for p in started if any(a.endswith("secantusd-py") for a in p[1])]
        assert str(data / "db") in database[1]
        assert secantus_files(cloud[0]) == set()
        assert secantus_files(database[0])  # the check finds the code where it is
        demo = json.loads((data / "demo.json").read_text())
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            account = {"email": demo["email"], "password": demo["password"]}
            login = await http.post("/api/v1/auth/login", json=account)
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            while not (await http.get("/api/v1/devices", headers=headers)).json()["devices"][0][
                "online"
            ]:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.3)
        async with await Viewer.login(url, demo["email"], demo["password"]) as viewer:
            watch = await viewer.watch(demo["device_id"], timeout_s=60)
            assert watch.frames >= 1
            relayed = await viewer.watch(demo["device_id"], mode="relay", timeout_s=60)
            assert relayed.route == "relay"
            assert relayed.frames >= 1
            await relayed.end()
            await watch.end()
        # Nobody watches now: the relay node analyses the armed demo camera all the same, and
        # its motion episode (20 s after it starts) makes a thread with a clip that begins at
        # least 4 s before the motion did.
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            deadline = time.monotonic() + 120
            clip = None
            while clip is None or clip["state"] != "ready":
                assert time.monotonic() < deadline, (clip, log.read_text()[-3000:])
                await asyncio.sleep(0.5)
                listed = await http.get(
                    "/api/v1/events", params={"kind": "motion"}, headers=headers
                )
                ended = [e for e in listed.json()["events"] if e["clip_id"] and e["state"] == "end"]
                if ended:
                    event = ended[-1]
                    media = await http.get(f"/api/v1/media/{event['clip_id']}", headers=headers)
                    clip = media.json()
        motion_began = datetime.fromisoformat(event["started_at"])
        assert (motion_began - datetime.fromisoformat(clip["started_at"])).total_seconds() >= 4
        assert clip["duration_s"] > 10
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
        make.wait(timeout=60)
    text = log.read_text()
    assert "VisionConnect is running" in text
    assert "stopped." in text
    assert "Traceback" not in text, text[-4000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=2)  # noqa: ASYNC210 (everything has stopped)
    assert (data / "db").is_dir()  # kept for the next run
