"""Database errors at the HTTP edge (issue 16 item 2): an outage is 503 with Retry-After,
never 500; a query's mistake stays a 500. The real outage (a paused server) is
tests/e2e/test_db_outage.py."""

import httpx
import pytest
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    WTimeoutError,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud.errors import Unavailable, database_unavailable, outage_unavailable
from cloud.http import EXCEPTION_HANDLERS, RequestContextMiddleware

OUTAGES: list[BaseException] = [
    ServerSelectionTimeoutError("no server"),
    AutoReconnect("connection closed"),
    NetworkTimeout("timed out"),
    WaitQueueTimeoutError("pool full"),
    ExecutionTimeout("operation exceeded time limit", 50),
    WTimeoutError("waiting for replication timed out", 64),
    ExceptionGroup("from a task group", [ValueError("x"), NetworkTimeout("timed out")]),
]
MISTAKES: list[BaseException] = [
    DuplicateKeyError("E11000 duplicate key", 11000),
    OperationFailure("unknown operator: $nope", 2),
]


def app_raising(exc: BaseException) -> Starlette:
    async def fail(request: Request) -> Response:
        raise exc

    app = Starlette(routes=[Route("/api/v1/x", fail)], exception_handlers=EXCEPTION_HANDLERS)
    app.add_middleware(RequestContextMiddleware)
    return app


async def get(exc: BaseException) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_raising(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get("/api/v1/x")


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
async def test_a_database_outage_answers_503_with_retry_after(exc: BaseException) -> None:
    r = await get(exc)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize("exc", MISTAKES, ids=lambda e: type(e).__name__)
async def test_a_querys_mistake_stays_a_500(exc: BaseException) -> None:
    r = await get(exc)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"


def test_outage_unavailable_turns_an_outage_into_unavailable_and_nothing_else() -> None:
    with pytest.raises(Unavailable), outage_unavailable():
        raise NetworkTimeout("timed out")
    with pytest.raises(DuplicateKeyError), outage_unavailable():
        raise DuplicateKeyError("E11000", 11000)
    labelled = PyMongoError("retry me")
    labelled._add_error_label("RetryableWriteError")
    assert database_unavailable(labelled) is not None
    assert database_unavailable(ValueError("not the database")) is None
