"""The cloud's composition root: ``create_app(settings)`` builds everything."""

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from beanie import init_beanie
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

from cloud import metrics, openapi, pwa, stats
from cloud.auth import account as account_routes
from cloud.auth import routes as auth_routes
from cloud.auth.passwords import Passwords
from cloud.auth.tokens import AccessTokens, RefreshTokens
from cloud.context import Context, context
from cloud.db import Database
from cloud.devices import routes as device_routes
from cloud.events import routes as event_routes
from cloud.http import EXCEPTION_HANDLERS, Endpoint, RequestContextMiddleware, routes
from cloud.media import recordings as media_recordings
from cloud.media import relays as media_relays
from cloud.media import routes as media_routes
from cloud.media import snapshots as media_snapshots
from cloud.media.models import Media
from cloud.media.retention import Retention
from cloud.media.snapshots import SnapshotTicket
from cloud.media.store import GridFSMediaStore
from cloud.media.tokens import ContentTokens
from cloud.memory import return_large_blocks
from cloud.notify import routes as notify_routes
from cloud.onboarding import routes as onboarding_routes
from cloud.relays import routes as relay_routes
from cloud.settings import Settings
from cloud.signaling import routes as signaling_routes
from cloud.signaling import sse as signaling_sse
from cloud.signaling.bus import Bus, MemoryBus
from cloud.signaling.ws import Signaling
from cloud.throttle import Throttle
from protocol.api import Health, Readiness

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("visionconnect")
    except PackageNotFoundError:
        return "0.0.0"


ENDPOINTS: list[Endpoint] = [
    *auth_routes.ENDPOINTS,
    *account_routes.ENDPOINTS,
    *onboarding_routes.ENDPOINTS,
    *device_routes.ENDPOINTS,
    *signaling_routes.ENDPOINTS,
    *signaling_sse.ENDPOINTS,
    *event_routes.ENDPOINTS,
    *relay_routes.ENDPOINTS,
    *media_routes.ENDPOINTS,
    *media_recordings.ENDPOINTS,
    *media_snapshots.ENDPOINTS,
    *media_relays.ENDPOINTS,
    *notify_routes.ENDPOINTS,
    *stats.ENDPOINTS,
]


def make_bus(settings: Settings) -> Bus:
    if settings.redis_url:
        from cloud.signaling.redis_bus import RedisBus

        return RedisBus(settings.redis_url)
    return MemoryBus()


async def healthz(request: Request) -> Response:
    return JSONResponse(Health(status="ok").model_dump())


async def readyz(request: Request) -> Response:
    ctx = context(request)
    checks = {"database": await ctx.database.ping(), "bus": await ctx.signaling.bus.ping()}
    ready = all(checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    headers = None if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


WEB_DIR = Path(__file__).parent / "web"
# The browser app (cloud/web/): every asset comes from this server, nothing from a CDN.
# Revalidated on every load (ETag / Last-Modified make that a 304), since there is no
# build step to put versions into file names.
WEB_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
APP_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def web_app(request: Request) -> Response:
    headers = {**WEB_HEADERS, "Content-Security-Policy": APP_POLICY}
    return FileResponse(WEB_DIR / "index.html", headers=headers)


class WebAssets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(WEB_HEADERS)
        return response


def create_app(settings: Settings) -> Starlette:
    settings.validate()
    document = openapi.build_document(ENDPOINTS, package_version())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        return_large_blocks()  # password hashes' 19 MiB go back when freed (cloud/memory.py)
        async with Database(settings) as database:
            bus = make_bus(settings)
            await bus.start()
            access_tokens = AccessTokens(
                settings.resolved_jwt_secret(), settings.public_url, settings.access_token_ttl_s
            )
            signaling = Signaling(settings, bus, access_tokens, secrets.token_hex(4))
            await signaling.start()
            metrics.LIVE.cameras_online = lambda: len(signaling.hub.cameras)
            stop_metrics = (
                metrics.serve(settings.metrics_host, settings.metrics_port)
                if settings.metrics_port
                else None
            )
            # Media (cloud/media): its documents, the GridFS bucket, signed URLs, the sweeper.
            assert database.client is not None
            media_db = database.client[settings.database_name]
            await init_beanie(database=media_db, document_models=[Media, SnapshotTicket])
            app.state.media_store = GridFSMediaStore(media_db)
            app.state.content_tokens = ContentTokens(
                settings.resolved_media_url_secret(), settings.media_url_ttl_s
            )
            app.state.media_retention = retention = Retention(app.state.media_store, settings)
            retention.start()
            app.state.notifier = notifier = await notify_routes.start(settings, media_db)
            app.state.context = Context(
                settings=settings,
                database=database,
                passwords=await asyncio.to_thread(Passwords),
                access_tokens=access_tokens,
                refresh_tokens=RefreshTokens(
                    settings.resolved_jwt_secret().encode(), settings.refresh_token_ttl_s
                ),
                throttle=Throttle(),
                signaling=signaling,
            )
            log.info("cloud ready at %s (%s)", settings.public_url, settings.environment)
            try:
                yield
            finally:
                if stop_metrics is not None:
                    await asyncio.to_thread(stop_metrics)
                await notifier.stop()
                await retention.stop()
                await signaling.stop()
                await bus.close()
        log.info("cloud stopped")

    table: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(
            "/metrics",
            metrics.endpoint(
                settings.metrics_token, bool(settings.metrics_port), settings.production
            ),
            methods=["GET"],
        ),
        Route("/openapi.json", openapi.openapi_endpoint(document), methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
        Route("/docs/init.js", openapi.docs_init, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets"),
        Route("/", web_app, methods=["GET"]),
        *pwa.routes(APP_POLICY),
        Mount("/static", WebAssets(directory=WEB_DIR / "static"), name="web"),
        *routes(ENDPOINTS),
        *signaling_routes.SOCKETS,
    ]
    return Starlette(
        routes=table,
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
