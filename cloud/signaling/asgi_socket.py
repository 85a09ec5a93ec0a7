"""The signaling endpoints over Starlette's WebSocket, for any ASGI server.

``python -m cloud`` serves them straight from the transport instead
(:mod:`cloud.signaling.direct_socket`, ~6 KiB per idle camera against ~28 KiB here:
docs/benchmarks.md); this edge keeps them working under another server or
``--sockets asgi``. Both run the same connection life (:class:`~cloud.signaling.ws.Signaling`).
"""

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from cloud.errors import CloudError, Unavailable, outage_unavailable
from cloud.signaling.deliveries import Role
from cloud.signaling.ws import HELLO_TIMEOUT_S, SEND_TIMEOUT_S, Signaling, refusal
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)


class AsgiSocket:
    """A Starlette WebSocket as a :class:`~cloud.signaling.ws.Socket`."""

    __slots__ = ("socket",)

    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket

    @property
    def is_open(self) -> bool:
        return self.socket.application_state == WebSocketState.CONNECTED

    async def send_text(self, text: str) -> None:
        await asyncio.wait_for(self.socket.send_text(text), SEND_TIMEOUT_S)

    async def close(self, code: int, reason: str) -> None:
        if self.socket.application_state == WebSocketState.DISCONNECTED:
            return
        # The peer may have gone meanwhile: closing a closed socket is not an error.
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.socket.close(code, reason)


async def serve(signaling: Signaling, socket: WebSocket, role: Role) -> None:
    """One connection's life over ``socket``, from its accept to its detach."""
    await socket.accept()
    if signaling.draining:
        await socket.close(1012, "server restarting")
        return
    try:
        text = await asyncio.wait_for(socket.receive_text(), HELLO_TIMEOUT_S)
        with outage_unavailable():  # the database away: 1013, try again later
            principal, grant = await signaling.hellos.authenticate(role, text)
    except (TimeoutError, CloudError, ProtocolError, WebSocketDisconnect) as exc:
        log.info("%s connection refused: %s", role, getattr(exc, "message", type(exc).__name__))
        if socket.application_state == WebSocketState.CONNECTED:
            await socket.close(*refusal(exc))
        return
    conn = signaling.attach(AsgiSocket(socket), role, principal)
    try:
        try:
            with outage_unavailable():
                await signaling.welcome(conn, role, principal, grant)
        except Unavailable as exc:
            log.info("%s connection %s refused: %s", role, conn, exc.message)
            await socket.close(*refusal(exc))
            return
        while True:
            frame = await socket.receive()
            if frame["type"] == "websocket.disconnect":
                return
            try:
                with outage_unavailable():
                    await signaling.frame(conn, role, principal, frame.get("text"))
            except Unavailable as exc:  # this frame is lost; the connection stays
                log.warning("%s connection %s: frame dropped: %s", role, conn, exc.message)
    finally:
        await signaling.detach(conn, role, principal)
