import asyncio
import base64
import contextlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette

from cloud.app import create_app
from cloud.settings import Settings
from cloud.signaling.direct_socket import websocket_protocol
from tests.servers import free_port, secantus_server

PASSWORD = "Correct-Horse-42-battery"
RELAY_SECRET = "relay-secret-for-tests"
_addresses = itertools.count(1)


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real SecantusDB server for the whole test session, over a socket."""
    with secantus_server(tmp_path_factory.mktemp("secantus")) as url:
        yield url


@pytest.fixture(scope="session")
def settings(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        public_url="http://testserver",
        data_dir=tmp_path_factory.mktemp("data"),
        mongodb_url=mongodb_url,
        database_name="test_" + secrets.token_hex(4),
        jwt_secret=secrets.token_urlsafe(48),
        relay_secret=RELAY_SECRET,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


def new_address() -> str:
    """A distinct client address per client, so per-address throttles don't leak across tests."""
    n = next(_addresses)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(new_address(), 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}.{secrets.token_hex(5)}@example.com"


class Account:
    def __init__(self, email: str, user_id: str, tokens: dict[str, str]) -> None:
        self.email = email
        self.id = user_id
        self.tokens = tokens

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    @property
    def sid(self) -> str:
        """The sign-in of its tokens (the access token's ``sid``)."""
        sid: str = jwt.decode(self.tokens["access_token"], options={"verify_signature": False})[
            "sid"
        ]
        return sid


MakeAccount = Callable[..., Awaitable[Account]]


@pytest.fixture
def make_account(client: httpx.AsyncClient) -> MakeAccount:
    async def make(prefix: str = "user") -> Account:
        email = unique_email(prefix)
        created = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert created.status_code == 201, created.text
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        return Account(email, created.json()["id"], login.json())

    return make


def camera_key() -> tuple[Ed25519PrivateKey, str]:
    """A camera identity: an Ed25519 key and its raw public half in URL-safe base64."""
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.urlsafe_b64encode(raw).decode()


class ActivatedDevice:
    def __init__(
        self, device_id: str, device_uid: str, name: str, private_key: Ed25519PrivateKey
    ) -> None:
        self.id = device_id
        self.uid = device_uid
        self.name = name
        self.private_key = private_key


ActivateDevice = Callable[..., Awaitable[ActivatedDevice]]


async def share(
    client: httpx.AsyncClient, owner: Account, device: ActivatedDevice, friend: Account
) -> httpx.Response:
    """The owner shares ``device`` with ``friend`` as a viewer (the caller checks the answer)."""
    return await client.post(
        f"/api/v1/devices/{device.id}/shares",
        json={"email": friend.email, "role": "viewer"},
        headers=owner.headers,
    )


@pytest.fixture
def activate_device(client: httpx.AsyncClient) -> ActivateDevice:
    """Onboard and activate a camera for ``account`` through the HTTP API."""

    async def activate(account: Account, name: str = "Front door") -> ActivatedDevice:
        ticket = await client.post(
            "/api/v1/onboarding",
            json={
                "device_name": name,
                "camera_model": "EZ-C31",
                "wifi_ssid": "Home",
                "wifi_password": "wifi-password-1",
            },
            headers=account.headers,
        )
        assert ticket.status_code == 201, ticket.text
        token = json.loads(ticket.json()["payload"])["t"]
        private, public = camera_key()
        uid = "cam-" + secrets.token_hex(8)
        activated = await client.post(
            "/api/v1/devices/activate",
            json={
                "token": token,
                "device_uid": uid,
                "camera_model": "EZ-C31",
                "firmware_version": "1.0.0",
                "public_key": public,
            },
        )
        assert activated.status_code == 201, activated.text
        return ActivatedDevice(activated.json()["device_id"], uid, name, private)

    return activate


@contextlib.asynccontextmanager
async def serving(app: Starlette, **options: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a loopback port as the cloud serves it (lifespan: the
    caller's); ``options`` override uvicorn's settings. Yields the ws:// base URL."""
    port = free_port()
    settings: dict[str, Any] = {
        "ws": websocket_protocol(app),
        "ws_max_size": 64 * 1024,
        "ws_per_message_deflate": False,
    }
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", **settings | options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def ws_base(app: Starlette) -> AsyncIterator[str]:
    """The shared test app served by uvicorn on a loopback port (its lifespan already runs)."""
    async with serving(app) as base:
        yield base
