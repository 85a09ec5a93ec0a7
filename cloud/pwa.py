"""The installable app: its web app manifest and its service worker, served from the root.

The worker (``cloud/web/sw.js``) must be served from ``/`` to control the whole app (a
worker's scope is at most its script's folder), so it is not under ``/static/``; the
manifest sits beside it. Both are revalidated on every load like the app's assets, and the
worker carries the app's content policy, which governs what the worker itself may fetch.
"""

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

WEB_DIR = Path(__file__).parent / "web"
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def manifest(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "manifest.webmanifest", media_type="application/manifest+json", headers=HEADERS
    )


def routes(policy: str) -> list[BaseRoute]:
    """``/manifest.webmanifest`` and ``/sw.js`` (with the app's content ``policy``)."""

    async def service_worker(request: Request) -> Response:
        headers = {**HEADERS, "Content-Security-Policy": policy}
        return FileResponse(WEB_DIR / "sw.js", media_type="text/javascript", headers=headers)

    return [
        Route("/manifest.webmanifest", manifest, methods=["GET"]),
        Route("/sw.js", service_worker, methods=["GET"]),
    ]
