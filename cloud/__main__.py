"""``python -m cloud [--host H] [--port P]``: run the cloud service with uvicorn."""

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from cloud.app import create_app
from cloud.logs import configure_logging
from cloud.settings import Settings, SettingsError
from cloud.signaling.direct_socket import websocket_protocol

log = logging.getLogger("cloud")


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first send ``go_away`` to every WebSocket and close them.

    uvicorn would otherwise wait for open WebSockets (which never end by themselves)
    until its graceful timeout, and only then run the application's shutdown.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        context = getattr(self.app.state, "context", None)
        if context is not None and not context.signaling.draining:
            self._drain = asyncio.ensure_future(context.signaling.drain())
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloud", description="VisionConnect cloud service"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        # Platforms (Render, Heroku-likes) say which port to bind in PORT.
        default=int(os.environ.get("PORT") or 8000),
        help="port to listen on (default: PORT from the environment, else 8000)",
    )
    parser.add_argument(
        "--ws",
        default="websockets-sansio",
        choices=["websockets", "websockets-sansio", "wsproto"],
        help="WebSocket implementation except for cameras (default websockets-sansio)",
    )
    parser.add_argument(
        "--sockets",
        default="direct",
        choices=["direct", "asgi"],
        help="serve signaling WebSockets straight from the transport (default) or through"
        " the ASGI app (~22 KiB more per idle camera, more CPU per frame; for comparison)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    fmt = configure_logging(args.log_level)
    try:
        settings = Settings.from_env(default_public_url=f"http://{args.host}:{args.port}")
        app = create_app(settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if fmt == "json":  # every line of the output is a JSON object
        log.info("VisionConnect cloud: %s", settings.public_url)
    else:
        print(
            f"VisionConnect cloud: {settings.public_url}  (API docs: {settings.public_url}/docs)",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        # Signaling: no per-message deflate (~30 KiB per idle connection, docs/design.md),
        # 64 KiB frames at most (larger ones close with 1009), pings to find dead peers.
        # Signaling is served by a leaner protocol; other WebSockets by uvicorn's --ws.
        ws=websocket_protocol(app, args.ws) if args.sockets == "direct" else args.ws,
        ws_per_message_deflate=False,
        ws_max_size=64 * 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=10,
    )
    # Again: building a uvicorn Config (the ws protocol's start-up check does too) installs
    # uvicorn's own handlers on its loggers, in its own text format.
    configure_logging(args.log_level)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its shutdown
        DrainingServer(config, app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
