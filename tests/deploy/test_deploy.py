"""Deployment files: structure and cross-references (no container engine runs here)."""

import json
import os
import re
import secrets
import socket
import ssl
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import ROOT, free_port, stop
from tests.test_dependencies import LOCAL_IMPORTS

DEPLOY = ROOT / "deploy"
# Render's blueprint reference (render.com/docs/blueprint-spec and its JSON schema): the
# fields of a web service and a key-value service that this blueprint may use.
RENDER_SERVICE_KEYS = {
    "type", "name", "runtime", "plan", "region", "buildCommand", "startCommand",
    "preDeployCommand", "healthCheckPath", "numInstances", "autoDeployTrigger", "envVars",
    "scaling", "disk", "rootDir", "dockerfilePath", "dockerContext", "dockerCommand",
    "ipAllowList", "maxmemoryPolicy", "branch", "repo", "domains", "buildFilter",
    "maxShutdownDelaySeconds",
}  # fmt: skip
RENDER_DEPRECATED_KEYS = {"autoDeploy"}  # replaced by autoDeployTrigger
RENDER_REGIONS = {"oregon", "ohio", "virginia", "frankfurt", "singapore"}
RENDER_AUTO_DEPLOY_TRIGGERS = {"off", "commit", "checksPass"}
RENDER_ENV_KEYS = {
    "key",
    "value",
    "sync",
    "generateValue",
    "fromService",
    "fromDatabase",
    "fromGroup",
}
RENDER_OWN = {"PYTHON_VERSION"}  # read by Render's build, not by our code


def env_names(*packages: str) -> set[str]:
    """Every environment variable name the code reads (env.get / _int(env, ...) / env[...])."""
    names: set[str] = set()
    pattern = re.compile(r'(?:env(?:iron)?\.get\(|_int\(\s*env,\s*|env\[)\s*"([A-Z][A-Z0-9_]+)"')
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(pattern.findall(path.read_text()))
    return names


CLOUD_ENV = env_names("cloud")
RELAY_ENV = env_names("relay")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_code_reads_the_documented_settings() -> None:
    assert {
        "PUBLIC_URL",
        "MONGODB_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "TURN_SECRET",
        "RELAY_SECRET",
    } <= CLOUD_ENV
    assert {"CLOUD_URL", "RELAY_ID", "RELAY_SECRET", "YOLO_MODEL", "HEALTH_FILE"} <= RELAY_ENV
    readme = (ROOT / "README.md").read_text()
    for name in (
        "PUBLIC_URL",
        "MONGODB_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "TURN_URLS",
        "RELAY_SECRET",
    ):
        assert f"`{name}`" in readme


def test_render_yaml_uses_blueprint_fields_and_only_variables_the_cloud_reads() -> None:
    blueprint = load(ROOT / "render.yaml")
    assert set(blueprint) == {"services"}
    by_type = {s["type"]: s for s in blueprint["services"]}
    for service in blueprint["services"]:
        assert not set(service) & RENDER_DEPRECATED_KEYS, service["name"]
        assert set(service) <= RENDER_SERVICE_KEYS, set(service) - RENDER_SERVICE_KEYS
        assert service["region"] in RENDER_REGIONS, service["name"]
    web, redis = by_type["web"], by_type["keyvalue"]
    assert web["region"] == redis["region"]  # REDIS_URL is on the region's private network
    # Render builds and runs the image the tests check, and that image binds $PORT.
    assert web["runtime"] == "docker"
    assert (ROOT / web["dockerContext"] / web["dockerfilePath"]).resolve() == (
        DEPLOY / "Dockerfile.cloud"
    )
    assert not {"buildCommand", "startCommand", "dockerCommand"} & set(web)  # the image's CMD
    assert web["numInstances"] >= 2
    assert web["autoDeployTrigger"] in RENDER_AUTO_DEPLOY_TRIGGERS
    assert web["healthCheckPath"] == "/readyz"  # the database and the bus answer
    # Long enough for go_away to reach every socket and uvicorn's graceful close to end.
    graceful = re.search(
        r"timeout_graceful_shutdown=(\d+)", (ROOT / "cloud/__main__.py").read_text()
    )
    assert graceful is not None
    assert 1 <= web["maxShutdownDelaySeconds"] <= 300  # the spec's range
    assert web["maxShutdownDelaySeconds"] >= int(graceful.group(1)) + 20
    assert redis["ipAllowList"] == []
    keys = set()
    for var in web["envVars"]:
        assert set(var) <= RENDER_ENV_KEYS, var
        assert len(set(var) & {"value", "sync", "generateValue", "fromService"}) == 1, var
        keys.add(var["key"])
        if "fromService" in var:
            ref = var["fromService"]
            assert (ref["type"], ref["name"], ref["property"]) == (
                "keyvalue",
                redis["name"],
                "connectionString",
            )
    assert keys - RENDER_OWN <= CLOUD_ENV, keys - RENDER_OWN - CLOUD_ENV
    assert {"MONGODB_URL", "REDIS_URL", "JWT_SECRET", "ENVIRONMENT"} <= keys
    secrets_ = {v["key"]: v for v in web["envVars"]}
    assert secrets_["JWT_SECRET"].get("generateValue") is True
    assert secrets_["MONGODB_URL"].get("sync") is False
    assert secrets_["ENVIRONMENT"]["value"] == "production"


def test_the_blueprint_check_refuses_the_deprecated_auto_deploy_key() -> None:
    blueprint = load(ROOT / "render.yaml")
    web = next(s for s in blueprint["services"] if s["type"] == "web")
    stale = {**web, "autoDeploy": True}
    assert set(stale) & RENDER_DEPRECATED_KEYS
    assert not set(stale) <= RENDER_SERVICE_KEYS


def test_public_url_falls_back_to_render_external_url() -> None:
    from cloud.settings import Settings

    render = {"RENDER_EXTERNAL_URL": "https://vc-cloud.onrender.com"}
    assert Settings.from_env(render, dotenv=False).public_url == "https://vc-cloud.onrender.com"
    mine = {**render, "PUBLIC_URL": "https://cams.example.com/"}
    assert Settings.from_env(mine, dotenv=False).public_url == "https://cams.example.com"


def test_the_cloud_binds_the_port_the_platform_names(mongodb_url: str, tmp_path: Path) -> None:
    """``python -m cloud`` without --port listens on $PORT (the image's CMD passes none)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "JWT_SECRET")}
    env |= {"PORT": str(port), "MONGODB_URL": mongodb_url, "DATA_DIR": str(tmp_path)}
    log = tmp_path / "cloud.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloud", "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        stop(process)
    assert f"VisionConnect cloud: http://127.0.0.1:{port}" in log.read_text()


def test_the_compose_stack_wires_services_ports_and_variables_together() -> None:
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"mongo", "redis", "coturn", "cloud-a", "cloud-b", "proxy", "relay"} <= set(services)
    for name in ("cloud-a", "cloud-b"):
        cloud = services[name]
        assert set(cloud["environment"]) <= CLOUD_ENV, set(cloud["environment"]) - CLOUD_ENV
        assert "mongo:27017" in cloud["environment"]["MONGODB_URL"]
        assert cloud["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert (ROOT / cloud["build"]["dockerfile"]).is_file()
    relay = services["relay"]
    assert set(relay["environment"]) <= RELAY_ENV, set(relay["environment"]) - RELAY_ENV
    assert relay["network_mode"] == "host"
    assert services["coturn"]["network_mode"] == "host"
    assert (ROOT / relay["build"]["dockerfile"]).is_file()
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server cloud-a:8000" in nginx
    assert "server cloud-b:8000" in nginx
    assert "proxy_set_header Upgrade $http_upgrade" in nginx
    assert "location /ws/" in nginx
    assert services["proxy"]["ports"] == ["8080:8080"]
    assert "listen 8080" in nginx
    assert relay["environment"]["CLOUD_URL"] == "http://localhost:8080"


def test_the_images_run_as_non_root_with_health_checks_on_the_right_port() -> None:
    for name, command in (("Dockerfile.cloud", "cloud"), ("Dockerfile.relay", "relay")):
        text = (DEPLOY / name).read_text()
        assert re.search(r"^FROM python:3\.11-slim", text, re.M)
        assert re.search(r"^USER (?!root)\w+", text, re.M), name
        assert "HEALTHCHECK" in text
        assert f'"python", "-m", "{command}"' in text
        copied = re.findall(r"^COPY (?!--from)(\S+)", text, re.M)
        for source in copied:
            assert (ROOT / source).exists(), source
        # The packages of the part and what it imports (tests/test_dependencies.py checks the
        # imports), installed without resolving anything: the lock file decides every version.
        packages = {c for c in copied if (ROOT / c / "__init__.py").is_file()}
        assert packages == LOCAL_IMPORTS[command], (name, packages)
        lock = f"requirements/{command}.txt"
        assert lock in copied
        assert f"pip install --no-cache-dir --require-hashes --no-deps -r {lock}" in text
        assert "pip install --no-cache-dir --no-deps ." in text
    cloud = (DEPLOY / "Dockerfile.cloud").read_text()
    assert "EXPOSE 8000" in cloud
    # $PORT decides (python -m cloud reads it when no --port is given), 8000 by default.
    assert re.search(r"^ENV (.*\\\n)*\s*PORT=8000$", cloud, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", cloud, re.M)
    assert cmd is not None
    assert "--port" not in json.loads(cmd.group(1))
    assert '127.0.0.1:{os.environ[\\"PORT\\"]}/healthz' in cloud
    assert "HEALTH_FILE" in (DEPLOY / "Dockerfile.relay").read_text()


def test_the_coturn_template_is_hardened_and_coturn_accepts_it(tmp_path: Path) -> None:
    template = (DEPLOY / "turnserver.conf.template").read_text()
    assert "use-auth-secret" in template
    assert "static-auth-secret=${TURN_SECRET}" in template
    assert not re.search(r"^\s*allow-loopback-peers", template, re.M)
    denied = re.findall(r"^denied-peer-ip=(\S+)", template, re.M)
    for prefix in ("10.0.0.0", "127.0.0.0", "169.254.0.0", "172.16.0.0", "192.168.0.0", "fe80::"):
        assert any(d.startswith(prefix) for d in denied), prefix
    assert re.search(r"^user-quota=\d+", template, re.M)
    assert re.search(r"^total-quota=\d+", template, re.M)
    # TURNS (the deploy guide hands out turns:...:5349): TLS on 5349 with a certificate.
    assert re.search(r"^tls-listening-port=5349$", template, re.M)
    assert re.search(r"^cert=\$\{TURN_TLS_CERT\}$", template, re.M)
    assert re.search(r"^pkey=\$\{TURN_TLS_KEY\}$", template, re.M)
    assert not re.search(r"^\s*no-tls\s*$", template, re.M)
    cert, key = tmp_path / "turn.crt", tmp_path / "turn.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=test.local", "-keyout", str(key),
         "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port, tls_port = free_port(), free_port()
    values = {
        "TURN_SECRET": secrets.token_hex(16),
        "TURN_REALM": "test.local",
        "EXTERNAL_IP": "127.0.0.1",
        "RELAY_MIN_PORT": "50000",
        "RELAY_MAX_PORT": "50100",
        "TURN_TLS_CERT": str(cert),
        "TURN_TLS_KEY": str(key),
    }
    rendered = string.Template(template).substitute(values)
    rendered = rendered.replace("\nlistening-port=3478", f"\nlistening-port={port}")
    rendered = rendered.replace("tls-listening-port=5349", f"tls-listening-port={tls_port}")
    config = tmp_path / "turnserver.conf"
    config.write_text(rendered + "listening-ip=127.0.0.1\nno-dtls\n")
    log = tmp_path / "coturn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["turnserver", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        from tests.servers import _stun_answers

        deadline = time.monotonic() + 10
        while not _stun_answers(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # A TLS client completes a handshake on the TURNS port, with the template's certificate
        # and at least TLS 1.2.
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
            peer = tls.getpeercert()
            assert peer is not None
            assert ((("commonName", "test.local"),)) in peer["subject"]
    finally:
        stop(process)


def test_the_readme_and_deploy_docs_name_the_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for path in (
        "render.yaml",
        "deploy/compose.yaml",
        "deploy/Dockerfile.cloud",
        "deploy/Dockerfile.relay",
        "deploy/turnserver.conf.template",
        "docs/deploy.md",
    ):
        assert (ROOT / path).is_file(), path
        assert path in readme or path in docs, path
    assert "docs/deploy.md" in readme
