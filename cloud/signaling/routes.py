"""Signaling routes: the three WebSocket endpoints and the ICE server list."""

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from cloud.context import bearer_token, context
from cloud.errors import CloudError, Unauthenticated
from cloud.http import Endpoint, reply
from cloud.ice import ice_servers
from cloud.signaling import asgi_socket
from cloud.signaling.ws import Signaling
from protocol.api import IceServersOut
from protocol.errors import ErrorCode


@dataclass(frozen=True)
class PeerPrincipal:
    """A user or a camera: both may ask for ICE servers."""

    name: str  # "user:<id>" or "device:<id>", the TURN username's principal part


async def require_user_or_device(request: Request) -> PeerPrincipal:
    ctx = context(request)
    token = bearer_token(request)
    try:
        principal = ctx.access_tokens.verify(token)
    except CloudError:
        pass
    else:
        return PeerPrincipal(f"user:{(await ctx.signaling.signins.check(principal)).user_id}")
    try:
        device = await ctx.signaling.assertions.verify(token)
    except CloudError:
        raise Unauthenticated(
            "send an access token or a device assertion", ErrorCode.INVALID_TOKEN
        ) from None
    return PeerPrincipal(f"device:{device.device_id}")


async def get_ice_servers(request: Request) -> Response:
    ctx = context(request)
    principal: PeerPrincipal = request.state.principal
    servers = ice_servers(ctx.settings, principal.name)
    return reply(IceServersOut(ice_servers=servers, ttl=ctx.settings.turn_ttl_s))


def _signaling(socket: WebSocket) -> Signaling:
    signaling: Signaling = socket.app.state.context.signaling
    return signaling


async def device_socket(socket: WebSocket) -> None:
    await asgi_socket.serve(_signaling(socket), socket, "device")


async def client_socket(socket: WebSocket) -> None:
    await asgi_socket.serve(_signaling(socket), socket, "user")


async def relay_socket(socket: WebSocket) -> None:
    await asgi_socket.serve(_signaling(socket), socket, "relay")


SOCKETS = [
    WebSocketRoute("/ws/v1/device", device_socket),
    WebSocketRoute("/ws/v1/client", client_socket),
    WebSocketRoute("/ws/v1/relay", relay_socket),
]
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/ice-servers",
        get_ice_servers,
        "STUN/TURN servers with short-lived TURN credentials (user or camera)",
        "signaling",
        response=IceServersOut,
        auth=require_user_or_device,
    ),
]
