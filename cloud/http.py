"""HTTP plumbing shared by every feature: endpoints, bodies, errors, request ids.

An :class:`Endpoint` declares a route once: its handler, request body, success response,
errors and who may call it. The Starlette routes and the OpenAPI document are both built
from the same declarations, so the served contract cannot drift from the code.
Every endpoint is authenticated unless it says ``public=True``.
"""

import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud import metrics
from cloud.errors import (
    CloudError,
    Invalid,
    Malformed,
    TooLarge,
    UnsupportedMediaType,
    database_unavailable,
)
from cloud.logs import describe, new_request_id, principal_var, request_id_var, set_principal
from protocol.api import ErrorBody, ErrorDetail
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)
access_log = logging.getLogger("cloud.access")

MAX_BODY_BYTES = 64 * 1024
USER_CACHE_CONTROL = "private, no-store"

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
Authenticator = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    status: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    auth: Authenticator | None = None
    public: bool = False
    media_type: str = "application/json"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.auth is None and not self.public:
            raise RuntimeError(f"{self.method} {self.path} has no authenticator and is not public")

    async def __call__(self, request: Request) -> Response:
        if self.auth is not None:
            request.state.principal = principal = await self.auth(request)
            if (who := describe(principal)) is not None:
                set_principal(*who)  # on this request's log lines, as an id: never a token
        return await self.handler(request)


def routes(endpoints: list[Endpoint]) -> list[Route]:
    """One Starlette route per path, dispatching on the method, so 405 lists every method."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in endpoints:
        ep.check()
        by_path.setdefault(ep.path, {})[ep.method] = ep

    def dispatcher(methods: dict[str, Endpoint]) -> Handler:
        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await methods[method](request)

        return dispatch

    return [
        Route(path, dispatcher(methods), methods=list(methods)) for path, methods in by_path.items()
    ]


def parse_query(request: Request, model: type[M]) -> M:
    """Validate the query string against ``model`` (unknown parameters refused): 422."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise Invalid(describe_validation_error(exc)) from None


async def parse_body(request: Request, model: type[M], max_bytes: int = MAX_BODY_BYTES) -> M:
    """Read a JSON body of at most ``max_bytes`` and validate it; 400/413/415/422 otherwise."""
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed("the body is not valid JSON") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """A sentence naming each bad field, never echoing the values (they may be secrets)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "invalid request: " + "; ".join(parts)


def reply(model: BaseModel | None, status: int = 200) -> Response:
    if model is None:
        return Response(status_code=status)
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def error_response(
    status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return Response(
        body.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    400: ErrorCode.MALFORMED_REQUEST,
}


async def handle_cloud_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CloudError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.MALFORMED_REQUEST)
    message = "no such resource" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def handle_database_error(request: Request, exc: Exception) -> Response:
    """A database that is away (unreachable, paused, timing out): 503 with ``Retry-After``,
    never 500. Any other database error is a bug: raised on, to be logged as one (500)."""
    down = database_unavailable(exc)
    if down is None:
        raise exc
    log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
    return error_response(down.status, down.code, down.message, down.headers)


def _database_down_in(exc: BaseException) -> CloudError | None:
    """The 503 for an outage raised past the handlers (e.g. inside an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        found = [_database_down_in(e) for e in exc.exceptions]
        return next((d for d in found if d is not None), None)
    return database_unavailable(exc)


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    CloudError: handle_cloud_error,
    HTTPException: handle_http_exception,
    PyMongoError: handle_database_error,
}


class RequestContextMiddleware:
    """Request id (header in, header out, in every log line), access log, cache policy.

    Responses under ``/api/`` are per-user: they get ``Cache-Control: private, no-store``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        offered = headers.get(b"x-request-id", b"").decode("latin-1") or None
        request_id = new_request_id(offered)
        token = request_id_var.set(request_id)
        principal_token = principal_var.set(None)
        started = time.perf_counter()
        status = 500
        path: str = scope["path"]

        status_sent = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                extra = [(b"x-request-id", request_id.encode())]
                if path.startswith("/api/"):
                    extra.append((b"cache-control", USER_CACHE_CONTROL.encode()))
                message["headers"] = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"cache-control" or not path.startswith("/api/")
                ] + extra
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # Handled here rather than by Starlette's outer ServerErrorMiddleware so that the
            # log line keeps the request id and the client still gets the error body.
            down = _database_down_in(exc)
            if down is not None:
                log.warning("database unavailable on %s %s: %r", scope["method"], path, exc)
            else:
                log.exception("unhandled error on %s %s", scope["method"], path)
            if status_sent:
                raise
            if down is not None:
                response = error_response(down.status, down.code, down.message, down.headers)
            else:
                response = error_response(
                    500, ErrorCode.INTERNAL, "internal error; it has been logged"
                )
            await response(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            metrics.HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            metrics.HTTP_DURATION.observe(elapsed)
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                elapsed * 1000,
            )
            request_id_var.reset(token)
            principal_var.reset(principal_token)


UNMATCHED = "unmatched"
# per app: endpoint -> its route's path template
_templates: "weakref.WeakKeyDictionary[Any, dict[Any, str]]" = weakref.WeakKeyDictionary()


def route_template(scope: Scope) -> str:
    """The template of the route that served the request (``/api/v1/devices/{device_id}``),
    never the raw path: metric labels stay bounded whatever paths clients send."""
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is None or app is None:
        return UNMATCHED
    table = _templates.get(app)
    if table is None:
        table = _templates[app] = {}
        _collect(getattr(app, "routes", []), "", table)
    return table.get(endpoint, UNMATCHED)


def _collect(routes: list[Any], prefix: str, table: dict[Any, str]) -> None:
    for route in routes:
        if isinstance(route, Mount):
            if route.routes:
                _collect(list(route.routes), prefix + route.path, table)
            else:
                table[route.app] = prefix + route.path + "/{path}"
        elif isinstance(route, Route):
            table[route.endpoint] = prefix + route.path
