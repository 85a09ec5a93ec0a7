import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from cloud.app import create_app
from cloud.settings import Settings
from tests.servers import secantus_server

PASSWORD = "Correct-Horse-42-battery"
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
