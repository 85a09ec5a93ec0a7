"""Routes for relay nodes beside their WebSocket (docs/protocol.md, "POST /relays/…")."""

from starlette.requests import Request
from starlette.responses import Response

from cloud.context import bearer_token, context
from cloud.devices.access import parse_id
from cloud.devices.models import Device
from cloud.devices.routes import motion_of
from cloud.errors import Forbidden, NotFound, Unauthenticated
from cloud.http import Endpoint, reply
from cloud.relays import registry
from protocol.api import RelayDeviceOut
from protocol.errors import ErrorCode


async def require_relay(request: Request) -> str:
    """A relay's credential, from a relay connected right now (else 401 / 403)."""
    relay_id = registry.check_credential(
        bearer_token(request), context(request).settings.relay_secret
    )
    if relay_id is None:
        raise Unauthenticated("send 'Authorization: Bearer <relay id>:<relay secret>'")
    if not await registry.is_registered(relay_id):
        raise Forbidden("this relay is not registered: connect to /ws/v1/relay first")
    return relay_id


async def relay_device(request: Request) -> Response:
    """What a relay needs to analyse a camera's stream: its motion settings."""
    device = await Device.get(parse_id(request.path_params["device_id"]))
    if device is None:
        raise NotFound("no such device", ErrorCode.DEVICE_NOT_FOUND)
    return reply(RelayDeviceOut(device_id=str(device.id), motion=motion_of(device)))


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/relays/devices/{device_id}",
        relay_device,
        "Relay node: a camera's analysis settings",
        "relays",
        response=RelayDeviceOut,
        errors=(403,),
        auth=require_relay,
    ),
]
