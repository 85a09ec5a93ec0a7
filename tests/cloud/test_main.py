"""``python -m cloud`` on its own: a local database process, persistence, clean stop."""

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from cloud.settings import Settings, SettingsError
from tests.conftest import PASSWORD
from tests.servers import children, free_port, secantus_files, start_cloud


def start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "PUBLIC_URL", "JWT_SECRET")
    }
    return start_cloud({**env, "DATA_DIR": str(data_dir)}, log, port)


def interrupt(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=30)


@pytest.mark.timeout(180)
def test_the_embedded_cloud_keeps_accounts_across_restarts_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    data, log, port = tmp_path / "data", tmp_path / "cloud.log", free_port()
    url = f"http://127.0.0.1:{port}"
    account = {"email": "keep@example.com", "password": PASSWORD}
    process = start(data, port, log)
    try:
        assert httpx.post(url + "/api/v1/auth/register", json=account).status_code == 201
        assert httpx.get(url + "/docs").status_code == 200
        # The database is a process of its own: no SecantusDB code in the cloud's.
        assert secantus_files(process.pid) == set()
        (database,) = [
            p for p in children(process.pid) if any(a.endswith("secantusd-py") for a in p[1])
        ]
        assert str(data / "db") in database[1]
        assert secantus_files(database[0])  # what the check looks for, where it is
    finally:
        assert interrupt(process) == 0
    assert (data / "jwt-secret").stat().st_mode & 0o777 == 0o600
    process = start(data, port, log)
    try:
        assert httpx.post(url + "/api/v1/auth/login", json=account).status_code == 200
    finally:
        assert interrupt(process) == 0
    text = log.read_text()
    assert len(re.findall(r"local SecantusDB process \d+ stopped", text)) == 2
    assert "Traceback" not in text
    assert f"VisionConnect cloud: {url}" in text
    # Every log line carries a request id field: "-" outside requests, the id inside.
    for line in text.splitlines():
        if re.match(r"^\d{4}-\d\d-\d\d ", line):
            assert re.search(r" \[([0-9a-f]{16}|-)\] ", line), line
    assert re.search(r"\[[0-9a-f]{16}\] POST /api/v1/auth/register 201", text)


async def test_a_request_id_offered_by_the_client_is_kept_in_the_response(
    client: httpx.AsyncClient,
) -> None:
    kept = await client.get("/healthz", headers={"X-Request-ID": "trace-1234abcd"})
    assert kept.headers["x-request-id"] == "trace-1234abcd"
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers["x-request-id"])


def test_production_refuses_default_secrets_and_the_embedded_database() -> None:
    base = {"ENVIRONMENT": "production", "PUBLIC_URL": "https://cams.example.com"}
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(base, dotenv=False)
    with pytest.raises(SettingsError, match="MONGODB_URL"):
        Settings.from_env({**base, "JWT_SECRET": "x" * 40}, dotenv=False)
    with pytest.raises(SettingsError, match="https"):
        Settings.from_env(
            {
                **base,
                "JWT_SECRET": "x" * 40,
                "MONGODB_URL": "mongodb://db",
                "PUBLIC_URL": "http://a.b",
            },
            dotenv=False,
        )
    ok = Settings.from_env(
        {**base, "JWT_SECRET": "x" * 40, "MONGODB_URL": "mongodb://db"}, dotenv=False
    )
    assert ok.production
    assert "x" * 40 not in repr(ok)


def test_settings_read_lists_and_refuse_bad_numbers() -> None:
    s = Settings.from_env(
        {"STUN_URLS": "stun:a:3478, stun:b:3478", "TURN_TTL_S": "600"}, dotenv=False
    )
    assert s.stun_urls == ("stun:a:3478", "stun:b:3478")
    assert s.turn_ttl_s == 600
    with pytest.raises(SettingsError, match="TURN_TTL_S"):
        Settings.from_env({"TURN_TTL_S": "soon"}, dotenv=False)
    with pytest.raises(SettingsError, match="ONBOARDING_TTL_S"):
        Settings.from_env({"ONBOARDING_TTL_S": "3600"}, dotenv=False)
